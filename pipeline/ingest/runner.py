"""Ingest: source files to canonical `pairs` and `rejections` Parquet tables in the workspace.

Per source file version (sha256) and options, one folder `<ws>/sources/<ingest_id>/` holds
`pairs.parquet`, `rejections.parquet` and `ingest.json`. The folder is written under a temporary
name and renamed when complete, so a reader never sees half an ingest; an unchanged file ingested
again with the same options is not re-read. Records stream through in batches, so memory stays
bounded by the batch size (JSON arrays excepted: see readers.py).

Conservation, per source: every record read either yields at least one pair or is rejected once
with a reason code (`model_solutions` records can yield several pairs, all with the same
`source_row`). It is checked before anything is published.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_dir, write_text_atomic
from pipeline.catalog import Catalog
from pipeline.contracts import load_contract
from pipeline.identity import pair_id, stable_hash
from pipeline.ingest.detect import detect_format
from pipeline.ingest.fields import Limits, Reject
from pipeline.ingest.formats import FORMATS
from pipeline.ingest.readers import (
    IngestError,
    NotPreferenceData,
    RawRecord,
    Source,
    SourceChanged,
    expand_folder,
    file_source,
    hub_sources,
    iter_records,
    looks_like_hub_name,
)
from pipeline.version import code_version
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)

# Bump when parsing rules change, so ingests made by older rules are not reused.
# 2: non-finite scores, duplicate keys/columns, too-deep records, simultaneous --map renames.
INGEST_VERSION = 2
PAIR_COLUMNS = [
    "pair_id",
    "prompt",
    "chosen",
    "rejected",
    "chosen_score",
    "rejected_score",
    "source",
    "source_uri",
    "source_row",
    "source_sha256",
]
REJECTION_COLUMNS = [
    "source_uri",
    "source_row",
    "source_sha256",
    "pair_id",
    "stage",
    "reason",
    "detail",
    "raw",
]
LATEST_DIR = "latest"


@dataclass(frozen=True)
class IngestOptions:
    """Options that change what an ingest produces (all but `batch_rows` are part of its id)."""

    column_map: dict[str, str] = field(default_factory=dict)  # canonical name -> source field name
    max_field_chars: int = 100_000  # a text field longer than this is rejected as field_too_large
    max_raw_chars: int = 4_096  # bound on the raw record kept with a rejection
    batch_rows: int = 5_000  # records per Parquet write; bounds memory

    def __post_init__(self) -> None:
        for name, least in (("max_field_chars", 1), ("max_raw_chars", 0), ("batch_rows", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"IngestOptions.{name} must be an integer >= {least}, not {value!r}")
        targets = Counter(self.column_map.values())
        if any(count > 1 for count in targets.values()):
            column = targets.most_common(1)[0][0]
            raise ValueError(f"column map: column {column!r} is mapped to more than one name")

    def identity(self) -> dict[str, Any]:
        return {
            "column_map": dict(sorted(self.column_map.items())),
            "max_field_chars": self.max_field_chars,
            "max_raw_chars": self.max_raw_chars,
        }


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


Note = Callable[[str], None]


def ingest_source(
    source: str | Path,
    workspace: Workspace | str | Path,
    fmt: str | None = None,
    name: str | None = None,
    options: IngestOptions | None = None,
    on_note: Note | None = None,
) -> list[IngestResult]:
    """Ingest a file, a folder of files, a save_to_disk folder or a Hugging Face dataset name.

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
        if isinstance(item, Path):  # a folder entry, identified lazily so one bad file is skipped
            try:
                item = file_source(item)
            except NotPreferenceData as error:
                note(f"skipped {error}")
                continue
        try:
            results.append(_ingest_checked(item, ws, fmt, name, options, note))
        except NotPreferenceData as error:
            if named:
                raise
            note(f"skipped {error}")
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


