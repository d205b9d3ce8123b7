"""Recreate the catalog from the workspace files (`dpop catalog rebuild`).

The catalog holds nothing the workspace files do not also hold: every stage leaves a record on disk
beside its output. So a truncated or corrupt `catalog.duckdb` is rebuilt by replaying those records,
oldest first, with the same inserts and updates the stages made, and `created_at` set to when each
record was written. The old file is kept as `catalog.duckdb.corrupt-<UTC time>`; the new one is
written under a temporary name and renamed over the old one, under the catalog's lock, so a reader
sees either file, never half of one.

Records read:

- `<folder>/stage.json` (`pipeline.stage.StageRecord`): replayed through
  `pipeline.publish.record_in_catalog`, exactly what the stage runner published;
- for folders without a stage.json, the records of stages that predate it:
  `sources/<ingest_id>/ingest.json`, `datasets/<id>/manifest.json` (a built version, or a derived
  one such as reference log-probs: a dataset parent), `runs/<run_id>/run.json`,
  `models/<name>/sft.json` (SFT warm-ups; the tiny demo models are recorded as their base).

What those older records do not hold is lost: a built dataset's `code_version` in its catalog meta and
an SFT model's extra parents (the `sft_on` dataset, given to the catalog only).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from pipeline.atomic import TMP_PREFIX, atomic_file
from pipeline.catalog import SCHEMA, Catalog, CatalogBatch
from pipeline.identity import tree_sha256
from pipeline.workspace import Workspace

STAGE_RECORD = "stage.json"


@dataclass(frozen=True)
class RebuildResult:
    path: Path
    moved_aside: Path | None  # the old file, kept; None when there was none
    records: int  # on-disk records replayed
    artifacts: int
    edges: int
    skipped: list[str] = field(default_factory=list)  # "path: why" for records that could not be read


@dataclass(frozen=True)
class Replay:
    """One on-disk record: when it was written, where, and how it writes its catalog rows."""

    at: datetime
    source: Path
    write: Callable[[CatalogBatch], None]


class _Unreadable(ValueError):
    pass


def rebuild_catalog(workspace: Workspace | str | os.PathLike[str]) -> RebuildResult:
    """Recreate `<ws>/catalog.duckdb` from the records on disk (see the module docstring)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    replays, skipped = collect_records(ws)
    catalog = Catalog(ws)
    with catalog.exclusive(), atomic_file(ws.catalog_path) as tmp:
        try:
            artifacts, edges = _write(tmp, replays)
            aside = _move_aside(ws.catalog_path)
        finally:
            Path(f"{tmp}.wal").unlink(missing_ok=True)
    return RebuildResult(ws.catalog_path, aside, len(replays), artifacts, edges, skipped)


def collect_records(ws: Workspace) -> tuple[list[Replay], list[str]]:
    """Every record the workspace holds, oldest first, and `path: why` for those that cannot be read."""
    replays: list[Replay] = []
    skipped: list[str] = []
    readers: list[tuple[Iterator[Path], Callable[[Path], Replay]]] = [
        (_stage_records(ws), lambda path: _stage_replay(ws, path)),
        (_legacy(ws.sources_dir, "ingest.json"), _ingest_replay),
        (_legacy(ws.datasets_dir, "manifest.json"), _dataset_replay),
        (_legacy(ws.runs_dir, "run.json"), _run_replay),
    ]
    known_models = _known_model_ids(ws)
    readers.append((_legacy(ws.models_dir, "sft.json"), lambda path: _sft_replay(ws, path, known_models)))
    for paths, read in readers:
        for path in paths:
            try:
                replays.append(read(path))
            except (_Unreadable, OSError, KeyError, TypeError, ValueError) as error:
                skipped.append(f"{path}: {_why(error)}")
    replays += _registry_replays(ws, skipped)
    replays.sort(key=lambda r: (r.at, str(r.source)))
    return replays, skipped


def _registry_replays(ws: Workspace, skipped: list[str]) -> list[Replay]:
    """The model registry's events (`<ws>/registry.jsonl`, pipeline.registry): user decisions that no
    stage record holds, replayed into `registry_events`."""
    from pipeline.registry import REGISTRY_FILE, RegistryError, insert_event, read_events

    path = ws.root / REGISTRY_FILE
    try:
        events = list(read_events(path))
    except RegistryError as error:
        skipped.append(str(error))
        return []
    return [
        Replay(datetime.fromisoformat(e.at), path, lambda batch, e=e: insert_event(batch, e)) for e in events
    ]


