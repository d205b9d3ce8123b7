"""The per-partition parts of the build stage (`pipeline.build.BuildStage`), run by an executor.

A partition is a row range `[start, stop)` of one ingest's pairs file, at most `partition_rows` rows,
cut from the Parquet metadata alone; its rows' global input order is `offset + row index` (ingests in
the stage's order), the same numbering a single pass over every file would give. Two kinds of part
run per partition, each a top-level function of one small picklable `PartTask` (paths and the
config), so an executor may send them to other processes (Dask workers); they share nothing with the
driver but files in the stage's temporary folder (`parts/`), and load the tokenizer and the
decontamination index once per process:

- `score_part` (phase 1): score, row filters, prompt keys -> `pNNNNN.staged.arrow` (surviving pairs,
  scored), `pNNNNN.keys.arrow` (input order, pair id, prompt key: 40 bytes a pair, for the global
  filters the driver runs), `pNNNNN.rejected.arrow` (row-filter rejections) and the filter counts;
- `shard_part` (phase 2): drop the pairs the driver's global filters rejected (`pNNNNN.drops.arrow`),
  split by prompt hash, tokenise (rejecting `too_long`) -> `pNNNNN.pairs.arrow` (kept pairs),
  `pNNNNN.rejections.arrow` (every rejection of the partition, in input order) and the partition's
  shards `pNNNNN/{train,eval}-NNNNN.arrow`, which the driver renames into one global sequence.

Phase 1 reads its rows `batch_rows` at a time (memory); phase 2 always works in batches of
`SHARD_BATCH_ROWS` staged rows, so the files a build writes do not depend on `batch_rows`.
Intermediate files are uncompressed Arrow IPC: they are written and read once, on the same disk.

Both phases are pipelined, because the heavy kernels release the GIL while the rest is Python:
phase 1 scores batch k+1 (rapidfuzz, Polars, Arrow) on a worker thread while this thread filters,
keys and writes batch k; phase 2 queues batch k+1 on the tokenizer's encoder threads (Rust, every
core) while this thread finishes and writes batch k. Results are consumed in order, so the bytes are
those of a serial run.

`word_edit_distance` is scored only when a filter reads it (`needs_word_distance`); otherwise the
staged and kept pairs have no such column (the contract's score columns are optional).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.contracts import load_contract
from pipeline.curate.config import CurationConfig
from pipeline.curate.decontaminate import EvalNgrams
from pipeline.curate.filters import ORDER, PROMPT_KEY, Filter, FilterCount, build_filters, run_filters
from pipeline.curate.split import prompt_keys, split_expr
from pipeline.identity import file_sha256, stable_hash
from pipeline.score import SCORE_COLUMNS, score_pairs
from pipeline.shards import SPLITS, ShardInfo, SplitWriter
from pipeline.tokenize import PairTokenizer, PendingTokens

PARTS_DIR = "parts"
# Phase 2's batch: fixed, so the kept pairs' and shards' layout depends on the data and the
# partitions only (never on the memory knob `batch_rows`).
SHARD_BATCH_ROWS = 8192
_REJECTION_COLUMNS = (
    "source_uri",
    "source_row",
    "source_sha256",
    "pair_id",
    "stage",
    "reason",
    "detail",
    "raw",
)
_REJECTION_DTYPES = {
    "source_uri": pl.String,
    "source_row": pl.Int64,
    "source_sha256": pl.String,
    "pair_id": pl.String,
    "stage": pl.String,
    "reason": pl.String,
    "detail": pl.String,
    "raw": pl.String,
    ORDER: pl.Int64,
}
_DROPS_SCHEMA = {ORDER: pl.Int64, "reason": pl.String, "detail": pl.String}
WORD_DISTANCE = "word_edit_distance"
_NAMES_WORD_DISTANCE = re.compile(rf"\b{WORD_DISTANCE}\b", re.IGNORECASE)  # SQL names are case-blind


class IngestLike(Protocol):
    ingest_id: str
    source_uri: str
    pairs_path: Path


# --- partitions and tasks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """Rows `[start, stop)` of one pairs file; `offset` is the global input order of row `start`."""

    index: int
    ingest_id: str
    source_uri: str
    pairs_path: str
    start: int
    stop: int
    offset: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_partitions(ingests: Sequence[IngestLike], partition_rows: int) -> list[Partition]:
    """Each pairs file cut into consecutive row ranges of at most `partition_rows` rows, from the
    Parquet footers only: the same inputs give the same partitions whoever runs them."""
    if partition_rows < 1:
        raise ValueError(f"partition_rows must be positive, got {partition_rows}")
    partitions: list[Partition] = []
    offset = 0
    for item in ingests:
        rows = pq.read_metadata(item.pairs_path).num_rows
        for start in range(0, rows, partition_rows):
            stop = min(start + partition_rows, rows)
            partitions.append(
                Partition(
                    len(partitions),
                    item.ingest_id,
                    item.source_uri,
                    str(item.pairs_path),
                    start,
                    stop,
                    offset + start,
                )
            )
        offset += rows
    return partitions


@dataclass(frozen=True)
class PartSettings:
    """What every part of one build needs besides its partition (small and picklable)."""

    curation: CurationConfig
    tokenizer_path: str
    tokenizer_id: str  # content id: a process reuses a loaded tokenizer only for the same content
    decontaminate_sha256: str | None
    batch_rows: int


@dataclass(frozen=True)
class PartTask:
    partition: Partition
    parts_dir: str
    settings: PartSettings

    def path(self, what: str) -> Path:
        return Path(self.parts_dir) / f"p{self.partition.index:05d}.{what}.arrow"

    @property
    def shard_dir(self) -> Path:
        return Path(self.parts_dir) / f"p{self.partition.index:05d}"


@dataclass(frozen=True)
class ScoreResult:
    index: int
    rows_in: int
    counts: tuple[tuple[str, int, int], ...]  # (row filter name, rows in, dropped), in filter order


@dataclass(frozen=True)
class ShardResult:
    index: int
    tokenize_rows_in: int
    too_long: int
    split_rows: tuple[tuple[str, int], ...]
    shards: tuple[tuple[str, tuple[ShardInfo, ...]], ...]  # per split, the partition's shard files


# --- per-process state ------------------------------------------------------------------------------

_TOKENIZERS: dict[tuple[str, str, int, int], PairTokenizer] = {}
_EVAL_NGRAMS: dict[tuple[str, str, tuple[str, ...], int], EvalNgrams] = {}


def tokenizer_id(info: dict[str, Any]) -> str:
    """The content id of a tokenizer as the shards see it: tokenizer.json, the chat template and the
    EOS/PAD ids (tokenizer.json does not hold which token ends a response or pads)."""
    keys = ("sha256", "chat_template_sha256", "eos_token_id", "pad_token_id")
    return "tok-" + stable_hash({key: info[key] for key in keys})


def remember_tokenizer(tokenizer: PairTokenizer, content_id: str) -> None:
    """Let the parts run in this process reuse a tokenizer the driver has already loaded."""
    key = (str(tokenizer.path), content_id, tokenizer.max_length, tokenizer.max_prompt_length)
    _TOKENIZERS[key] = tokenizer


def part_tokenizer(settings: PartSettings) -> PairTokenizer:
    tokenize = settings.curation.tokenize
    key = (settings.tokenizer_path, settings.tokenizer_id, tokenize.max_length, tokenize.max_prompt_length)
    if key not in _TOKENIZERS:
        tokenizer = PairTokenizer(settings.tokenizer_path, tokenize.max_length, tokenize.max_prompt_length)
        if tokenizer_id(tokenizer.info()) != settings.tokenizer_id:
            raise ValueError(f"tokenizer {settings.tokenizer_path} changed while the build was running")
        _TOKENIZERS.clear()  # one build's tokenizer at a time per process
        _TOKENIZERS[key] = tokenizer
    return _TOKENIZERS[key]


def _eval_ngrams(settings: PartSettings) -> EvalNgrams:
    spec = settings.curation.filters.decontaminate
    key = (spec.file, settings.decontaminate_sha256, tuple(spec.fields), spec.n)
    if key not in _EVAL_NGRAMS:
        if file_sha256(spec.file) != settings.decontaminate_sha256:
            raise ValueError(f"decontamination file {spec.file} changed while the build was running")
        _EVAL_NGRAMS.clear()
        _EVAL_NGRAMS[key] = EvalNgrams(spec.file, spec.fields, spec.n)
    return _EVAL_NGRAMS[key]


def part_filters(settings: PartSettings) -> list[Filter]:
    """The configured filters, with the decontamination index of this process."""
    spec = settings.curation.filters.decontaminate
    mask = None
    if spec is not None:
        ngrams = _eval_ngrams(settings)

        def mask(frame: pl.DataFrame) -> pl.Series:
            return ngrams.pair_mask(frame, spec.check)

    return build_filters(settings.curation, mask)


# --- reading and writing ----------------------------------------------------------------------------


def rebatch(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The same rows in tables of exactly `rows` rows (the last may be shorter), each one contiguous,
    whatever the sizes of the tables that come in."""
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        if table.num_rows == 0:
            continue
        pending.append(table)
        count += table.num_rows
        while count >= rows:
            merged = pa.concat_tables(pending)
            yield merged.slice(0, rows).combine_chunks()
            rest = merged.slice(rows)
            pending, count = ([rest] if rest.num_rows else []), rest.num_rows
    if count:
        yield pa.concat_tables(pending).combine_chunks()