def _ingest_checked(
    source: Source, ws: Workspace, fmt: str | None, name: str | None, options: IngestOptions, note: Note
) -> IngestResult:
    """`_ingest_one`, and once more when the file changed while it was read (e.g. a writer that was
    finishing): identified anew, so the rows and their `source_sha256` are of one version. A file
    that changes again fails with SourceChanged naming it."""
    try:
        return _ingest_one(source, ws, fmt, name, options)
    except SourceChanged:
        if source.path is None:
            raise
        note(f"{source.describe()} changed while it was read; reading it again")
        return _ingest_one(file_source(source.path), ws, fmt, name, options)


def _before_read(source: Source) -> None:
    """Runs between a source's identification (its sha256, hence the ingest id) and its reading.
    Does nothing: a seam where tests change the file at exactly that moment."""


def _ingest_one(
    source: Source, ws: Workspace, fmt: str | None, name: str | None, options: IngestOptions
) -> IngestResult:
    pair_contract = load_contract("preference_pair")
    rejection_contract = load_contract("rejection")
    ingest_id = stable_hash(
        {
            "source_sha256": source.sha256,
            # The URI too: every pair row names the file it came from, so a copy elsewhere is its own ingest.
            "source_uri": source.uri,
            "format": fmt or "auto",  # the format asked for: detection needs no read on a cache hit
            "name": name,
            "options": options.identity(),
            "contracts": [pair_contract.version, rejection_contract.version],
            "ingest_version": INGEST_VERSION,
        }
    )
    final = ws.sources_dir / ingest_id
    previous = _load_result(final)
    if previous is not None:
        result = replace(previous, reused=True)
    else:
        _before_read(source)
        records = iter_records(source, options.max_field_chars)
        detected = fmt or detect_format(_mapped(records, options), source.describe())
        result = _write_ingest(source, final, ingest_id, detected, name or source.stem, options)
    _record(ws, source, result)
    _point_latest(ws, result)
    return result


def _mapped(records: Iterable[RawRecord], options: IngestOptions) -> Iterator[RawRecord]:
    """Apply the column map (canonical <- source name) to object records. All renames take effect
    at once, so `chosen=rejected,rejected=chosen` swaps the two columns."""
    if not options.column_map:
        yield from records
        return
    for record in records:
        if isinstance(record.value, dict):
            value = dict(record.value)
            moved = {new: value[old] for new, old in options.column_map.items() if old in value}
            for old in options.column_map.values():
                value.pop(old, None)
            value.update(moved)
            record = replace(record, value=value)
        yield record


def _parse(record: RawRecord, parse: Callable[..., list], limits: Limits) -> list:
    """A record's candidate pairs; raises Reject for anything that keeps it from being a pair."""
    if record.error is not None:
        raise Reject(*record.error)
    if not isinstance(record.value, dict):
        raise Reject("not_an_object", f"record is {type(record.value).__name__}, not an object")
    try:
        return parse(record.value, limits)
    except RecursionError:  # a value nested too deep for some step of parsing: this record only
        raise Reject("too_deep", "nested too deep to parse") from None


