"""The stage contract and the one runner that every entry point goes through.

A **stage** is one step of the data-to-model chain (ingest one file, build a dataset version, compute
log-probs, SFT, train, …). It declares

- its inputs: artefacts with ids (`Input`), each with the relation the lineage edge will carry;
- its config: a JSON-able dict of everything else its output depends on (no paths, no times);
- its identity: `id = prefix + hash(stage name, stage version, input ids, config)`, so the same inputs
  and config give the same id on any machine and in any workspace, whichever engine runs it;
- its output folder in the workspace (`folder(ws)`, named by the id);
- `run(ctx)`: the work, writing into `ctx.out` and returning a `StageOutput` (output artefacts with
  their contract and row counts, counts, rejections by reason, a small summary).

The **runner** (`run_stage`) is the only cache: if the stage's folder holds a `stage.json` record with
the same id whose outputs are all present, the record is returned as is (`reused=True`); otherwise the
stage runs (into a temporary folder renamed when complete, or in place for resumable stages such as
training), the record is written last, and then published once: the catalog rows and the OpenLineage
COMPLETE event are both made from that one record (`pipeline.lineage_events`). Nothing here imports
Prefect: executors (`Executor`) decide where the work runs (inline here; Prefect tasks and Dask workers in
`flows/executors.py`) and run the same stages.
"""

from __future__ import annotations

import abc
import contextvars
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from pipeline.atomic import atomic_dir, write_text_atomic
from pipeline.identity import stable_hash
from pipeline.version import code_version
from pipeline.workspace import Workspace

RECORD_FILE = "stage.json"
RECORD_FORMAT = 1
ID_HEX = 16

T = TypeVar("T")
R = TypeVar("R")


