"""`dpop run`: from preference data to a DPOP-trained model and its report, in one command.

With no arguments it runs the embedded demo: synthetic MetaMath-style pairs -> a tiny tokenizer
trained on them -> a tiny Llama model -> a short SFT warm-up on the chosen answers (the reference
policy, cached) -> ingest, curate, tokenise, reference log-probs, DPOP training -> the HTML report.
With `--input`, `--model`, `--config` the same chain runs on the user's data and model.

Each stage is a cached, content-addressed step (ingest by file sha256, dataset by inputs + config,
SFT by base model + examples + settings), so running it again recomputes nothing that has not changed.
By default the chain goes through `flows.data_to_model.data_to_model_flow` (Prefect tasks, caching,
OpenLineage events, artifacts); `--engine direct` calls the same stage functions in order without Prefect.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.commands._common import WorkspaceOption, clean_errors, console

DEFAULT_SYNTH_PAIRS = 600


def run(
    input: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            help="Preference data: files, folders or HF dataset names (repeatable). "
            "Default: synthetic maths pairs.",
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="Base model folder (save_pretrained, with tokenizer). Default: a tiny Llama built here.",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="dpop.yaml (see `dpop init`).")
    ] = None,
    workspace: WorkspaceOption = None,
    n: Annotated[
        int | None, typer.Option("--n", help="Synthetic pairs when no --input is given.", min=20)
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Training steps (overrides training.max_steps).", min=1)
    ] = None,
    sft_steps: Annotated[
        int | None,
        typer.Option("--sft-steps", help="SFT warm-up steps (0: the base model is the reference).", min=0),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed for the synthetic data, model and training.")
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="prefect: train through the Prefect flow (lineage events, artifacts); "
            "direct: call the stage functions in order (no Prefect server).",
        ),
    ] = "prefect",
    report: Annotated[
        bool, typer.Option("--report/--no-report", help="Write the HTML report at the end.")
    ] = True,
    open_report: Annotated[
        bool, typer.Option("--open", help="Open the report in a browser when done.")
    ] = False,
    task_runner: Annotated[
        str,
        typer.Option("--task-runner", help="default: threads in this process; dask: the data tasks on Dask."),
    ] = "default",
    dask_address: Annotated[
        str | None,
        typer.Option("--dask-address", help="Dask scheduler (tcp://host:8786); default: a local cluster."),
    ] = None,
    warm_start: Annotated[
        bool,
        typer.Option("--warm-start", help="Train a new dataset version from the last model, not the base."),
    ] = False,
) -> None:
    """Run the whole chain: data -> curated shards -> SFT reference -> DPOP training -> report."""
    with clean_errors():
        from dpop.run_config import load_run_config

        started = time.perf_counter()
        settings = load_run_config(config, n=n, steps=steps, sft_steps=sft_steps, seed=seed)
        if engine not in ("prefect", "direct"):
            raise ValueError(f"--engine must be 'prefect' or 'direct', got {engine!r}")
        if task_runner not in ("default", "dask"):
            raise ValueError(f"--task-runner must be 'default' or 'dask', got {task_runner!r}")
        flow_options = {"task_runner": task_runner, "dask_address": dask_address, "warm_start": warm_start}
        summary = _run_chain(settings, input, model, workspace, engine, flow_options)
        if report:
            from pipeline.report import build_report

            with console.status("writing the report"):
                summary["report"] = build_report(summary["workspace"], summary["run_id"])
        summary["seconds"] = time.perf_counter() - started
        _print_summary(summary)
        if open_report and summary.get("report"):
            import webbrowser

            webbrowser.open(summary["report"].as_uri())


def _run_chain(
    settings: Any,
    inputs: list[str] | None,
    model: Path | None,
    workspace: Path | None,
    engine: str,
    flow_options: dict,
) -> dict:
    from dpop.config import TrainConfig
    from dpop.model_io import require_safetensors
    from flows.commands._workspace import writable_workspace

    if model:
        require_safetensors(model)  # refuse pickled weights before any work, not deep inside a flow
    ws = writable_workspace(workspace)
    sources = [str(s) for s in inputs] if inputs else [str(_synthetic_input(ws, settings))]
    console.rule("[bold]1/5 ingest")
    ingests = _ingest(ws, sources)
    console.rule("[bold]2/5 tokenizer and base model")
    base = Path(model).expanduser().resolve() if model else _tiny_base_model(ws, ingests, settings)
    console.print(f"base model: {base}")
    console.rule("[bold]3/5 curate, tokenise, shard")
    build = _build(ws, settings, base, ingests)
    console.rule("[bold]4/5 SFT warm-up (reference policy)")
    if model and not settings.sft_explicit:
        # The demo's warm-up (a high learning rate for a model that knows nothing) would damage a real
        # model; a user's model is taken as its own reference unless sft.steps / --sft-steps asks.
        settings = dataclasses.replace(settings, sft={**settings.sft, "steps": 0})
    reference = _reference(ws, base, build.dataset_id, settings)
    console.rule("[bold]5/5 reference log-probs and DPOP training")
    train_config = TrainConfig.from_dict(settings.training, source="training")
    result = _train(
        ws, sources, settings, base, reference, train_config, build.dataset_id, engine, flow_options
    )
    return {"workspace": ws, "build": build, "reference": reference, **result}


def _synthetic_input(ws: Any, settings: Any) -> Path:
    from pipeline.synth_math import write_math_pairs

    path = ws.root / "inputs" / f"synth-math-n{settings.synth_n}-seed{settings.seed}.jsonl"
    if not path.is_file():
        write_math_pairs(path, settings.synth_n, settings.seed)
    console.print(f"synthetic maths pairs: {path} ({settings.synth_n} pairs, seed {settings.seed})")
    return path


def _ingest(ws: Any, sources: list[str]) -> list:
    """Each source with its format detected (as the flow does, so its ingest is a cache hit)."""
    from rich.table import Table

    from pipeline.ingest import ingest_source

    results = []
    for source in sources:
        results += ingest_source(source, ws, on_note=lambda text: console.print(f"  [dim]{text}[/]"))
    table = Table("source", "format", "read", "kept", "rejected", "cached")
    for r in results:
        table.add_row(
            Path(r.source_uri).name,
            r.format,
            f"{r.rows_read:,}",
            f"{r.rows_kept:,}",
            f"{r.rows_rejected:,}",
            "yes" if r.reused else "no",
        )
    console.print(table)
    return results


def _tiny_base_model(ws: Any, ingests: list, settings: Any) -> Path:
    """The demo's base model: a tokenizer trained on the ingested texts and a tiny Llama, cached by content."""
    from dpop.tiny_model import tiny_model_for_pairs
    from pipeline.identity import stable_hash

    tiny = settings.tiny_model
    key = stable_hash({"ingests": sorted(r.ingest_id for r in ingests), "tiny": tiny, "seed": settings.seed})
    with console.status(f"training a {tiny['vocab_size']}-token BPE tokenizer and a tiny Llama"):
        model_dir, reused = tiny_model_for_pairs(
            ws.models_dir,
            [r.pairs_path for r in ingests],
            key,
            vocab_size=tiny["vocab_size"],
            num_layers=tiny["layers"],
            hidden_size=tiny["hidden_size"],
            num_heads=tiny["heads"],
            seed=settings.seed,
        )
    state = "up to date" if reused else f"{tiny['layers']} layers, hidden {tiny['hidden_size']}"
    console.print(f"tiny Llama ({state}) -> {model_dir}")
    return model_dir


