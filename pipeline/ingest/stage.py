"""`IngestStage`: one source file version to canonical `pairs` and `rejections` Parquet tables.

Its input is the source file (id: the sha256 of its bytes); its config the source's URI (every pair row
names the file it came from, so the same bytes elsewhere are their own ingest), the format asked for
(`auto`: detected when it runs, so a finished ingest is found without reading the file), the name, the
options and the contract and parsing-rule versions. Its id is `ing-<hash>` of those, its folder
`<ws>/sources/<id>/` with `pairs.parquet`, `rejections.parquet`, `ingest.json` (the ingest described for
readers such as the SQL views) and the stage record, written by the runner under a temporary name and
renamed when complete. Records stream through in batches, so memory stays bounded by the batch size
(JSON arrays excepted: see readers.py).

Every byte read is hashed as it is read (readers.py): if the file changed after it was identified, the
rows would not be of the version the id names, so the read fails with `SourceChanged` and nothing is
published (`ingest_source` identifies the file anew and reads it once more).

Conservation, per source: every record read either yields at least one pair or is rejected once with a
reason code (`model_solutions` records can yield several pairs, all with the same `source_row`). It is
checked before anything is published.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.contracts import load_contract
from pipeline.identity import pair_id
from pipeline.ingest.detect import detect_format
from pipeline.ingest.fields import Limits, Reject
from pipeline.ingest.formats import FORMATS
from pipeline.ingest.readers import NotPreferenceData, RawRecord, Source, file_source, iter_records
from pipeline.stage import Artifact, Input, Stage, StageContext, StageOutput
from pipeline.version import code_version
from pipeline.workspace import Workspace

# Bump when parsing rules change, so ingests made by older rules are not reused.
# 2: non-finite scores, duplicate keys/columns, too-deep records, simultaneous --map renames.
INGEST_VERSION = 2
PAIRS_FILE = "pairs.parquet"
REJECTIONS_FILE = "rejections.parquet"
INGEST_FILE = "ingest.json"
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


def _before_read(source: Source) -> None:
    """Runs between a source's identification (its sha256, hence the ingest id) and its reading.
    Does nothing: a seam where tests change the file at exactly that moment."""


@dataclass(frozen=True)
class IngestStage(Stage):
    """Ingest one source (a `Source`, or the path of a file or save_to_disk folder) in format `fmt`
    (None: detected), named `name` (None: the file's stem), with `options`."""

    name = "ingest"
    id_prefix = "ing"
    placement = "data"

    source: Source | Path | str
    fmt: str | None = None
    source_name: str | None = None
    options: IngestOptions = field(default_factory=IngestOptions)

    def __post_init__(self) -> None:
        if self.fmt is not None and self.fmt not in FORMATS:
            raise ValueError(f"unknown format {self.fmt!r}; known: {', '.join(FORMATS)}")
        if not isinstance(self.source, Source):  # identified now: the id is the sha256 of these bytes
            object.__setattr__(self, "source", file_source(Path(self.source)))
        object.__setattr__(self, "options", self.options or IngestOptions())

    @property
    def resolved_name(self) -> str:
        return self.source_name or self.source.stem

    def inputs(self) -> list[Input]:
        source = self.source
        path = str(source.path) if source.path is not None else None
        meta = {"uri": source.uri, "size": source.size, "name": self.resolved_name}
        return [Input(Artifact(source.sha256, "source_file", path, meta=meta), "ingested_from")]

    @cached_property
    def _config(self) -> dict[str, Any]:
        return {
            "source_uri": self.source.uri,
            "format": self.fmt or "auto",  # the format asked for: detection needs no read on a reuse
            "name": self.source_name,
            "options": self.options.identity(),
            "contracts": [load_contract("preference_pair").version, load_contract("rejection").version],
            "ingest_version": INGEST_VERSION,
        }

    def config(self) -> dict[str, Any]:
        return self._config

    def folder(self, ws: Workspace) -> Path:
        return ws.sources_dir / self.id

    def label(self) -> str:
        return f"ingest {Path(self.source.describe()).name}"

    def run(self, ctx: StageContext) -> StageOutput:
        _before_read(self.source)
        fmt = self.fmt or detect_format(
            _mapped(iter_records(self.source, self.options.max_field_chars), self.options),
            self.source.describe(),
        )
        counts, reasons = _write_tables(
            self.source,
            ctx.out,
            fmt,
            self.resolved_name,
            self.options,
            lambda read: ctx.progress(read, None, f"format {fmt}"),
        )
        check_conservation(self.source.uri, counts, reasons, ctx.out / PAIRS_FILE, ctx.out / REJECTIONS_FILE)
        _write_description(ctx.out, self, fmt, counts, reasons)
        return self._output(ctx, fmt, counts, reasons)

    def _output(
        self, ctx: StageContext, fmt: str, counts: Counter[str], reasons: dict[str, int]
    ) -> StageOutput:
        common = {"ingest_id": self.id, "format": fmt, "source_uri": self.source.uri}
        pairs = Artifact(
            f"pairs-{self.id}",
            "pairs",
            ctx.path(PAIRS_FILE),
            rows=counts["pairs"],
            contract="preference_pair",
            meta=common | {"rows_read": counts["read"], "rows_kept": counts["kept"]},
        )
        rejections = Artifact(
            f"rejections-{self.id}",
            "rejections",
            ctx.path(REJECTIONS_FILE),
            rows=counts["rejected"],
            contract="rejection",
            meta=common | {"rejected_by_reason": reasons},
        )
        return StageOutput(
            outputs=[pairs, rejections],
            counts={
                "rows_read": counts["read"],
                "rows_kept": counts["kept"],
                "rows_rejected": counts["rejected"],
                "pairs_written": counts["pairs"],
            },
            rejected_by_reason=reasons,
            summary={"format": fmt, "source_uri": self.source.uri, "source_name": self.resolved_name},
        )


# --- reading and writing ----------------------------------------------------------------------------


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


@dataclass
class _Rows:
    """One batch's pair and rejection rows, built record by record."""

    source: Source
    label: str
    options: IngestOptions
    pairs: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, record: RawRecord, reject: Reject) -> None:
        self.rejections.append(
            {
                "source_uri": self.source.uri,
                "source_row": record.row,
                "source_sha256": self.source.sha256,
                "pair_id": None,
                "stage": "ingest",
                "reason": reject.reason,
                "detail": _clean(f"row {record.row}: {reject.detail}", 1_000),
                "raw": _clean(record.raw, self.options.max_raw_chars),
            }
        )

    def keep(self, record: RawRecord, candidates: list) -> None:
        for candidate in candidates:
            self.pairs.append(
                {
                    "pair_id": pair_id(candidate.prompt, candidate.chosen, candidate.rejected),
                    "prompt": candidate.prompt,
                    "chosen": candidate.chosen,
                    "rejected": candidate.rejected,
                    "chosen_score": candidate.chosen_score,
                    "rejected_score": candidate.rejected_score,
                    "source": self.label,
                    "source_uri": self.source.uri,
                    "source_row": record.row,
                    "source_sha256": self.source.sha256,
                }
            )


