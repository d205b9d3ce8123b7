"""Ingest sources into the workspace: `ingest_source` (files, folders, save_to_disk folders, Hugging Face
dataset names) on `IngestStage` (pipeline/ingest/stage.py) and the stage runner, plus the `latest`
pointers: per source URI, the ingest the user ran last (`latest_ingests`, what `dpop build` curates).

A folder expands into one stage per data file; files in it that hold no preference data are skipped
with a note, while a file named explicitly that cannot be read or detected raises an error naming it.
A file that changes while it is read is identified anew and read once more (see stage.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.atomic import write_text_atomic
from pipeline.identity import stable_hash
from pipeline.ingest.formats import FORMATS
from pipeline.ingest.readers import (
    IngestError,
    NotPreferenceData,
    Source,
    SourceChanged,
    expand_folder,
    file_source,
    hub_sources,
    looks_like_hub_name,
)
from pipeline.ingest.stage import IngestOptions, IngestStage
from pipeline.stage import INLINE, Executor, StageRecord, read_record
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)

LATEST_DIR = "latest"


@dataclass(frozen=True)
class IngestResult:
    ingest_id: str
    source_uri: str
    source_sha256: str
    source_name: str
    format: str
    pairs_path: Path
    rejections_path: Path
    rows_read: int  # records read from the source
    rows_kept: int  # records that yielded at least one pair
    rows_rejected: int  # records rejected (one rejection row each)
    rejected_by_reason: dict[str, int]
    reused: bool
    pairs_written: int = 0  # pair rows (more than rows_kept when a record expands into several pairs)

    @classmethod
    def from_record(cls, ws: Workspace, record: StageRecord) -> IngestResult:
        counts, summary = record.counts, record.summary
        return cls(
            ingest_id=record.id,
            source_uri=summary["source_uri"],
            source_sha256=record.inputs[0].artifact.id,
            source_name=summary["source_name"],
            format=summary["format"],
            pairs_path=record.output("pairs").location(ws),
            rejections_path=record.output("rejections").location(ws),
            rows_read=counts["rows_read"],
            rows_kept=counts["rows_kept"],
            rows_rejected=counts["rows_rejected"],
            rejected_by_reason=dict(record.rejected_by_reason),
            reused=record.reused,
            pairs_written=counts["pairs_written"],
        )


Note = Callable[[str], None]


def ingest_source(
    source: str | Path,
    workspace: Workspace | str | Path,
    fmt: str | None = None,
    name: str | None = None,
    options: IngestOptions | None = None,
    on_note: Note | None = None,
    executor: Executor = INLINE,
) -> list[IngestResult]:
    """Ingest a file, a folder of files, a save_to_disk folder or a Hugging Face dataset name, one
    `IngestStage` per file through the stage runner (an unchanged file ingested again is reused).

    `fmt=None` detects the format per file. Inside a folder, files that hold no preference data
    (README, YAML, dataset_info.json, question/answer data) are skipped with a note; a file named
    explicitly that cannot be read or detected raises an error naming it.
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    options = options or IngestOptions()
    note = on_note or log.info
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    sources, named = _resolve(source, note)
    results = []
    for item in sources:
        try:
            stage = IngestStage(item, fmt, name, options)  # a folder entry is identified here, lazily
            record = _run_checked(ws, stage, executor, note)
        except NotPreferenceData as error:
            if named:
                raise
            note(f"skipped {error}")
            continue
        result = IngestResult.from_record(ws, record)
        _point_latest(ws, result)
        results.append(result)
    if not results and not named:
        raise NotPreferenceData(f"{source}: no preference data files found")
    return results


def _resolve(source: str | Path, note: Note) -> tuple[list[Source | Path], bool]:
    """(sources, named): `named` is True when the user named the file or dataset itself."""
    path = Path(source).expanduser()
    if path.is_dir() and not (path / "state.json").is_file():
        files, skipped = expand_folder(path.resolve())
        for skipped_path, why in skipped:
            note(f"skipped {skipped_path}: {why}")
        return list(files), False
    if path.exists():
        return [file_source(path)], True
    if isinstance(source, str) and looks_like_hub_name(source):
        return list(hub_sources(source)), True
    if path.is_symlink():
        raise FileNotFoundError(f"{source}: a link that loops or points nowhere")
    raise FileNotFoundError(f"{source}: no such file or folder")


def _run_checked(ws: Workspace, stage: IngestStage, executor: Executor, note: Note) -> StageRecord:
    """Run the stage, and once more when the file changed while it was read (e.g. a writer that was
    finishing): identified anew, so the rows and their `source_sha256` are of one version. A file that
    changes again fails with SourceChanged naming it."""
    try:
        return executor.run(ws, stage)
    except SourceChanged:
        if stage.source.path is None:
            raise
        note(f"{stage.source.describe()} changed while it was read; reading it again")
        return executor.run(ws, replace(stage, source=file_source(stage.source.path)))


# --- latest pointers ---------------------------------------------------------------------------------


def _point_latest(ws: Workspace, result: IngestResult) -> None:
    # One small pointer file per source URI, rewritten atomically on every ingest (reused or not),
    # so "latest" follows what the user last ingested even when an older folder is reused.
    pointer = ws.sources_dir / LATEST_DIR / f"{stable_hash(result.source_uri)}.json"
    payload = {"source_uri": result.source_uri, "ingest_id": result.ingest_id}
    write_text_atomic(pointer, json.dumps(payload) + "\n")


def latest_ingests(workspace: Workspace | str | Path) -> list[IngestResult]:
    """Per source URI, its most recent complete ingest (sorted by URI)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    results = []
    for pointer in sorted((ws.sources_dir / LATEST_DIR).glob("*.json")):
        try:
            payload = json.loads(pointer.read_text(encoding="utf-8"))
        except ValueError:
            continue
        record = read_record(ws.sources_dir / payload["ingest_id"])
        if record is None or record.stage != IngestStage.name:
            continue
        outputs = [record.output(kind).location(ws) for kind in ("pairs", "rejections")]
        if all(path is not None and path.is_file() for path in outputs):
            results.append(IngestResult.from_record(ws, record))
    return sorted(results, key=lambda r: r.source_uri)


__all__ = [
    "IngestError",
    "IngestOptions",
    "IngestResult",
    "IngestStage",
    "NotPreferenceData",
    "ingest_source",
    "latest_ingests",
]