def _batches(records: Iterable[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    batch: list[RawRecord] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _clean(text: str, limit: int | None = None) -> str:
    """Text safe for Arrow (lone surrogates replaced), cut to `limit` characters."""
    if limit is not None:
        text = text[:limit]
    return text.encode("utf-8", "replace").decode("utf-8")


def _write_ingest(
    source: Source, final: Path, ingest_id: str, fmt: str, source_name: str, options: IngestOptions
) -> IngestResult:
    parse = FORMATS[fmt]
    limits = Limits(options.max_field_chars)
    pair_contract = load_contract("preference_pair")
    rejection_contract = load_contract("rejection")
    source_label = f"{source_name}:{fmt}"
    counts = Counter()
    reasons: Counter[str] = Counter()
    with atomic_dir(final) as tmp:
        pair_schema = pair_contract.schema(PAIR_COLUMNS)
        rejection_schema = rejection_contract.schema(REJECTION_COLUMNS)
        with (
            pq.ParquetWriter(tmp / "pairs.parquet", pair_schema) as pair_writer,
            pq.ParquetWriter(tmp / "rejections.parquet", rejection_schema) as rejection_writer,
        ):
            records = iter_records(source, options.max_field_chars)
            for batch in _batches(_mapped(records, options), options.batch_rows):
                pair_rows, rejection_rows = [], []
                for record in batch:
                    counts["read"] += 1
                    try:
                        candidates = _parse(record, parse, limits)
                    except Reject as reject:
                        counts["rejected"] += 1
                        reasons[reject.reason] += 1
                        rejection_rows.append(
                            {
                                "source_uri": source.uri,
                                "source_row": record.row,
                                "source_sha256": source.sha256,
                                "pair_id": None,
                                "stage": "ingest",
                                "reason": reject.reason,
                                "detail": _clean(f"row {record.row}: {reject.detail}", 1_000),
                                "raw": _clean(record.raw, options.max_raw_chars),
                            }
                        )
                        continue
                    counts["kept"] += 1
                    for candidate in candidates:
                        pair_rows.append(
                            {
                                "pair_id": pair_id(candidate.prompt, candidate.chosen, candidate.rejected),
                                "prompt": candidate.prompt,
                                "chosen": candidate.chosen,
                                "rejected": candidate.rejected,
                                "chosen_score": candidate.chosen_score,
                                "rejected_score": candidate.rejected_score,
                                "source": source_label,
                                "source_uri": source.uri,
                                "source_row": record.row,
                                "source_sha256": source.sha256,
                            }
                        )
                counts["pairs"] += len(pair_rows)
                if pair_rows:
                    table = pa.Table.from_pylist(pair_rows, schema=pair_schema)
                    pair_writer.write_table(pair_contract.conform(table))
                if rejection_rows:
                    table = pa.Table.from_pylist(rejection_rows, schema=rejection_schema)
                    rejection_writer.write_table(rejection_contract.conform(table))
        if not counts["read"]:
            raise NotPreferenceData(f"{source.describe()}: no records")
        result = IngestResult(
            ingest_id=ingest_id,
            source_uri=source.uri,
            source_sha256=source.sha256,
            source_name=source_name,
            format=fmt,
            pairs_path=final / "pairs.parquet",
            rejections_path=final / "rejections.parquet",
            rows_read=counts["read"],
            rows_kept=counts["kept"],
            rows_rejected=counts["rejected"],
            rejected_by_reason=dict(sorted(reasons.items())),
            reused=False,
            pairs_written=counts["pairs"],
        )
        check_conservation(result, tmp / "pairs.parquet", tmp / "rejections.parquet")
        manifest = _result_json(result) | {
            "options": options.identity(),
            "source_kind": source.kind,
            "source_size": source.size,
            "contracts": {"preference_pair": pair_contract.version, "rejection": rejection_contract.version},
            "ingest_version": INGEST_VERSION,
            "code_version": code_version(),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "complete": True,
        }
        (tmp / "ingest.json").write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return result


def check_conservation(result: IngestResult, pairs_path: Path, rejections_path: Path) -> None:
    """Rows read = records kept + records rejected, and the files hold exactly what was counted."""
    pair_rows = pq.read_metadata(pairs_path).num_rows
    rejection_rows = pq.read_metadata(rejections_path).num_rows
    problems = []
    if result.rows_read != result.rows_kept + result.rows_rejected:
        problems.append(
            f"read {result.rows_read} != kept {result.rows_kept} + rejected {result.rows_rejected}"
        )
    if (
        rejection_rows != result.rows_rejected
        or sum(result.rejected_by_reason.values()) != result.rows_rejected
    ):
        problems.append(f"{rejection_rows} rejection rows for {result.rows_rejected} rejected records")
    if pair_rows != result.pairs_written or pair_rows < result.rows_kept:
        problems.append(
            f"{pair_rows} pair rows for {result.rows_kept} kept records ({result.pairs_written} written)"
        )
    distinct = _distinct_sorted_rows(pairs_path)
    if distinct != result.rows_kept:
        problems.append(f"{distinct} distinct source rows among pairs for {result.rows_kept} kept records")
    if problems:
        raise RuntimeError(f"{result.source_uri}: conservation check failed: {'; '.join(problems)}")


def _distinct_sorted_rows(pairs_path: Path) -> int:
    """Distinct `source_row`s in a pairs file, one row group at a time (pairs are written in row
    order, so equal rows are adjacent); -1 when rows are out of order, which the caller reports."""
    distinct, previous = 0, -1
    parquet = pq.ParquetFile(pairs_path)
    for group in range(parquet.num_row_groups):
        rows = parquet.read_row_group(group, columns=["source_row"]).column(0).to_numpy()
        if len(rows) == 0:
            continue
        steps = np.diff(rows, prepend=previous)
        if (steps < 0).any():
            return -1
        distinct += int(np.count_nonzero(steps))
        previous = int(rows[-1])
    return distinct


# --- ingest.json, latest pointers, catalog ------------------------------------------------------


def _result_json(result: IngestResult) -> dict[str, Any]:
    data = asdict(result)
    data["pairs_path"] = result.pairs_path.name  # relative: the workspace may move
    data["rejections_path"] = result.rejections_path.name
    data.pop("reused")
    return data


def _load_result(folder: Path) -> IngestResult | None:
    """The result recorded in a complete ingest folder, or None."""
    manifest_path = folder / "ingest.json"
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    if not data.get("complete") or not all(
        (folder / data.get(k, "")).is_file() for k in ("pairs_path", "rejections_path")
    ):
        return None
    known = {f.name for f in fields(IngestResult)}
    values = {k: v for k, v in data.items() if k in known}
    values["pairs_path"] = folder / data["pairs_path"]
    values["rejections_path"] = folder / data["rejections_path"]
    return IngestResult(**values, reused=False)


def _point_latest(ws: Workspace, result: IngestResult) -> None:
    # One small pointer file per source URI, rewritten atomically on every ingest (reused or not),
    # so "latest" follows what the user last ingested even when an older folder is reused.
    pointer = ws.sources_dir / LATEST_DIR / f"{stable_hash(result.source_uri)}.json"
    payload = {"source_uri": result.source_uri, "ingest_id": result.ingest_id}
    write_text_atomic(pointer, json.dumps(payload) + "\n")


def latest_ingests(workspace: Workspace | str | Path) -> list[IngestResult]:
    """Per source URI, its most recent ingest (sorted by URI)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    results = []
    for pointer in sorted((ws.sources_dir / LATEST_DIR).glob("*.json")):
        try:
            payload = json.loads(pointer.read_text(encoding="utf-8"))
        except ValueError:
            continue
        result = _load_result(ws.sources_dir / payload["ingest_id"])
        if result is not None:
            results.append(result)
    return sorted(results, key=lambda r: r.source_uri)


def _record(ws: Workspace, source: Source, result: IngestResult) -> None:
    common = {"ingest_id": result.ingest_id, "format": result.format, "source_uri": source.uri}
    with Catalog(ws).batch() as catalog:
        catalog.record_artifact(
            source.sha256,
            "source_file",
            uri=source.uri,
            rows=result.rows_read,
            meta={
                "uri": source.uri,
                "size": source.size,
                "format": result.format,
                "name": result.source_name,
            },
        )
        catalog.record_artifact(
            f"pairs-{result.ingest_id}",
            "pairs",
            uri=result.pairs_path.as_uri(),
            rows=result.pairs_written,
            meta=common | {"rows_read": result.rows_read, "rows_kept": result.rows_kept},
            parents={source.sha256: "ingested_from"},
        )
        catalog.record_artifact(
            f"rejections-{result.ingest_id}",
            "rejections",
            uri=result.rejections_path.as_uri(),
            rows=result.rows_rejected,
            meta=common | {"rejected_by_reason": result.rejected_by_reason},
            parents={source.sha256: "ingested_from"},
        )


__all__ = [
    "IngestError",
    "IngestOptions",
    "IngestResult",
    "NotPreferenceData",
    "ingest_source",
    "latest_ingests",
]