def _why(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"missing field {error.args[0]!r}"
    return str(error) or type(error).__name__


# --- where the records are ---------------------------------------------------------------------------


def _stage_records(ws: Workspace) -> Iterator[Path]:
    for path in sorted(ws.root.rglob(STAGE_RECORD)):
        if not any(part.startswith(TMP_PREFIX) for part in path.relative_to(ws.root).parts):
            yield path


def _legacy(folder: Path, name: str) -> Iterator[Path]:
    """`<folder>/*/<name>` of finished folders that have no stage record (it covers them)."""
    if not folder.is_dir():
        return
    for path in sorted(folder.glob(f"*/{name}")):
        if not path.parent.name.startswith(TMP_PREFIX) and not (path.parent / STAGE_RECORD).exists():
            yield path


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise _Unreadable(f"not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise _Unreadable("not a JSON object")
    return data


def _written_at(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)


def _parse_time(text: Any, path: Path) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(text))
    except ValueError:
        return _written_at(path)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# --- stage records -----------------------------------------------------------------------------------


def _stage_replay(ws: Workspace, path: Path) -> Replay:
    from pipeline.publish import record_in_catalog
    from pipeline.stage import read_record

    record = read_record(path.parent)
    if record is None:
        raise _Unreadable("not a readable stage record")
    return Replay(
        _parse_time(record.finished_at, path), path, lambda batch: record_in_catalog(ws, record, batch)
    )


# --- records of stages that predate stage.json (each mirrors what that stage recorded) --------------


def _ingest_replay(path: Path) -> Replay:
    record = _load(path)
    folder = path.parent
    ingest_id = record.get("ingest_id", folder.name)
    sha, uri, fmt = record["source_sha256"], record["source_uri"], record["format"]
    common = {"ingest_id": ingest_id, "format": fmt, "source_uri": uri}

    def write(batch: CatalogBatch) -> None:
        batch.record_artifact(
            sha,
            "source_file",
            uri=uri,
            rows=record["rows_read"],
            meta={
                "uri": uri,
                "size": record.get("source_size"),
                "format": fmt,
                "name": record.get("source_name"),
            },
        )
        batch.record_artifact(
            f"pairs-{ingest_id}",
            "pairs",
            uri=(folder / record.get("pairs_path", "pairs.parquet")).as_uri(),
            rows=record.get("pairs_written"),
            meta=common | {"rows_read": record["rows_read"], "rows_kept": record.get("rows_kept")},
            parents={sha: "ingested_from"},
        )
        batch.record_artifact(
            f"rejections-{ingest_id}",
            "rejections",
            uri=(folder / record.get("rejections_path", "rejections.parquet")).as_uri(),
            rows=record.get("rows_rejected"),
            meta=common | {"rejected_by_reason": record.get("rejected_by_reason") or {}},
            parents={sha: "ingested_from"},
        )

    return Replay(_parse_time(record.get("finished_at"), path), path, write)


def _dataset_replay(path: Path) -> Replay:
    manifest = _load(path)
    folder = path.parent
    dataset_id = manifest.get("dataset_id", folder.name)
    parents = {p["id"]: p["relation"] for p in manifest.get("parents") or []}
    derived = any(p.get("kind") == "dataset" for p in manifest.get("parents") or [])
    splits = manifest.get("splits") or {}
    shards = [(split, info) for split, part in splits.items() for info in part.get("shards", [])]
    rows = sum(part.get("rows", 0) for part in splits.values())
    reference = manifest.get("reference_model") or {}
    if derived:  # reference log-probs (dpop refs): the model is recorded first, shards without meta
        meta: dict[str, Any] = {"reference_model": reference.get("id")}
        if reference.get("dtype"):  # recorded since references have a fixed precision
            meta["dtype"] = reference["dtype"]
    else:  # a build
        meta = {
            "funnel": manifest.get("funnel"),
            "train_rows": (splits.get("train") or {}).get("rows"),
            "eval_rows": (splits.get("eval") or {}).get("rows"),
            "tokenizer_sha256": (manifest.get("tokenizer") or {}).get("sha256"),
            "config": manifest.get("config"),
        }

    def write(batch: CatalogBatch) -> None:
        if derived and reference.get("id") and reference.get("path"):
            _record_model(batch, reference["id"], reference["path"], "reference")
        batch.record_artifact(dataset_id, "dataset", uri=str(folder), rows=rows, meta=meta, parents=parents)
        for split, info in shards:
            shard_meta = (
                {}
                if derived
                else {
                    "dataset_id": dataset_id,
                    "split": split,
                    "file": info["file"],
                    "bytes": info.get("bytes"),
                }
            )
            batch.record_artifact(
                info["sha256"],
                "shard",
                uri=str(folder / info["file"]),
                rows=info.get("rows"),
                meta=shard_meta,
                parents={dataset_id: "part_of"},
            )

    return Replay(_written_at(path), path, write)


def _record_model(batch: CatalogBatch, model_id: str, path: str, role: str) -> None:
    """What `dpop.model_io.record_model` records for a base or reference model folder."""
    resolved = str(Path(path).resolve())
    batch.record_artifact(model_id, "model", uri=resolved, meta={"role": role, "path": resolved})


def _run_replay(path: Path) -> Replay:
    record = _load(path)
    folder = path.parent
    run_id = record.get("run_id", folder.name)
    base = record["base_model"]
    reference = record.get("reference_model") or {}
    meta = {key: record[key] for key in ("loss", "finetuning", "code_version") if key in record}

    def write(batch: CatalogBatch) -> None:
        _record_model(batch, base["id"], base["path"], "base")
        batch.record_artifact(
            run_id,
            "run",
            uri=str(folder),
            meta=meta,
            parents={record["dataset_id"]: "trained_on", base["id"]: "base_model"},
        )
        if reference.get("id"):
            batch.record_edge(reference["id"], run_id, "reference_model")
        batch.record_artifact(
            f"model-{run_id}",
            "model",
            uri=record.get("model_dir") or str(folder / "model"),
            meta={"role": "trained", "adapter": record.get("finetuning") == "lora", "base_model": base["id"]},
            parents={run_id: "produced"},
        )

    return Replay(_written_at(path), path, write)


def _sft_replay(ws: Workspace, path: Path, known_models: dict[str, str]) -> Replay:
    record = _load(path)
    folder = path.parent
    base_id = record["base_model_id"]
    base = _base_folder(ws, record["base_model"], base_id, known_models)
    out_id = known_models.get(str(folder.resolve())) or model_id(folder)
    parents = {base_id: "sft_from", **(record.get("parents") or {})}

    def write(batch: CatalogBatch) -> None:
        # The SFT stage recorded its base only when the catalog did not know it yet.
        batch.ensure_artifact(base_id, "model", uri=base.as_uri(), meta={"name": base.name})
        batch.record_artifact(
            out_id,
            "model",
            uri=folder.as_uri(),
            meta={"name": folder.name, "made_by": "sft", "sft": record},
            parents=parents,
        )

    return Replay(_written_at(path), path, write)


def _base_folder(ws: Workspace, named: str, base_id: str, known_models: dict[str, str]) -> Path:
    """sft.json names its base by path (older) or by folder name (a model under `<ws>/models/`)."""
    given = Path(named)
    if given.is_absolute():
        return given
    if (ws.models_dir / given).is_dir():
        return ws.models_dir / given
    for folder, known_id in known_models.items():
        if known_id == base_id:
            return Path(folder)
    return given.resolve()


def model_id(folder: Path) -> str:
    """`dpop.model_io.model_id`'s rule (pipeline cannot import dpop): `model-<tree_sha256[:16]>`."""
    return f"model-{tree_sha256(folder)[:16]}"


def _known_model_ids(ws: Workspace) -> dict[str, str]:
    """{resolved folder: model id} from run.json and manifests, so a model folder is hashed only when
    no record names it."""
    known: dict[str, str] = {}
    named = [(p, "base_model") for p in _legacy(ws.runs_dir, "run.json")]
    named += [(p, "reference_model") for p in _legacy(ws.runs_dir, "run.json")]
    named += [(p, "reference_model") for p in _legacy(ws.datasets_dir, "manifest.json")]
    for path, key in named:
        try:
            model = _load(path).get(key) or {}
        except (_Unreadable, OSError):
            continue
        if isinstance(model, dict) and model.get("id") and model.get("path"):
            known[str(Path(model["path"]).resolve())] = model["id"]
    return known


# --- writing -----------------------------------------------------------------------------------------


def _write(path: Path, replays: list[Replay]) -> tuple[int, int]:
    """Replay every record into a new DuckDB file at `path`; (artefacts, edges)."""
    connection = duckdb.connect(str(path))
    try:
        connection.execute(SCHEMA)
        connection.execute("BEGIN TRANSACTION")
        batch = CatalogBatch(connection)
        for replay in replays:
            batch.recorded_at = replay.at
            replay.write(batch)
        connection.execute("COMMIT")
        connection.execute("CHECKPOINT")  # everything in the file itself, no write-ahead log beside it
        artifacts = connection.execute("SELECT count(*) FROM artifacts").fetchone()[0]
        edges = connection.execute("SELECT count(*) FROM edges").fetchone()[0]
    finally:
        connection.close()
    return artifacts, edges


def _move_aside(path: Path) -> Path | None:
    """Keep the old catalog (and its write-ahead log) as `<name>.corrupt-<UTC time>`; the old file stays
    in place until the new one is renamed over it."""
    if not path.exists():
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.link(path, aside)
    except OSError:  # a file system without hard links
        shutil.copy2(path, aside)
    wal = path.with_name(f"{path.name}.wal")
    if wal.exists():  # it belongs to the old file: DuckDB would replay it into the new one
        os.replace(wal, aside.with_name(f"{aside.name}.wal"))
    return aside
