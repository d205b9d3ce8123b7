"""`dpop run`: preference data to a DPOP-trained model and its report, in one command.

With no arguments it runs the embedded demo (synthetic maths pairs, a tiny Llama, an SFT warm-up as the
reference, DPOP); `--input`, `--model`, `--config` run the same chain on the user's data and model. The
chain is `flows.chain.data_to_model`, the same for `dpop run` (the Prefect flow), `--engine direct`
(inline), `dpop serve` and the benchmarks. First every path and config is checked, then the chain is
probed (no Prefect, no torch): when every stage is done, the summary is printed and nothing else runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.commands._common import VerboseOption, WorkspaceOption, clean_errors, console


def option(kind: Any, *names: str, **settings: Any) -> Any:
    return Annotated[kind, typer.Option(*names, **settings)]


# The options of `dpop run` and `dpop serve`: the same options make the same chain.
Inputs = option(
    list[str] | None,
    "--input",
    "-i",
    "--source",
    "-s",
    help="Preference data: files, folders, HF dataset names (repeatable; default: synthetic maths pairs).",
)
Model = option(
    Path | None,
    "--model",
    "-m",
    "--base-model",
    help="Base model folder (save_pretrained, safetensors; default: a tiny Llama).",
)
Config = option(Path | None, "--config", "-c", help="dpop.yaml (see `dpop init`).")
N = option(int | None, "--n", min=20, help="Synthetic pairs when no --input is given.")
Steps = option(int | None, "--steps", min=1, help="Training steps (overrides training.max_steps).")
SftSteps = option(
    int | None, "--sft-steps", min=0, help="SFT warm-up steps (0: the base model is the reference)."
)
Seed = option(int | None, "--seed", help="Seed of the synthetic data, model and training.")
Losses = option(str | None, "--losses", help="One run per loss from one reference, e.g. dpop:50,dpo.")
WarmStart = option(bool, "--warm-start", help="Train a new dataset version from the last model.")
TaskRunner = option(
    str, "--task-runner", help="default: threads here; dask: ingests and build parts on Dask."
)
DaskAddress = option(
    str | None, "--dask-address", help="Dask scheduler (tcp://host:8786; default: a local one)."
)
INTERRUPTED = (
    "interrupted: run the same command again to resume (finished stages are reused, training continues "
    "from its last complete checkpoint)"
)


def chain_spec(
    inputs: Any, model: Any, config: Any, flags: dict[str, Any], losses: Any, warm_start: bool
) -> Any:
    """The ChainSpec of the command line, every path checked first (naming its flag); configs are the
    raw dpop.yaml sections with the `flags` (n, steps, sft_steps, seed) applied: no torch here,
    `validate` checks them before any work."""
    from demo.defaults import DEFAULT_CONFIG_YAML, _apply_flags, _merge, compared_losses
    from flows.chain import ChainSpec, with_losses
    from pipeline.config import parse_yaml, read_yaml
    from pipeline.curate.config import load_curation_config

    sources = tuple(_source(item) for item in inputs or ())
    if model is not None:
        model = _model(model)
    user: Any = {}
    if config is not None:
        if not config.is_file():
            raise FileNotFoundError(f"--config {config}: no such file (write one with `dpop init`)")
        user = read_yaml(config)
    values = parse_yaml(DEFAULT_CONFIG_YAML, "dpop.yaml defaults")
    try:
        values = _merge(values, {k: v for k, v in user.items() if v is not None})
        _apply_flags(values, **flags)
        curation = load_curation_config(values["curation"], base=config.resolve().parent if config else None)
        if losses is None:  # the file's (or the defaults') comparison, unless it chose one loss
            losses = ",".join(compared_losses(user, values.get("losses")) or []) or None
        training = with_losses(values["training"], losses) if losses else (values["training"],)
    except (AttributeError, TypeError, ValueError):
        validate(config, flags, ())  # the loader's message, naming the file and the key
        raise
    sft = dict(values["sft"])
    if model is not None and "steps" not in (user.get("sft") or {}) and flags["sft_steps"] is None:
        sft["steps"] = 0  # the demo's warm-up would damage a real model: it is its own reference
    _check_eval_file(curation)
    gate = _gate_section(values.get("gate"), config)
    return ChainSpec(
        sources, values["synth"]["n"], values["seed"], None, {}, str(model) if model else None,
        values["tiny_model"], curation.as_dict(), sft, training, warm_start, gate,
    )  # fmt: skip


def _gate_section(gate: Any, config: Any) -> dict[str, Any]:
    """The `gate:` section checked by the config loader, its eval file made absolute (relative to the
    config file) and checked to exist."""
    from pipeline.gate import load_gate_config

    loaded = load_gate_config(gate, source=str(config) if config else "dpop.yaml defaults")
    section = loaded.as_dict()
    eval_file = section["generation"]["eval_file"]
    if eval_file:
        path = Path(eval_file).expanduser()
        path = path if path.is_absolute() or config is None else config.resolve().parent / path
        if not path.is_file():
            raise FileNotFoundError(f"--config: gate.generation.eval_file {path}: no such file")
        section["generation"]["eval_file"] = str(path.resolve())
    return section


def _source(item: str) -> str:
    """A local path (absolute), or a hub name; a mistyped path is "no such file", not a Hub error."""
    from pipeline.ingest.readers import looks_like_hub_name

    path = Path(item).expanduser()
    if path.exists():
        return str(path.resolve())
    if looks_like_hub_name(item) and not ("/" in item and path.parent.is_dir()):
        return item
    raise FileNotFoundError(f"--input {item}: no such file or folder")


def _model(model: Path) -> Path:
    from dpop.model_io import require_safetensors

    try:
        return require_safetensors(model)
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"--model: {error}") from None


def _check_eval_file(curation: Any) -> None:
    decontaminate = curation.filters.decontaminate
    if decontaminate is not None and not Path(decontaminate.file).is_file():
        raise FileNotFoundError(
            f"--config: curation.filters.decontaminate.file {decontaminate.file}: no such file"
        )


def validate(config: Any, flags: dict[str, Any], training: Any) -> None:
    """Every config section as the stages will read it (imports torch: only when work is to be done)."""
    from demo.defaults import load_run_config
    from flows.chain import train_config

    load_run_config(config, **flags)
    for values in training:
        train_config(values)


def run(
    input: Inputs = None,
    model: Model = None,
    config: Config = None,
    workspace: WorkspaceOption = None,
    n: N = None,
    steps: Steps = None,
    sft_steps: SftSteps = None,
    seed: Seed = None,
    losses: Losses = None,
    engine: option(
        str, "--engine", help="prefect: the Prefect flow; direct: inline, no Prefect."
    ) = "prefect",
    report: option(bool, "--report/--no-report", help="Write the HTML report at the end.") = True,
    open_report: option(bool, "--open", help="Open the report in a browser when done.") = False,
    task_runner: TaskRunner = "default",
    dask_address: DaskAddress = None,
    warm_start: WarmStart = False,
    verbose: VerboseOption = False,
) -> None:
    """Run the whole chain: data -> curated shards -> SFT reference -> DPOP training -> report."""
    from cli.console import quiet_libraries

    started = time.perf_counter()
    with _resumable(), clean_errors(), quiet_libraries(verbose), _warnings(verbose):
        if engine not in ("prefect", "direct") or task_runner not in ("default", "dask"):
            raise ValueError(
                f"--engine is prefect or direct ({engine!r}); --task-runner default or dask ({task_runner!r})"
            )
        if engine == "direct" and (task_runner != "default" or dask_address):
            raise ValueError("--task-runner/--dask-address need the Prefect engine (--engine prefect)")
        flags = {"n": n, "steps": steps, "sft_steps": sft_steps, "seed": seed}
        spec = chain_spec(input, model, config, flags, losses, warm_start)
        summary = _up_to_date(spec, workspace)
        if summary is None:
            with console.status("checking the configuration (loading torch)…"):
                validate(config, flags, spec.training)
            if spec.smoke_test:
                console.print(f"[bold yellow]warning: {spec.smoke_test}[/]", soft_wrap=True)
            summary = _run(spec, workspace, engine, task_runner, dask_address, verbose)
        _report(summary, report)
        _print_summary(summary, time.perf_counter() - started)
        if open_report and summary.get("report"):
            import webbrowser

            webbrowser.open(Path(summary["report"]).as_uri())


def _up_to_date(spec: Any, workspace: Any) -> dict[str, Any] | None:
    from cli.commands._workspace import writable_workspace
    from flows.chain import probe, summary

    result = probe(writable_workspace(workspace), spec)
    return None if result is None else {**summary(result), "via": "probe: every stage up to date"}


def _run(
    spec: Any, workspace: Any, engine: str, task_runner: str, dask_address: str | None, verbose: bool
) -> dict[str, Any]:
    from cli.console import StageDisplay
    from pipeline.workspace import Workspace

    ws = Workspace.open(workspace)
    stages = StageDisplay(console, live=not verbose)  # -v: lines only, the libraries keep their own bars
    if engine == "direct":
        with stages.active():
            return _direct(ws, spec)
    _prefect_home(ws)  # before Prefect is imported: it reads its settings once
    with _api_server(), stages.active():
        from flows.data_to_model import data_to_model_flow

        out = data_to_model_flow(str(ws.root), spec.to_json(), task_runner, dask_address)
    return {**out, "via": f"Prefect flow, {out['status']}"}


@contextlib.contextmanager
def _resumable() -> Iterator[None]:
    """Ctrl-C: say that the run stopped and how to resume it, exit 130 (as a shell does)."""
    try:
        yield
    except KeyboardInterrupt:
        console.print(f"[bold yellow]{INTERRUPTED}[/]", soft_wrap=True)
        sys.exit(130)


def _direct(ws: Any, spec: Any) -> dict[str, Any]:
    from flows.chain import run_chain, summary
    from pipeline.stage import INLINE

    out = summary(run_chain(ws, spec, INLINE, (str(uuid.uuid4()), "data-to-model")))
    return {**out, "via": f"inline, {out['status']}"}


@contextlib.contextmanager
def _warnings(verbose: bool) -> Iterator[None]:
    """Python warnings once each, as one line (library noise hidden); -v: Python's own way."""
    if verbose:
        yield
        return
    from cli.console import WarningLog

    with WarningLog(console).installed():
        yield