# --- artefacts and records --------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """An artefact as the catalog and OpenLineage see it.

    `path` is workspace-relative for artefacts inside the workspace (so a workspace can move) and
    absolute for external ones (a user's source file or model folder). `parents` overrides the edges
    the catalog records for an output (default: every input of the stage, with its relation)."""

    id: str
    kind: str
    path: str | None = None
    rows: int | None = None
    contract: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    parents: tuple[tuple[str, str], ...] | None = None

    def location(self, ws: Workspace) -> Path | None:
        if self.path is None:
            return None
        path = Path(self.path)
        return path if path.is_absolute() else ws.root / path

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["meta"] = dict(self.meta)
        data["parents"] = [list(p) for p in self.parents] if self.parents is not None else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Artifact:
        parents = data.get("parents")
        return cls(
            id=data["id"],
            kind=data["kind"],
            path=data.get("path"),
            rows=data.get("rows"),
            contract=data.get("contract"),
            meta=dict(data.get("meta") or {}),
            parents=tuple(tuple(p) for p in parents) if parents is not None else None,
        )


@dataclass(frozen=True)
class Input:
    """An artefact a stage reads, and the relation of the lineage edge from it to the stage's outputs."""

    artifact: Artifact
    relation: str


@dataclass(frozen=True)
class StageOutput:
    """What `Stage.run` returns: output artefacts, counts (`rows_in`, `rows_out`, …), rejections by
    reason code, and a small JSON-able summary specific to the stage (read back by the chain)."""

    outputs: Sequence[Artifact]
    counts: Mapping[str, int] = field(default_factory=dict)
    rejected_by_reason: Mapping[str, int] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageRecord:
    """The record of a finished stage: `<folder>/stage.json`, written last (its presence means the
    folder is complete). The catalog and the OpenLineage events are made from it, and
    `dpop catalog rebuild` replays the records it finds in a workspace."""

    stage: str
    stage_version: int
    id: str
    folder: str  # workspace-relative
    inputs: tuple[Input, ...]
    outputs: tuple[Artifact, ...]
    config: Mapping[str, Any]
    counts: Mapping[str, int]
    rejected_by_reason: Mapping[str, int]
    summary: Mapping[str, Any]
    code_version: str
    started_at: str
    finished_at: str
    reused: bool = False  # not stored: True when the runner found the stage done

    def output(self, kind: str) -> Artifact:
        """The (first) output artefact of a kind."""
        for artifact in self.outputs:
            if artifact.kind == kind:
                return artifact
        raise KeyError(f"stage {self.stage} {self.id} has no {kind!r} output")

    def to_json(self) -> dict[str, Any]:
        return {
            "record_format": RECORD_FORMAT,
            "stage": self.stage,
            "stage_version": self.stage_version,
            "id": self.id,
            "folder": self.folder,
            "inputs": [{**i.artifact.to_json(), "relation": i.relation} for i in self.inputs],
            "outputs": [a.to_json() for a in self.outputs],
            "config": dict(self.config),
            "counts": dict(self.counts),
            "rejected_by_reason": dict(self.rejected_by_reason),
            "summary": dict(self.summary),
            "code_version": self.code_version,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StageRecord:
        inputs = tuple(
            Input(Artifact.from_json({k: v for k, v in item.items() if k != "relation"}), item["relation"])
            for item in data["inputs"]
        )
        return cls(
            stage=data["stage"],
            stage_version=data["stage_version"],
            id=data["id"],
            folder=data["folder"],
            inputs=inputs,
            outputs=tuple(Artifact.from_json(item) for item in data["outputs"]),
            config=data.get("config") or {},
            counts=data.get("counts") or {},
            rejected_by_reason=data.get("rejected_by_reason") or {},
            summary=data.get("summary") or {},
            code_version=data.get("code_version", ""),
            started_at=data.get("started_at", ""),
            finished_at=data.get("finished_at", ""),
        )


def read_record(folder: Path) -> StageRecord | None:
    """The record in a stage folder, or None when the folder is absent, unfinished or unreadable."""
    try:
        data = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
        return StageRecord.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_record(folder: Path, record: StageRecord) -> None:
    write_text_atomic(folder / RECORD_FILE, json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n")


def iter_records(ws: Workspace) -> Iterator[StageRecord]:
    """Every stage record in a workspace, oldest first (for `dpop catalog rebuild`)."""
    records = [read_record(path.parent) for path in ws.root.rglob(RECORD_FILE) if ".tmp-" not in str(path)]
    yield from sorted((r for r in records if r is not None), key=lambda r: (r.finished_at, r.id))


# --- the stage contract -----------------------------------------------------------------------------


class Stage(abc.ABC):
    """One step of the chain; subclasses are small frozen dataclasses holding their inputs and config.

    Class attributes:
    - `name`: the stage's name in records, the catalog, OpenLineage jobs and the Prefect UI;
    - `version`: bump when the stage's output for the same inputs and config changes (new rules, new
      format), so older outputs are not reused; the git commit is deliberately not part of the id;
    - `id_prefix`: ids read as what they are (`ds-…`, `run-…`, `model-…`);
    - `placement`: "data" stages may run on a Dask worker; "local" stages (models) run in the driver;
    - `partitioned`: the stage splits its own work with `ctx.map` (the executor must run its body in
      the driver and send the parts out);
    - `in_place`: the stage writes its folder in place and resumes a killed run (training); otherwise
      the runner gives it a temporary folder renamed when complete.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    id_prefix: ClassVar[str]
    placement: ClassVar[str] = "local"
    partitioned: ClassVar[bool] = False
    in_place: ClassVar[bool] = False

    @abc.abstractmethod
    def inputs(self) -> list[Input]:
        """The artefacts this stage reads (their ids make its identity)."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything else the output depends on, JSON-able, without paths or times."""

    @abc.abstractmethod
    def folder(self, ws: Workspace) -> Path:
        """The output folder, named by `self.id`."""

    @abc.abstractmethod
    def run(self, ctx: StageContext) -> StageOutput:
        """Do the work, writing into `ctx.out`."""

    def label(self) -> str:
        """A short human label for consoles and the Prefect UI."""
        return self.name

    @cached_property
    def id(self) -> str:
        identity = {
            "stage": self.name,
            "version": self.version,
            "inputs": sorted([i.artifact.id, i.relation] for i in self.inputs()),
            "config": self.config(),
        }
        return f"{self.id_prefix}-{stable_hash(identity, ID_HEX)}"


class Executor(Protocol):
    """Where stages and their parts run; the chain calls only these three methods.

    - `run(ws, stage)`: one stage (the Prefect executor makes it a task in the UI);
    - `run_many(ws, stages)`: independent stages, e.g. one ingest per file (may run in parallel);
    - `map(label, fn, items)`: a partitioned stage's parts (may go to Dask workers)."""

    def run(self, ws: Workspace, stage: Stage) -> StageRecord: ...

    def run_many(self, ws: Workspace, stages: Sequence[Stage]) -> list[StageRecord]: ...

    def map(self, label: str, fn: Callable[[T], R], items: Sequence[T]) -> list[R]: ...


class InlineExecutor:
    """Everything in this process, in order: `--engine direct`, tests, benchmarks, ranks under torchrun."""

    def run(self, ws: Workspace, stage: Stage) -> StageRecord:
        return run_stage(ws, stage, self)

    def run_many(self, ws: Workspace, stages: Sequence[Stage]) -> list[StageRecord]:
        return [run_stage(ws, stage, self) for stage in stages]

    def map(self, label: str, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        return [fn(item) for item in items]


class ProbeExecutor(InlineExecutor):
    """Runs nothing: returns the records of finished stages and raises `NeedsWork` at the first stage
    that is not done. A chain run through it answers "is everything up to date?" without starting an
    orchestrator, importing torch or touching a file."""

    def run(self, ws: Workspace, stage: Stage) -> StageRecord:
        return run_stage(ws, stage, self, reuse_only=True)

    def run_many(self, ws: Workspace, stages: Sequence[Stage]) -> list[StageRecord]:
        return [self.run(ws, stage) for stage in stages]


INLINE = InlineExecutor()


@dataclass
class StageContext:
    """What a running stage gets: the workspace, the folder to write (`out`: a temporary folder that
    becomes `folder`), the executor for its parts, and a progress callback (`progress(done, total,
    text)`) the console may show."""

    ws: Workspace
    out: Path
    folder: Path
    executor: Executor = INLINE
    progress: Callable[[int, int | None, str], None] = lambda done, total, text: None

    def map(self, label: str, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        return self.executor.map(label, fn, items)

    def path(self, name: str) -> str:
        """How the record names the file `name` of the output folder (workspace-relative)."""
        return workspace_path(self.ws, self.folder / name)


# --- the runner -------------------------------------------------------------------------------------


class NeedsWork(Exception):
    """Raised by `run_stage(..., reuse_only=True)` when a stage is not done yet (the no-op probe)."""

    def __init__(self, stage: Stage):
        super().__init__(f"{stage.label()} ({stage.id}) has work to do")
        self.stage = stage


# The Prefect executor sets this to (flow run id, flow name) so OpenLineage events name their parent run.
lineage_parent: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "lineage_parent", default=None
)
# Progress callback for the stage being run (the CLI's console sets it).
progress_sink: contextvars.ContextVar[Callable[[str, int, int | None, str], None] | None] = (
    contextvars.ContextVar("progress_sink", default=None)
)
# Told when a stage starts, finishes ("done", with its record), is found done ("reused") or fails (the
# CLI's console sets it, to show a line per stage). Context variables reach Prefect's task threads;
# for stages in other processes (Dask workers) the executor reports instead.
stage_observer: contextvars.ContextVar[Callable[[str, Stage, StageRecord | None], None] | None] = (
    contextvars.ContextVar("stage_observer", default=None)
)


def notify(event: str, stage: Stage, record: StageRecord | None = None) -> None:
    """Tell the console (if any) that `stage` is "start", "done", "reused" or "failed"."""
    observer = stage_observer.get()
    if observer is not None:
        observer(event, stage, record)


def is_main_process() -> bool:
    """Rank 0 (or no distributed launch): only it writes records, catalog rows and events."""
    return int(os.environ.get("RANK", "0")) == 0


def completed(ws: Workspace, stage: Stage) -> StageRecord | None:
    """The stage's record when its folder is complete for this id and every output is present."""
    record = read_record(stage.folder(ws))
    if record is None or record.id != stage.id:
        return None
    for artifact in record.outputs:
        location = artifact.location(ws)
        if location is not None and not location.exists():
            return None
    return replace(record, reused=True)


def run_stage(
    ws: Workspace, stage: Stage, executor: Executor = INLINE, reuse_only: bool = False
) -> StageRecord:
    """Reuse the stage's finished output, or run it and record it once (see the module docstring)."""
    done = completed(ws, stage)
    if done is not None:
        notify("reused", stage, done)
        return done
    if reuse_only:
        raise NeedsWork(stage)
    # imported here, after the reuse check: a probe of finished stages never loads the lineage client
    from pipeline.publish import publish_failure, publish_record, publish_start

    folder = stage.folder(ws)
    run_uuid = str(uuid.uuid4())
    started = _now()
    main = is_main_process()
    if main:
        publish_start(ws, stage, run_uuid, lineage_parent.get())
    notify("start", stage)
    try:
        with _output_folder(stage, folder) as out:
            sink = progress_sink.get()
            progress = (lambda d, t, text: sink(stage.label(), d, t, text)) if sink else None
            context = StageContext(ws, out, folder, executor, progress or (lambda d, t, text: None))
            output = stage.run(context)
            record = _record(ws, stage, folder, output, started)
            if main:
                write_record(out, record)
    except BaseException as error:
        notify("failed", stage)
        if main:
            publish_failure(ws, stage, run_uuid, lineage_parent.get(), error)
        raise
    if main:
        publish_record(ws, record, run_uuid, lineage_parent.get())
    notify("done", stage, record)
    return record


@contextmanager
def _output_folder(stage: Stage, folder: Path) -> Iterator[Path]:
    if stage.in_place:
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
    else:
        with atomic_dir(folder) as tmp:
            yield tmp


def _record(ws: Workspace, stage: Stage, folder: Path, output: StageOutput, started: str) -> StageRecord:
    return StageRecord(
        stage=stage.name,
        stage_version=stage.version,
        id=stage.id,
        folder=_relative(ws, folder),
        inputs=tuple(stage.inputs()),
        outputs=tuple(output.outputs),
        config=stage.config(),
        counts=dict(output.counts),
        rejected_by_reason=dict(output.rejected_by_reason),
        summary=dict(output.summary),
        code_version=code_version(),
        started_at=started,
        finished_at=_now(),
    )


def _relative(ws: Workspace, path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ws.root))
    except ValueError:
        return str(Path(path).resolve())


def workspace_path(ws: Workspace, path: Path) -> str:
    """How a record names a path: relative to the workspace when inside it, else absolute."""
    return _relative(ws, path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