def _build(ws: Any, settings: Any, base: Path, ingests: list) -> Any:
    from rich.table import Table

    from pipeline.build import build_dataset

    with console.status("curating and sharding"):
        build = build_dataset(ws, settings.curation, base, ingests=ingests)
    table = Table("step", "rows in", "dropped", "reason")
    for step, rows_in, dropped, reason in build.funnel:
        table.add_row(str(step), f"{rows_in:,}", f"{dropped:,}", reason or "")
    console.print(table)
    console.print(
        f"dataset {build.dataset_id}: {build.train_rows:,} train / {build.eval_rows:,} eval"
        + (" (up to date)" if build.reused else "")
    )
    return build


def _reference(ws: Any, base: Path, dataset_id: str, settings: Any) -> Path:
    """The SFT warm-up of `base` on the train split's chosen answers; `steps: 0` keeps `base`."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from dpop.sft import SFTConfig, examples_from_shards, warm_up

    sft = SFTConfig(**settings.sft)
    if sft.steps == 0:
        console.print("SFT warm-up off: the base model is the reference")
        return base
    examples = examples_from_shards(ws, dataset_id, "train")
    columns = (
        TextColumn("SFT"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("sft", total=sft.steps, loss="-")
        result = warm_up(
            ws,
            base,
            examples,
            sft,
            parents={dataset_id: "sft_on"},
            on_step=lambda step, _, loss: progress.update(task, completed=step, loss=f"{loss:.3f}"),
        )
    state = (
        "up to date"
        if result.reused
        else f"{sft.steps} steps, loss {result.losses[0]:.2f} -> {result.final_loss:.2f}"
    )
    console.print(f"reference policy {result.model_dir} ({state})")
    return result.model_dir


def _prefect_defaults(ws: Any) -> None:
    """Without a Prefect server configured, keep the ephemeral server's database in the workspace, so
    concurrent runs in other workspaces never share (and lock) one SQLite file in ~/.prefect."""
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        home = ws.cache_dir / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(home)
    # A loaded machine can take longer than Prefect's default 20 s to start the ephemeral server.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _train(
    ws: Any,
    sources: list[str],
    settings: Any,
    base: Path,
    reference: Path,
    train_config: Any,
    dataset_id: str,
    engine: str,
    flow_options: dict,
) -> dict:
    """Reference log-probs + training: through the Prefect flow (which finds ingest and build cached,
    records OpenLineage events and Prefect artifacts), or by calling the stage functions directly."""
    if engine == "prefect":
        _prefect_defaults(ws)  # before Prefect is imported: it reads its settings once
        from flows.data_to_model import data_to_model_flow

        summary = data_to_model_flow(
            workspace=ws.root,
            sources=sources,
            curate_config=settings.curation,
            base_model=reference,
            reference_model=reference,
            train_config=train_config,
            tokenizer=base,  # the tokenizer the dataset above was built with: its build is a cache hit
            **flow_options,
        )
        return {
            "run_id": summary["run_id"],
            "model_dir": Path(summary["model_dir"]),
            "metrics": summary.get("final_metrics") or {},
            "dataset_id": summary["dataset_id"],
            "via": f"Prefect flow, {summary.get('status', '?')}",
        }
    if flow_options["task_runner"] != "default" or flow_options["warm_start"]:
        raise ValueError("--task-runner and --warm-start need the Prefect engine (--engine prefect)")
    from dpop.model_io import precision_for_training
    from dpop.refs import compute_reference_logps
    from dpop.train import train

    refs_id = compute_reference_logps(ws, dataset_id, reference, dtype=precision_for_training(train_config))
    trained = train(ws, refs_id, reference, train_config)
    return {
        "run_id": trained.run_id,
        "model_dir": trained.model_dir,
        "metrics": trained.final_metrics,
        "dataset_id": refs_id,
        "via": "stage functions",
    }


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    ws = summary["workspace"]
    metrics = summary.get("metrics") or {}
    table = Table(
        title=f"dpop run done in {summary['seconds']:.0f} s ({summary.get('via')})", show_header=False
    )
    table.add_column("what", no_wrap=True, style="bold")
    table.add_column("where", overflow="fold")
    table.add_row("workspace", str(ws.root))
    table.add_row("run", str(summary["run_id"]))
    table.add_row("model", str(summary.get("model_dir")))
    table.add_row("reference policy", str(summary["reference"]))
    table.add_row("dataset", str(summary.get("dataset_id") or summary["build"].dataset_id))
    for name in ("eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen", "eval_loss"):
        if isinstance(metrics.get(name), int | float):
            table.add_row(name, f"{metrics[name]:.4g}")
    if summary.get("report"):
        table.add_row("report", str(summary["report"]))
    table.add_row(
        "lineage", f"dpop lineage {summary['run_id']} -w {ws.root}   (events: {ws.lineage_events_path})"
    )
    table.add_row(
        "SQL",
        f"dpop sql -w {ws.root} \"SELECT split, metric, value FROM metrics WHERE run_id = '{summary['run_id']}'\"",
    )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