def read_rows(path: str | Path, start: int, stop: int, batch_rows: int) -> Iterator[pa.Table]:
    """Rows `[start, stop)` of a Parquet file in tables of `batch_rows` rows, reading only the row
    groups that hold them."""
    parquet = pq.ParquetFile(path)

    def pieces() -> Iterator[pa.Table]:
        first = 0
        for group in range(parquet.metadata.num_row_groups):
            last = first + parquet.metadata.row_group(group).num_rows
            if last > start and first < stop:
                table = parquet.read_row_group(group)
                low = max(start, first)
                yield table.slice(low - first, min(stop, last) - low)
            if last >= stop:
                return
            first = last

    yield from rebatch(pieces(), batch_rows)


def ipc_tables(path: Path) -> Iterator[pa.Table]:
    """The record batches of an Arrow IPC file, one table each (memory-mapped)."""
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        for index in range(reader.num_record_batches):
            yield pa.Table.from_batches([reader.get_batch(index)])


def write_ipc(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def needs_word_distance(curation: CurationConfig) -> bool:
    """Whether a filter of the config reads `word_edit_distance` (a user SQL filter names it): the
    build scores that costly column only then."""
    predicates = [user.drop_where or user.keep_where or "" for user in curation.filters.user]
    return any(_NAMES_WORD_DISTANCE.search(predicate) for predicate in predicates)


def pair_schema(word_distance: bool, split: bool = True) -> pa.Schema:
    """The kept pairs' schema: the `preference_pair` contract, without `word_edit_distance` when the
    build did not score it (and without `split` before the split)."""
    contract = load_contract("preference_pair")
    skip = set() if word_distance else {WORD_DISTANCE}
    if not split:
        skip.add("split")
    return contract.schema([c for c in contract.columns if c not in skip])


def _stage_schema(word_distance: bool) -> pa.Schema:
    schema = pair_schema(word_distance, split=False)
    return schema.append(pa.field(ORDER, pa.int64())).append(pa.field(PROMPT_KEY, pa.string()))


def scored_frame(table: pa.Table, first_order: int, word_distance: bool = True) -> pl.DataFrame:
    """A batch of pairs scored, with its global input order."""
    base = table.drop_columns([c for c in SCORE_COLUMNS if c in table.column_names])
    scored = score_pairs(base, word_distance=word_distance)
    order = pl.int_range(first_order, first_order + scored.num_rows, dtype=pl.Int64).alias(ORDER)
    return pl.from_arrow(scored).with_columns(order)


def ahead(items: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Any]:
    """`fn` over `items` on a worker thread, one item ahead: while the caller works on result k, the
    worker computes result k+1. Results come in order; at most two are held."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpop-build") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > 1:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _rejections(dropped: pl.DataFrame | None, stage: str) -> pl.DataFrame:
    """Rejection rows (the `rejection` contract's columns) with their input order, for sorting."""
    if dropped is None or dropped.height == 0:
        return pl.DataFrame(schema=_REJECTION_DTYPES)
    return dropped.select(
        "source_uri",
        "source_row",
        "source_sha256",
        "pair_id",
        pl.lit(stage).alias("stage"),
        "reason",
        "detail",
        pl.lit(None, dtype=pl.String).alias("raw"),
        ORDER,
    ).cast(_REJECTION_DTYPES)


def _key128(column: str) -> pl.Expr:
    """A hex id as a struct of two u64 (its first 128 bits): 16 bytes a row instead of a string, so the
    key frame of a million pairs stays small. Exact for pair ids (128-bit already)."""
    hi = pl.col(column).str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64).alias("hi")
    lo = pl.col(column).str.slice(16, 16).str.to_integer(base=16, dtype=pl.UInt64).alias("lo")
    return pl.struct(hi, lo).alias(column)


# --- phase 1: score, row filters, prompt keys --------------------------------------------------------


def _numbered(tables: Iterable[pa.Table], first_order: int) -> Iterator[tuple[pa.Table, int]]:
    """Each table with the global input order of its first row."""
    for table in tables:
        yield table, first_order
        first_order += table.num_rows


def score_part(task: PartTask) -> ScoreResult:
    """Score and row-filter one partition; stage the survivors, their keys and the rejections."""
    part, settings = task.partition, task.settings
    row_filters = [f for f in part_filters(settings) if not f.global_scope]
    counts = {f.name: FilterCount(f.name, f.reason) for f in row_filters}
    word_distance = needs_word_distance(settings.curation)
    schema = _stage_schema(word_distance)
    keys, rejected = [], []
    rows_in = 0
    tables = _numbered(read_rows(part.pairs_path, part.start, part.stop, settings.batch_rows), part.offset)
    with pa.OSFile(str(task.path("staged")), "wb") as sink, pa.ipc.new_file(sink, schema) as staged:
        for frame in ahead(tables, lambda item: scored_frame(*item, word_distance=word_distance)):
            rows_in += frame.height
            kept, dropped = run_filters(frame, row_filters, counts)
            rejected.append(_rejections(dropped, "curate"))
            kept = kept.with_columns(prompt_keys(kept["prompt"]).alias(PROMPT_KEY))
            staged.write_table(kept.to_arrow().cast(schema))
            keys.append(kept.select(ORDER, _key128("pair_id"), _key128(PROMPT_KEY)))
    pl.concat(keys).write_ipc(task.path("keys"))
    pl.concat(rejected).write_ipc(task.path("rejected"))
    return ScoreResult(part.index, rows_in, tuple((c.name, c.rows_in, c.dropped) for c in counts.values()))


# --- phase 2: global drops, split, tokenise, shards --------------------------------------------------


@dataclass
class _ShardState:
    """What phase 2 accumulates over one partition's batches."""

    task: PartTask
    tokenizer: PairTokenizer
    writers: dict[str, SplitWriter]
    rejected: list[pl.DataFrame]
    split_rows: dict[str, int]
    tokenize_rows_in: int = 0
    too_long: int = 0

    def write_shards(self, split: str, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        if split not in self.writers:  # opened on first use: a split without rows has no file here
            rows_per_shard = self.task.settings.curation.shards.rows_per_shard
            self.writers[split] = SplitWriter(self.task.shard_dir, split, rows_per_shard)
        self.writers[split].write(rows)
        self.split_rows[split] += rows.num_rows


def shard_part(task: PartTask) -> ShardResult:
    """Drop global rejects, split, tokenise and write one partition's kept pairs, rejections and shards.

    Batch k+1 is queued on the encoder threads before batch k is finished and written, so the Rust
    encoder runs while this thread renders, filters and writes."""
    settings = task.settings
    state = _ShardState(task, part_tokenizer(settings), {}, [], {split: 0 for split in SPLITS})
    state.rejected.append(pl.read_ipc(task.path("rejected")))
    drops = _read_drops(task)
    pair_contract = load_contract("preference_pair")
    schema = pair_schema(needs_word_distance(settings.curation))
    started: deque[tuple[pl.DataFrame, PendingTokens]] = deque()
    with pa.OSFile(str(task.path("pairs")), "wb") as sink, pa.ipc.new_file(sink, schema) as pairs:
        for table in rebatch(ipc_tables(task.path("staged")), SHARD_BATCH_ROWS):
            frame = _split_batch(state, pl.from_arrow(table), drops)
            if frame is not None:
                started.append((frame, state.tokenizer.start(frame)))
            while len(started) > 1:  # one batch encoding while the one before it is written
                kept = _tokenized_batch(state, *started.popleft())
                pairs.write_table(pair_contract.conform(kept.select(schema.names).to_arrow()))
        while started:
            kept = _tokenized_batch(state, *started.popleft())
            pairs.write_table(pair_contract.conform(kept.select(schema.names).to_arrow()))
    shards = tuple((split, tuple(writer.close())) for split, writer in state.writers.items())
    rejections = pl.concat(state.rejected).sort(ORDER).drop(ORDER).to_arrow()
    _check_conservation(task.partition, sum(state.split_rows.values()), rejections.num_rows)
    contract = load_contract("rejection")
    write_ipc(task.path("rejections"), contract.conform(rejections.cast(contract.schema())))
    for what in ("staged", "keys", "rejected", "drops"):  # inputs no longer needed: keep the disk small
        task.path(what).unlink(missing_ok=True)
    return ShardResult(
        task.partition.index,
        state.tokenize_rows_in,
        state.too_long,
        tuple(state.split_rows.items()),
        shards,
    )


def _check_conservation(part: Partition, kept: int, rejected: int) -> None:
    """Every row of the partition ends as a kept pair or a rejection (a partition lies in one file,
    so this is the per-file rule, checked where the rows are)."""
    if kept + rejected != part.rows:
        raise RuntimeError(
            f"build lost rows: {part.source_uri} rows {part.start}-{part.stop - 1} are {part.rows} pairs, "
            f"but {kept} were kept and {rejected} rejected"
        )


def _read_drops(task: PartTask) -> pl.DataFrame:
    path = task.path("drops")
    return pl.read_ipc(path) if path.is_file() else pl.DataFrame(schema=_DROPS_SCHEMA)


def _split_batch(state: _ShardState, frame: pl.DataFrame, drops: pl.DataFrame) -> pl.DataFrame | None:
    """One batch of staged pairs without the global rejects (kept as rejections), with its split;
    None when nothing is left."""
    if drops.height:
        # pairs dropped by a global filter become rejections here, where their columns are
        is_dropped = pl.col(ORDER).is_in(drops[ORDER].implode())
        dropped = frame.filter(is_dropped).join(drops, on=ORDER, how="left", maintain_order="left")
        state.rejected.append(_rejections(dropped, "curate"))
        frame = frame.filter(~is_dropped)
    if frame.height == 0:
        return None
    eval_fraction = state.task.settings.curation.split.eval_fraction
    return frame.with_columns(split_expr(PROMPT_KEY, eval_fraction).alias("split"))


def _tokenized_batch(state: _ShardState, frame: pl.DataFrame, pending: PendingTokens) -> pl.DataFrame:
    """A started batch finished: pairs over max_length rejected, the kept ones' shard rows written;
    returns the kept pairs (with their split)."""
    kept, shard_rows = _tokenize_batch(state, frame, state.tokenizer.finish(pending))
    for split in SPLITS:
        state.write_shards(split, shard_rows.filter(pa.array((kept["split"] == split).to_numpy())))
    return kept


def _tokenize_batch(state: _ShardState, frame: pl.DataFrame, tokens: Any) -> tuple[pl.DataFrame, pa.Table]:
    """Reject a tokenised batch's pairs over max_length; return (kept pairs, their shard rows)."""
    state.tokenize_rows_in += frame.height
    too_long = pl.Series(tokens.too_long)
    if too_long.any():
        template = "prompt + response is {} tokens, over max_length {}"
        max_length = state.task.settings.curation.tokenize.max_length
        long_rows = (
            frame.filter(too_long)
            .with_columns(pl.Series("_total", tokens.total_tokens[tokens.too_long]))
            .with_columns(
                reason=pl.lit("too_long"),
                detail=pl.format(template, "_total", pl.lit(max_length)),
            )
        )
        state.too_long += long_rows.height
        state.rejected.append(_rejections(long_rows, "tokenize"))
    keep = ~too_long
    kept = frame.filter(keep)
    return kept, _shard_table(kept, tokens, keep.to_numpy())


def _shard_table(kept: pl.DataFrame, tokens: Any, keep: np.ndarray) -> pa.Table:
    rows = int(keep.sum())
    null = pa.nulls(rows, pa.float32())
    mask = pa.array(keep)
    return pa.table(
        {
            "pair_id": kept["pair_id"].to_arrow(),
            "prompt_ids": tokens.prompt_ids.filter(mask),
            "chosen_ids": tokens.chosen_ids.filter(mask),
            "rejected_ids": tokens.rejected_ids.filter(mask),
            "ref_chosen_logps": null,
            "ref_rejected_logps": null,
            "common_prefix_len": pa.array(tokens.common_prefix_len[keep], pa.int32()),
            "edit_ratio": kept["edit_ratio"].cast(pl.Float32).to_arrow(),
        }
    )