def _prefect_home(ws: Any) -> None:
    """Without a Prefect server or home of the user's, keep Prefect's database in the workspace, so runs in
    other workspaces never share (and lock) one SQLite file in ~/.prefect."""
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        (ws.cache_dir / "prefect").mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(ws.cache_dir / "prefect")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # a loaded machine
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # its heartbeat locks the SQLite file


@contextlib.contextmanager
def _api_server() -> Iterator[None]:
    """The run's Prefect API: the user's server, else a temporary one started here, its URL exported
    before any Dask worker starts so the workers use it instead of each starting its own."""
    with console.status("loading Prefect…"):
        from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    with console.status("starting Prefect's temporary server…"):
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # the run's last logs, before their server goes
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def _report(summary: dict[str, Any], wanted: bool) -> None:
    """Each run's report: written when the run is new, or when it is missing."""
    if not wanted:
        return
    for run in summary["runs"]:
        index = Path(run["run_dir"]) / "report" / "index.html"
        if summary["status"] != "up to date" or not index.is_file():
            from pipeline.report import build_report

            with console.status(f"writing the report of {run['run_id']}"):
                index = build_report(summary["workspace"], run["run_id"])
        run["report"] = str(index)
    summary["report"] = summary["runs"][0]["report"]


def _print_summary(summary: dict[str, Any], seconds: float) -> None:
    from cli.console import print_summary

    print_summary(console, summary, seconds)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