def _write_tables(
    source: Source,
    out: Path,
    fmt: str,
    source_name: str,
    options: IngestOptions,
    on_rows: Callable[[int], None] = lambda read: None,
) -> tuple[Counter[str], dict[str, int]]:
    """Stream the source into `out`'s pairs and rejections files; returns the counts (read, kept,
    rejected, pairs) and the rejections by reason. `on_rows(rows read)` after each batch (progress)."""
    parse, limits = FORMATS[fmt], Limits(options.max_field_chars)
    pair_contract, rejection_contract = load_contract("preference_pair"), load_contract("rejection")
    pair_schema = pair_contract.schema(PAIR_COLUMNS)
    rejection_schema = rejection_contract.schema(REJECTION_COLUMNS)
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    with (
        pq.ParquetWriter(out / PAIRS_FILE, pair_schema) as pair_writer,
        pq.ParquetWriter(out / REJECTIONS_FILE, rejection_schema) as rejection_writer,
    ):
        records = iter_records(source, options.max_field_chars)
        for batch in _batches(_mapped(records, options), options.batch_rows):
            rows = _Rows(source, f"{source_name}:{fmt}", options)
            for record in batch:
                counts["read"] += 1
                try:
                    rows.keep(record, _parse(record, parse, limits))
                    counts["kept"] += 1
                except Reject as reject:
                    rows.reject(record, reject)
                    counts["rejected"] += 1
                    reasons[reject.reason] += 1
            counts["pairs"] += len(rows.pairs)
            if rows.pairs:
                pair_writer.write_table(
                    pair_contract.conform(pa.Table.from_pylist(rows.pairs, schema=pair_schema))
                )
            if rows.rejections:
                table = pa.Table.from_pylist(rows.rejections, schema=rejection_schema)
                rejection_writer.write_table(rejection_contract.conform(table))
            on_rows(counts["read"])
    if not counts["read"]:
        raise NotPreferenceData(f"{source.describe()}: no records")
    return counts, dict(sorted(reasons.items()))


def _write_description(
    out: Path, stage: IngestStage, fmt: str, counts: Counter[str], reasons: dict[str, int]
) -> None:
    """`ingest.json`: the ingest as readers outside the stage machinery read it (SQL views, lineage)."""
    source = stage.source
    description = {
        "ingest_id": stage.id,
        "source_uri": source.uri,
        "source_sha256": source.sha256,
        "source_name": stage.resolved_name,
        "format": fmt,
        "pairs_path": PAIRS_FILE,
        "rejections_path": REJECTIONS_FILE,
        "rows_read": counts["read"],
        "rows_kept": counts["kept"],
        "rows_rejected": counts["rejected"],
        "rejected_by_reason": reasons,
        "pairs_written": counts["pairs"],
        "options": stage.options.identity(),
        "source_kind": source.kind,
        "source_size": source.size,
        "contracts": dict(zip(("preference_pair", "rejection"), stage.config()["contracts"], strict=True)),
        "ingest_version": INGEST_VERSION,
        "code_version": code_version(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "complete": True,
    }
    (out / INGEST_FILE).write_text(
        json.dumps(description, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def check_conservation(
    source_uri: str, counts: Counter[str], reasons: dict[str, int], pairs_path: Path, rejections_path: Path
) -> None:
    """Rows read = records kept + records rejected, and the files hold exactly what was counted."""
    read, kept, rejected, written = counts["read"], counts["kept"], counts["rejected"], counts["pairs"]
    pair_rows = pq.read_metadata(pairs_path).num_rows
    rejection_rows = pq.read_metadata(rejections_path).num_rows
    problems = []
    if read != kept + rejected:
        problems.append(f"read {read} != kept {kept} + rejected {rejected}")
    if rejection_rows != rejected or sum(reasons.values()) != rejected:
        problems.append(f"{rejection_rows} rejection rows for {rejected} rejected records")
    if pair_rows != written or pair_rows < kept:
        problems.append(f"{pair_rows} pair rows for {kept} kept records ({written} written)")
    distinct = _distinct_sorted_rows(pairs_path)
    if distinct != kept:
        problems.append(f"{distinct} distinct source rows among pairs for {kept} kept records")
    if problems:
        raise RuntimeError(f"{source_uri}: conservation check failed: {'; '.join(problems)}")


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
