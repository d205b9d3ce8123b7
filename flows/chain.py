"""The one data-to-model chain, the same under every executor (no Prefect here): `flows/data_to_model.py`
runs it as a Prefect flow, `dpop run --engine direct` inline, `dpop run` first through `ProbeExecutor`
("is everything up to date?", running nothing):

    ingest (one stage per file) -> tiny model (demo only) -> build -> SFT (optional)
        -> log-probs (reference, in the policy's precision) -> train (one stage per training config)
        -> eval (each trained model against the reference on the eval split, when it has pairs)
        -> gate (the candidates and the champion on the same eval sets; the best that passes is
           promoted: `flows/gate_step.py`, `pipeline/gate.py`, docs/gate.md)

`ChainSpec` says what to run and travels as JSON (a deployment's parameters); `data_to_model` returns
the records (`ChainResult`). Reuse is the runner's alone (`pipeline.stage.run_stage`); this module only
remembers which stage id each stage's arguments gave (`_run`), so the probe checks the model stages and
the build without building them (their configs import torch; the build's id loads its tokenizer).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import json
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.atomic import write_text_atomic
from pipeline.identity import file_sha256, stable_hash
from pipeline.stage import (
    Executor,
    NeedsWork,
    ProbeExecutor,
    Stage,
    StageRecord,
    completed,
    lineage_parent,
    read_record,
)  # fmt: skip
from pipeline.workspace import Workspace

TRAINED, UP_TO_DATE = "trained", "up to date"
SMOKE_TEST = (
    "no --model: a tiny Llama with random weights (and a tokenizer trained on your data) is trained from "
    "scratch. This is a smoke test of the pipeline, not a model: expect chance accuracy (~0.5)."
)


@dataclass(frozen=True)
class ChainSpec:
    """What the chain runs. Configs are raw dpop.yaml sections (checked by the entry point, then by the
    stages), so a spec is plain JSON and keying on it needs no torch.

    `sources`: absolute paths or hub names (none: the demo's synthetic pairs, `synth_n`, `seed`);
    `base_model`: a folder (none: the demo's tiny model, `tiny_model`, on the ingests); `sft`: `steps`
    0 or absent makes the base model the reference; `training`: one config per training stage (several
    compare losses from one base, reference, seed and batch order)."""

    sources: tuple[str, ...] = ()
    synth_n: int = 600
    seed: int = 0
    fmt: str | None = None
    ingest_options: Mapping[str, Any] = field(default_factory=dict)
    base_model: str | None = None
    tiny_model: Mapping[str, Any] = field(default_factory=dict)
    curation: Mapping[str, Any] = field(default_factory=dict)
    sft: Mapping[str, Any] = field(default_factory=dict)
    training: tuple[Mapping[str, Any], ...] = ({},)
    warm_start: bool = False
    gate: Mapping[str, Any] = field(default_factory=dict)  # the `gate:` section (pipeline.gate.GateConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))
        object.__setattr__(self, "training", tuple(dict(t) for t in self.training) or ({},))

    @property
    def smoke_test(self) -> str | None:
        """Why the model means nothing, when the user's data trains a random tiny model."""
        return SMOKE_TEST if self.sources and self.base_model is None else None

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChainSpec:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"chain spec: unknown key(s) {', '.join(unknown)}")
        return cls(**data)


def with_losses(training: Mapping[str, Any], losses: str) -> tuple[dict[str, Any], ...]:
    """One training config per loss ("dpop:50,dpo": DPOP with λ 50, then DPO), else the same."""
    configs = []
    for name, _, penalty in (item.strip().partition(":") for item in losses.split(",") if item.strip()):
        try:
            configs.append(
                {**training, "loss": name, **({"penalty_lambda": float(penalty)} if penalty else {})}
            )
        except ValueError:
            raise ValueError(f"--losses: {name}:{penalty}: λ after ':' must be a number (dpop:50)") from None
    if not configs:
        raise ValueError(f"--losses: {losses!r} names no loss (e.g. dpop:50,dpo)")
    return tuple(configs)


@dataclass(frozen=True)
class ChainResult:
    """The records of one chain run (`reference`: the SFT's; None when the base model is the reference;
    `evals`: one per run, in the order of `runs`, None where the eval split is empty)."""

    ws: Workspace
    spec: ChainSpec
    ingests: tuple[StageRecord, ...]
    tiny: StageRecord | None
    build: StageRecord
    reference: StageRecord | None
    logps: tuple[StageRecord, ...]
    runs: tuple[StageRecord, ...]
    reference_model: str
    evals: tuple[StageRecord | None, ...] = ()
    gate: Any = None  # flows.gate_step.GateResult: the decision, and the evals made for it

    @property
    def status(self) -> str:
        records = [*self.ingests, self.tiny, self.build, self.reference, *self.logps, *self.runs, *self.evals]
        records += list(self.gate.evals) if self.gate is not None else []
        done = all(r.reused for r in records if r is not None)
        return UP_TO_DATE if done and (self.gate is None or self.gate.reused) else TRAINED

    @property
    def comparison_id(self) -> str | None:
        """Names a comparison: several runs from one base, reference and batch order."""
        return f"cmp-{stable_hash(sorted(r.id for r in self.runs), 16)}" if len(self.runs) > 1 else None


def _require_train_rows(ingests, build) -> None:
    """Nothing to train on is the data's problem, not a stage's: say where the rows went, once, before SFT
    or training fail on an empty split."""
    if build.counts.get("train_rows"):
        return
    reasons: dict[str, int] = {}
    for record in (*ingests, build):
        for reason, n in record.rejected_by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + n
    read = sum(r.counts.get("rows_read", 0) for r in ingests)
    lost = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    raise ValueError(
        f"no training pairs left: {read} row(s) read, {build.counts.get('rows_out', 0)} kept, "
        f"{build.counts.get('train_rows', 0)} in the train split (rejected: {lost or 'none'}); "
        'see: dpop sql "SELECT stage, reason, count(*) FROM rejections GROUP BY ALL"'
    )


def data_to_model(ws: Workspace, spec: ChainSpec, executor: Executor) -> ChainResult:
    """Run, or find done, every stage of the chain for `spec` (see the module docstring)."""
    run = _Steps(ws, spec, executor)
    ingests = run.ingest()
    pairs = [(r.id, r.summary["source_uri"], str(r.output("pairs").location(ws))) for r in ingests]
    tiny, tiny_settings = None, {**spec.tiny_model, "seed": spec.seed}
    if not spec.base_model:
        tiny = run(
            "demo.tiny_model:TinyModelStage", (pairs, tiny_settings), lambda: (tuple(ingests), tiny_settings)
        )
    base_id, base = _model(ws, tiny, spec.base_model)
    refs = lambda: tuple(_load("pipeline.build:IngestRef")(i, uri, Path(path)) for i, uri, path in pairs)  # noqa: E731
    build_key = (pairs, spec.curation, _eval_sha256(spec), base_id)
    build = run("pipeline.build:BuildStage", build_key, lambda: (refs(), dict(spec.curation), Path(base)))
    _require_train_rows(ingests, build)
    reference, sft = None, {**spec.sft, "seed": spec.seed}
    if int(spec.sft.get("steps") or 0) > 0:
        sft_config = lambda: _load("dpop.sft:SFTConfig")(**sft)  # noqa: E731
        reference = run(
            "dpop.sft:SFTStage", (base_id, build.id, sft), lambda: (Path(base), build.id, sft_config())
        )
    reference_id, reference_path = _model(ws, reference, base)
    trained = [run.train(build.id, (reference_id, reference_path), training) for training in spec.training]
    logps, runs = tuple(t[0] for t in trained), tuple(t[1] for t in trained)
    evals = tuple(
        run.evaluate(lp.id, r, (reference_id, reference_path), training)
        if build.counts.get("eval_rows")
        else None
        for lp, r, training in zip(logps, runs, spec.training, strict=True)
    )
    result = ChainResult(ws, spec, tuple(ingests), tiny, build, reference, logps, runs, reference_path, evals)
    result = dataclasses.replace(result, gate=_gate(run, result, (reference_id, reference_path)))
    if not isinstance(executor, ProbeExecutor):
        _note_runs(result)
    return result


def _gate(steps: _Steps, result: ChainResult, reference: tuple[str, str]) -> Any:
    """The chain's last step: the gate's decision on its runs (recorded once; the probe finds it)."""
    from flows.gate_step import Candidate, GateStep, probe_gate

    candidates = [
        Candidate(r, *_model(result.ws, r), e, t)
        for r, e, t in zip(result.runs, result.evals, result.spec.training, strict=True)
    ]
    if isinstance(steps.executor, ProbeExecutor):
        return probe_gate(result.ws, candidates, result.spec.gate)
    dataset_id = result.logps[0].id
    return GateStep(result.ws, steps, candidates, reference, dataset_id, result.spec.gate).run()


def probe(ws: Workspace, spec: ChainSpec) -> ChainResult | None:
    """The chain's records when every stage is done, else None; runs and writes nothing."""
    try:
        return data_to_model(ws, spec, ProbeExecutor())
    except NeedsWork:
        return None


@dataclass(frozen=True)
class _Steps:
    """The chain's steps on one workspace, spec and executor."""

    ws: Workspace
    spec: ChainSpec
    executor: Executor

    def __call__(
        self, stage: str, key: Any, arguments: Callable[[], tuple], keywords: Callable[[], dict] = dict
    ) -> StageRecord:
        """Run the stage `stage` ("module:Class") builds from `arguments()` and `keywords()`. Its id is
        remembered under (stage, key, code, host): the key holds content ids and raw configs; the code is
        the source of every package a stage id depends on (`_code`); the host because a config's meaning
        can depend on the machine (bf16 where it has none). So the probe finds the record without
        building the stage (most stage modules import torch)."""
        what = stage.rsplit(":", 1)[-1]
        identity = json.loads(json.dumps([stage, key, _code(), socket.gethostname()], default=str))
        memo = self.ws.cache_dir / "stage-ids" / f"{what}-{stable_hash(identity)}.json"
        if isinstance(self.executor, ProbeExecutor):
            try:
                known = json.loads(memo.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                known = {"id": "", "folder": ".unknown"}
            return self.executor.run(self.ws, _Remembered(what, known["id"], known["folder"]))
        built = _load(stage)(*arguments(), **keywords())
        folder = str(built.folder(self.ws).relative_to(self.ws.root))
        write_text_atomic(memo, json.dumps({"id": built.id, "folder": folder}))
        return self.executor.run(self.ws, built)

    def ingest(self) -> list[StageRecord]:
        """One ingest stage per file (`run_many`: in parallel where the executor can). A file found in a
        folder that holds no preference data is skipped (a README, question/answer data), as `dpop
        ingest` does; a file named explicitly that holds none is an error."""
        from pipeline.ingest import IngestOptions, NotPreferenceData
        from pipeline.ingest.detect import detect_format
        from pipeline.ingest.readers import iter_records
        from pipeline.ingest.stage import IngestStage

        spec, stages = self.spec, []
        for item, in_folder in expand(list(spec.sources) or [_synthetic(self.ws, spec, self.executor)]):
            try:
                stage = IngestStage(item, spec.fmt, None, IngestOptions(**spec.ingest_options))
                if in_folder and spec.fmt is None and completed(self.ws, stage) is None:
                    detect_format(iter_records(stage.source), stage.source.describe())
                stages.append(stage)
            except NotPreferenceData as error:
                if not in_folder:
                    raise
                print(f"skipped {error}")
        if not stages:
            raise ValueError(f"no preference data found in {', '.join(spec.sources)}")
        return self.executor.run_many(self.ws, stages)

    def train(
        self, dataset_id: str, reference: tuple[str, str], training: Mapping
    ) -> tuple[StageRecord, ...]:
        """The reference's log-probs in the policy's precision (the log-ratio is then 0 at step 0), and the
        training stage on them, from the reference or (warm start) the latest model."""
        config, ref = _with_file_hashes(training), Path(reference[1])
        precision = lambda: _load("dpop.model_io:precision_for_training")(train_config(training)).label  # noqa: E731
        logps = self(
            "dpop.refs:LogpsStage", (dataset_id, reference[0], config), lambda: (dataset_id, ref, precision())
        )
        start_id, start = self.warm_start(logps.id, training) or reference
        arguments = lambda: (logps.id, Path(start), train_config(training), ref)  # noqa: E731
        return logps, self("dpop.train:TrainStage", (logps.id, start_id, reference[0], config), arguments)

    def evaluate(
        self, dataset_id: str, run: StageRecord, reference: tuple[str, str], training: Mapping
    ) -> StageRecord:
        """The trained model against the reference on the dataset's eval split, at the run's β and in its
        precision: every run of a comparison is evaluated on the same eval set."""
        model_id, model = _model(self.ws, run)

        def arguments() -> tuple:  # only when the stage is built: TrainConfig imports transformers
            config = train_config(training)
            precision = _load("dpop.model_io:precision_for_training")(config)
            return Path(model), Path(reference[1]), dataset_id, "eval", config.beta, precision

        key = (dataset_id, model_id, reference[0], _with_file_hashes(training))
        return self("dpop.evaluate:PreferenceEvalStage", key, arguments, lambda: {"ws": self.ws})

    def warm_start(self, dataset_id: str, training: Mapping[str, Any]) -> tuple[str, str] | None:
        """With warm start: the model of the latest run with this loss on another dataset version (one on
        this version would make itself out of date), else None (start from the reference)."""
        if not self.spec.warm_start:
            return None
        loss = training.get("loss", "dpop")
        runs = [
            r for r in map(read_record, self.ws.runs_dir.glob("*")) if r is not None and r.stage == "train"
        ]
        runs = [
            r
            for r in runs
            if r.config.get("loss", "dpop") == loss and dataset_id not in {i.artifact.id for i in r.inputs}
        ]
        return _model(self.ws, max(runs, key=lambda r: r.finished_at)) if runs else None


def expand(sources: list[str]) -> list[tuple[Any, bool]]:
    """(item, found in a folder) per ingest stage: a folder's data files, a file or save_to_disk folder,
    a hub name's splits."""
    from pipeline.ingest.readers import expand_folder, hub_sources

    items: list[tuple[Any, bool]] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir() and not (path / "state.json").is_file():
            items += [(file, True) for file in expand_folder(path.resolve())[0]]
        else:
            items += [(path.resolve(), False)] if path.exists() else [(s, False) for s in hub_sources(source)]
    return items


def _synthetic(ws: Workspace, spec: ChainSpec, executor: Executor) -> str:
    """The demo's synthetic maths pairs: one file per (n, seed)."""
    path = ws.root / "inputs" / f"synth-math-n{spec.synth_n}-seed{spec.seed}.jsonl"
    if not path.is_file():
        if isinstance(executor, ProbeExecutor):
            raise NeedsWork(_Remembered("synthetic pairs", "", str(path)))
        from demo.synth_math import write_math_pairs

        write_math_pairs(path, spec.synth_n, spec.seed)
    return str(path)


def _model(ws: Workspace, record: StageRecord | None, folder: str | None = None) -> tuple[str, str]:
    """(id, folder) of the model a record made, else of a model folder."""
    if record is None:
        return _load("dpop.model_io:model_artifact")(str(folder)).id, str(folder)
    model = record.output("model")
    return model.id, str(model.location(ws))


def train_config(training: Mapping[str, Any]) -> Any:
    return _load("dpop.config:TrainConfig").from_dict(dict(training), source="training")


@functools.cache
def _code() -> str:
    """sha256 of the code that decides stage ids (pipeline, dpop, demo, the contracts): a new version,
    installed or edited, keys anew (a commit that touches none of it keeps the probe's memory)."""
    digest = hashlib.sha256()
    for package in ("pipeline", "dpop", "demo", "data_contracts"):
        root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml")):
            digest.update(f"{path.relative_to(root.parent)}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def _load(name: str) -> Any:
    """`module:attribute`, imported when first needed (most stages' modules import torch)."""
    module, attribute = name.split(":")
    return getattr(importlib.import_module(module), attribute)


def _note_runs(result: ChainResult) -> None:
    """`chain.json` beside each run's record: the comparison it is part of, and the smoke-test flag (the
    report shows it). Not part of the run's identity: the same run in two chains is one run."""
    for run in result.runs:
        note = {
            "comparison_id": result.comparison_id,
            "runs": [r.id for r in result.runs],
            "smoke_test": result.spec.smoke_test,
        }
        path = result.ws.root / run.folder / "chain.json"
        text = json.dumps(note, indent=2) + "\n"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_text_atomic(path, text)


def _eval_sha256(spec: ChainSpec) -> str | None:
    """The decontamination file's content, which the build's id depends on (its path does not)."""
    path = ((spec.curation.get("filters") or {}).get("decontaminate") or {}).get("file")
    return file_sha256(path) if path and Path(path).is_file() else None


def _with_file_hashes(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as a key: with the sha256 of each file it names (a changed DeepSpeed file counts)."""
    files = {
        k: v for k, v in config.items() if isinstance(v, str) and Path(v).is_absolute() and Path(v).is_file()
    }
    return {**config, "file sha256": {k: file_sha256(v) for k, v in files.items()}} if files else dict(config)


# --- stage ids without building the stages -----------------------------------------------------------


@dataclass(frozen=True)
class _Remembered(Stage):
    """A stage known by the id and folder its arguments gave last time: what the probe checks."""

    name = id_prefix = "remembered"
    what: str
    known_id: str
    known_folder: str

    @property
    def id(self) -> str:  # type: ignore[override]
        return self.known_id

    def inputs(self) -> list:
        return []

    def config(self) -> dict[str, Any]:
        return {}

    def folder(self, ws: Workspace) -> Path:
        return ws.root / self.known_folder

    def run(self, ctx: Any) -> Any:
        raise NeedsWork(self)

    def label(self) -> str:
        return self.what


# --- what the entry points show ----------------------------------------------------------------------


def summary(result: ChainResult) -> dict[str, Any]:
    """The chain run as JSON: what the flow returns, `dpop run` prints and the artifacts show."""
    ingests, build = result.ingests, result.build
    fresh = [r for r in ingests if not r.reused]
    runs = [
        {
            "run_id": r.id,
            "run_dir": str(result.ws.root / r.folder),
            **dict(zip(("model_id", "model_dir"), _model(result.ws, r), strict=True)),
            "loss": r.config.get("loss", "dpop"),
            "final_metrics": dict(r.summary.get("final_metrics") or {}),
            "resumed": bool(r.summary.get("resumed")),
            "eval_id": e.id if e else None,
            "eval_set_id": e.summary.get("eval_set") if e else None,
            "eval_metrics": dict(e.summary.get("metrics") or {}) if e else {},
        }
        for r, e in zip(result.runs, result.evals or (None,) * len(result.runs), strict=True)
    ]
    counts = {
        k: sum(r.counts.get(k, 0) for r in ingests)
        for k in ("rows_read", "rows_kept", "rows_rejected", "pairs_written")
    }
    return {
        "workspace": str(result.ws.root),
        "status": result.status,
        "files": len(ingests),
        "files_ingested": len(fresh),
        "files_cached": len(ingests) - len(fresh),
        "ingested_files": [r.summary.get("source_uri") for r in fresh],
        "ingest_ids": [r.id for r in ingests],
        "rows_read": counts["rows_read"],
        "rows_kept_ingest": counts["rows_kept"],
        "rows_rejected_ingest": counts["rows_rejected"],
        "pairs_written": counts["pairs_written"],
        "tokenized_dataset_id": build.id,
        "dataset_id": result.logps[0].id,
        "pairs_in": build.counts.get("rows_in"),
        "pairs_kept": build.counts.get("rows_out"),
        "train_rows": build.counts.get("train_rows"),
        "eval_rows": build.counts.get("eval_rows"),
        "funnel": build.summary.get("funnel") or [],
        "reference_model": result.reference_model,
        "cached": {
            "build": build.reused,
            "refs": all(r.reused for r in result.logps),
            "train": all(r.reused for r in result.runs),
        },
        **runs[0],
        "runs": runs,
        "comparison_id": result.comparison_id,
        "smoke_test": result.spec.smoke_test,
        "gate": gate_summary(result),
    }


def gate_summary(result: ChainResult) -> dict[str, Any] | None:
    """The gate's decision as the summary, the artifacts and the report show it."""
    if result.gate is None:
        return None
    decision = dict(result.gate.decision)
    keys = ("outcome", "alias", "promoted", "champion_before", "champion_after", "reason", "candidates")
    out = {key: decision.get(key) for key in keys}
    out["checks"] = [
        {"model_id": v["model_id"], **check}
        for v in decision.get("verdicts") or []
        for check in v.get("checks") or []
    ]
    out["metrics"] = decision.get("metrics") or {}
    out["eval_ids"] = decision.get("eval_ids") or []
    out["blockers"] = decision.get("blockers") or []
    out["reused"] = bool(result.gate.reused)
    return out


def run_chain(
    ws: Workspace, spec: ChainSpec, executor: Executor, run: tuple[str, str], lock_timeout: float = 0
) -> ChainResult:
    """`data_to_model` as a run of its own (the flow's, or `--engine direct`'s): the workspace lock held
    (waiting at most `lock_timeout` s), temporaries of dead writers swept, and the run's OpenLineage
    events (`run`: its id and job name), START, then COMPLETE or FAIL, the parent of its stages' events."""
    from flows.lock import workspace_lock
    from pipeline.atomic import sweep_temporaries
    from pipeline.openlineage import emit, file_ref

    inputs = [file_ref(s) for s in (*spec.sources, *filter(None, [spec.base_model]))]
    with workspace_lock(ws, lock_timeout, what=f"{run[1]} run"):
        if swept := sweep_temporaries(ws.root):
            print(f"removed {swept} unfinished file(s) left by an interrupted run")
        token = lineage_parent.set(run)
        emit(ws, "START", run[0], run[1], "FLOW", None, inputs)
        try:
            result = data_to_model(ws, spec, executor)
        except BaseException as error:
            emit(ws, "FAIL", run[0], run[1], "FLOW", None, inputs, error=error)
            raise
        finally:
            lineage_parent.reset(token)
        outputs = [file_ref(r.output("model").location(ws)) for r in result.runs]
        emit(ws, "COMPLETE", run[0], run[1], "FLOW", None, inputs, outputs)
    return result
