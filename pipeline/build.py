"""Build a dataset version: ingested pairs -> score -> curate -> split -> tokenise -> Arrow shards.

`BuildStage` is the build as a partitioned stage (`pipeline.stage`): its id is the dataset id
(`ds-<hash>` of the pair tables it curates, the tokenizer's content, the curation config with the
decontamination file by sha256, the partition size, the truncation rule and the contract versions),
and its heavy work runs as per-partition parts an executor may send to other processes
(`pipeline.build_parts`), with the cross-partition steps in the driver:

1. parts, per partition (each pairs file cut into row ranges of `partition_rows`): score, row
   filters, prompt keys -> staged pairs, their keys, rejections, counts;
2. driver: the global filters (duplicate pair, pairs per prompt) over the keys of every surviving
   pair in global input order -> the rows each partition must drop;
3. parts, per partition: drop those, split by prompt hash, tokenise (rejecting `too_long`) -> kept
   pairs, rejections in input order, the partition's shards;
4. driver: merge the kept pairs and the rejections into `pairs.parquet` / `rejections.parquet` (row
   group by row group, fixed row groups), rename the shards into one sequence per split
   (`train-00000.arrow`, ...), write `manifest.json` (`pipeline.manifest`), delete the parts.

Memory stays flat in the number of pairs: parts hold a batch at a time, the driver 40 bytes a pair.
The output depends on the inputs, the config and `partition_rows` (a partition's shards are its
own files, so `partition_rows` is part of the id), not on `batch_rows`, on the executor or on the
number of workers: the same build gives the same id and byte-identical files. The runner writes it
in a temporary folder renamed when complete, so a killed build leaves no dataset folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.build_parts import (
    PARTS_DIR,
    IngestLike,
    PartSettings,
    PartTask,
    ScoreResult,
    ShardResult,
    ipc_tables,
    needs_word_distance,
    pair_schema,
    plan_partitions,
    read_rows,
    rebatch,
    remember_tokenizer,
    score_part,
    scored_frame,
    shard_part,
    tokenizer_id,
)
from pipeline.contracts import load_contract
from pipeline.curate.config import CurationConfig, load_curation_config
from pipeline.curate.filters import (
    ORDER,
    PROMPT_KEY,
    Filter,
    FilterCount,
    build_filters,
    check_sql_filters,
)
from pipeline.funnel import FunnelStep, funnel_json, read_funnel, rejected_by_reason
from pipeline.identity import file_sha256
from pipeline.manifest import DatasetManifest, IngestInput, Parent, SplitInfo, TokenizerInfo, shard_artifacts
from pipeline.shards import SPLITS, ShardInfo, SplitWriter
from pipeline.stage import (
    INLINE,
    Artifact,
    Executor,
    Input,
    Stage,
    StageContext,
    StageOutput,
    StageRecord,
    run_stage,
    workspace_path,
)
from pipeline.tokenize import TRUNCATION_RULE, PairTokenizer
from pipeline.workspace import Workspace

DEFAULT_BATCH_ROWS = 8192
DEFAULT_PARTITION_ROWS = 100_000
PAIRS_FILE = "pairs.parquet"
REJECTIONS_FILE = "rejections.parquet"
ROW_GROUP_ROWS = 8192  # row groups of the merged Parquet files: fixed, whatever the partitions
SCORE_PHASE = "build.score"
SHARD_PHASE = "build.shard"


@dataclass(frozen=True)
class IngestRef:
    """The three things the build reads of an ingest (`pipeline.ingest.IngestResult` has them)."""

    ingest_id: str
    source_uri: str
    pairs_path: Path

    @classmethod
    def of(cls, item: IngestLike) -> IngestRef:
        return cls(item.ingest_id, item.source_uri, Path(item.pairs_path))


@dataclass(frozen=True)
class BuildResult:
    dataset_id: str
    dataset_dir: Path
    funnel: list[FunnelStep]  # (step, rows in, dropped, reason code)
    rows_in: int
    rows_kept: int
    train_rows: int
    eval_rows: int
    reused: bool
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_record(cls, ws: Workspace, record: StageRecord) -> BuildResult:
        counts = record.counts
        return cls(
            dataset_id=record.id,
            dataset_dir=ws.dataset_dir(record.id),
            funnel=read_funnel(record.summary.get("funnel")),
            rows_in=counts["rows_in"],
            rows_kept=counts["rows_out"],
            train_rows=counts["train_rows"],
            eval_rows=counts["eval_rows"],
            reused=record.reused,
            rejected_by_reason=dict(record.rejected_by_reason),
        )


def _decontamination_only_in_parts(frame: pl.DataFrame) -> pl.Series:
    raise RuntimeError("decontamination runs in the build's parts, not in the driver")


@dataclass(frozen=True)
class BuildStage(Stage):
    """Curate and tokenise ingested pairs into a dataset version (see the module docstring).

    `batch_rows` bounds a part's memory and changes nothing in the output, so it is not part of the id."""

    name = "build"
    # 2: partitioned build (a partition's shards are its own files); 3: word_edit_distance only when a
    # filter reads it (kept pairs without that column otherwise)
    version = 3
    id_prefix = "ds"
    placement = "data"
    partitioned = True

    ingests: tuple[IngestRef, ...]
    curation: CurationConfig
    tokenizer: Path
    partition_rows: int = DEFAULT_PARTITION_ROWS
    batch_rows: int = DEFAULT_BATCH_ROWS

    def __post_init__(self) -> None:
        # the input order is part of the output (first of duplicates kept, per-prompt caps): sort it
        ingests = sorted((IngestRef.of(i) for i in self.ingests), key=lambda i: (i.source_uri, i.ingest_id))
        object.__setattr__(self, "ingests", tuple(ingests))
        object.__setattr__(self, "curation", load_curation_config(self.curation))
        object.__setattr__(self, "tokenizer", Path(self.tokenizer))
        for name in ("partition_rows", "batch_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"build: {name} must be a positive integer, got {value!r}")

    # --- identity ---------------------------------------------------------------------------------

    @cached_property
    def tokenizer_info(self) -> dict[str, Any]:
        """What the manifest records of the tokenizer (loads it once; the parts in this process reuse it)."""
        tokenize = self.curation.tokenize
        tokenizer = PairTokenizer(self.tokenizer, tokenize.max_length, tokenize.max_prompt_length)
        info = tokenizer.info()
        remember_tokenizer(tokenizer, tokenizer_id(info))
        return info

    @cached_property
    def tokenizer_artifact(self) -> Artifact:
        info = self.tokenizer_info
        meta = {key: info[key] for key in ("sha256", "chat_template_sha256", "eos_token_id", "pad_token_id")}
        return Artifact(tokenizer_id(info), "tokenizer", info["path"], meta=meta)

    @cached_property
    def decontaminate_sha256(self) -> str | None:
        spec = self.curation.filters.decontaminate
        if spec is None:
            return None
        if not Path(spec.file).is_file():
            raise FileNotFoundError(f"decontamination file {spec.file} not found")
        return file_sha256(spec.file)

    @cached_property
    def _config(self) -> dict[str, Any]:
        curation = self.curation.as_dict()
        if curation["filters"]["decontaminate"] is not None:
            # the eval file counts by content, not by where it lies
            curation["filters"]["decontaminate"]["file"] = self.decontaminate_sha256
        contracts = ("preference_pair", "rejection", "dpop_shard")
        config = {
            "curation": curation,
            "partition_rows": self.partition_rows,
            "truncation": TRUNCATION_RULE,
            "contracts": {name: load_contract(name).version for name in contracts},
        }
        # as its record will read back (lists, not tuples)
        return json.loads(json.dumps(config))

    def inputs(self) -> list[Input]:
        pairs = [
            Input(Artifact(f"pairs-{i.ingest_id}", "pairs", str(i.pairs_path)), "curated_from")
            for i in self.ingests
        ]
        return [*pairs, Input(self.tokenizer_artifact, "tokenized_with")]

    def config(self) -> dict[str, Any]:
        return self._config

    def folder(self, ws: Workspace) -> Path:
        return ws.dataset_dir(self.id)

    def label(self) -> str:
        return f"build {len(self.ingests)} source(s)"

    # --- the work ---------------------------------------------------------------------------------

    def run(self, ctx: StageContext) -> StageOutput:
        self._check_inputs()
        tasks = self._tasks(ctx.out / PARTS_DIR)
        filters = build_filters(
            self.curation, _decontamination_only_in_parts if self.decontaminate_sha256 else None
        )
        counts = {f.name: FilterCount(f.name, f.reason) for f in filters}
        _check_sql(tasks, [f for f in filters if not f.global_scope], needs_word_distance(self.curation))
        ctx.progress(0, 3, f"scoring and filtering {len(tasks)} partition(s)")
        scored = ctx.map(SCORE_PHASE, score_part, tasks)
        for result in scored:
            for name, rows_in, dropped in result.counts:
                counts[name].rows_in += rows_in
                counts[name].dropped += dropped
        ctx.progress(1, 3, "duplicates and pairs per prompt over all partitions")
        global_filters = [f for f in filters if f.global_scope]
        _global_drops(tasks, global_filters, counts, self.curation.filters.max_pairs_per_prompt)
        ctx.progress(2, 3, f"splitting, tokenising and sharding {len(tasks)} partition(s)")
        sharded = ctx.map(SHARD_PHASE, shard_part, tasks)
        output = self._finish(ctx, tasks, _funnel(scored, counts, sharded), sharded)
        ctx.progress(3, 3, "done")
        return output

    def _check_inputs(self) -> None:
        if not self.ingests:
            raise ValueError("build: no ingested pairs to curate")
        for item in self.ingests:
            if not item.pairs_path.is_file():
                raise FileNotFoundError(
                    f"pairs of ingest {item.ingest_id} ({item.source_uri}) missing: {item.pairs_path}"
                )

    def _tasks(self, parts_dir: Path) -> list[PartTask]:
        parts_dir.mkdir(parents=True, exist_ok=True)
        settings = PartSettings(
            curation=self.curation,
            tokenizer_path=str(self.tokenizer),
            tokenizer_id=self.tokenizer_artifact.id,
            decontaminate_sha256=self.decontaminate_sha256,
            batch_rows=self.batch_rows,
        )
        return [
            PartTask(p, str(parts_dir), settings) for p in plan_partitions(self.ingests, self.partition_rows)
        ]

    def _finish(
        self, ctx: StageContext, tasks: list[PartTask], funnel: list[FunnelStep], sharded: list[ShardResult]
    ) -> StageOutput:
        """Merge the parts into the dataset's files, write the manifest and describe the outputs."""
        pairs_schema = pair_schema(needs_word_distance(self.curation))
        _merge_parquet([t.path("pairs") for t in tasks], ctx.out / PAIRS_FILE, pairs_schema)
        rejections_schema = load_contract("rejection").schema()
        _merge_parquet([t.path("rejections") for t in tasks], ctx.out / REJECTIONS_FILE, rejections_schema)
        splits = _name_shards(ctx.out, tasks, sharded, self.curation.shards.rows_per_shard)
        shutil.rmtree(ctx.out / PARTS_DIR)
        manifest = self._manifest(funnel, splits)
        manifest.write(ctx.out)
        return self._output(ctx, manifest)

    def _manifest(self, funnel: list[FunnelStep], splits: dict[str, SplitInfo]) -> DatasetManifest:
        identity = {
            "stage": self.name,
            "version": self.version,
            "inputs": sorted([i.artifact.id, i.relation] for i in self.inputs()),
            "config": self.config(),
        }
        return DatasetManifest(
            dataset_id=self.id,
            splits=splits,
            parents=tuple(Parent(f"pairs-{i.ingest_id}", "pairs", "curated_from") for i in self.ingests),
            inputs=tuple(IngestInput(i.ingest_id, i.source_uri) for i in self.ingests),
            tokenizer=TokenizerInfo.from_json(self.tokenizer_info),
            max_length=self.curation.tokenize.max_length,
            max_prompt_length=self.curation.tokenize.max_prompt_length,
            truncation=TRUNCATION_RULE,
            config=self.curation.as_dict(),
            identity=identity,
            reference_model=None,
            funnel=tuple(funnel),
        )

    def _output(self, ctx: StageContext, manifest: DatasetManifest) -> StageOutput:
        funnel = list(manifest.funnel)
        rows_in, kept = funnel[0].rows_in, manifest.rows
        train, evaluation = manifest.split_rows("train"), manifest.split_rows("eval")
        meta = {
            "funnel": funnel_json(funnel),
            "train_rows": train,
            "eval_rows": evaluation,
            "tokenizer_sha256": self.tokenizer_info["sha256"],
            "config": self.config()["curation"],
        }
        # the dataset's catalog parents are the pair tables it curates; the tokenizer is an input of
        # the record (and of the OpenLineage events) and a parent of the kept pairs and rejections
        dataset = Artifact(
            self.id,
            "dataset",
            workspace_path(ctx.ws, ctx.folder),
            rows=kept,
            contract="dpop_shard",
            meta=meta,
            parents=tuple((f"pairs-{i.ingest_id}", "curated_from") for i in self.ingests),
        )
        outputs = [
            dataset,
            Artifact(
                f"pairs-{self.id}", "pairs_kept", ctx.path(PAIRS_FILE), rows=kept, contract="preference_pair"
            ),
            Artifact(
                f"rejections-{self.id}",
                "rejections",
                ctx.path(REJECTIONS_FILE),
                rows=rows_in - kept,
                contract="rejection",
            ),
        ]
        outputs += shard_artifacts(ctx, self.id, manifest.splits)
        return StageOutput(
            outputs=outputs,
            counts={"rows_in": rows_in, "rows_out": kept, "train_rows": train, "eval_rows": evaluation},
            rejected_by_reason=rejected_by_reason(funnel),
            summary={"funnel": funnel_json(funnel)},
        )


# --- driver steps -------------------------------------------------------------------------------------


def _check_sql(tasks: list[PartTask], row_filters: list[Filter], word_distance: bool) -> None:
    """Evaluate the SQL filters on a scored pair's columns (no rows): a bad predicate fails before any
    part runs, with DuckDB's message and the filter's name."""
    if not tasks or not any(f.sql is not None for f in row_filters):
        return
    first = tasks[0].partition
    table = next(read_rows(first.pairs_path, first.start, first.start + 1, 1))
    check_sql_filters(row_filters, scored_frame(table, 0, word_distance))


def _global_drops(
    tasks: list[PartTask],
    global_filters: list[Filter],
    counts: dict[str, FilterCount],
    max_per_prompt: int | None,
) -> None:
    """The global filters over the keys of every pair the row filters kept, in input order; each
    partition's drops go to its `drops` file (order, reason, detail) for its phase-2 part.

    The keys are numpy arrays (40 bytes a pair) and the two global filters are stable sorts over them,
    not hash tables: equal keys end up next to each other in input order. The Polars expressions of
    `run_filters` need about 7x the key frame on top of it (290 MB a million pairs over a 40 MB frame);
    these need under 1x (330 MB over the 400 MB of ten million pairs)."""
    if not tasks:
        return
    keys = _read_keys(tasks)
    alive = np.arange(len(keys[ORDER]))  # positions still kept, in input order
    dropped = []
    for item in global_filters:
        count = counts.setdefault(item.name, FilterCount(item.name, item.reason))
        count.rows_in += len(alive)
        drop = _global_mask(item, keys, alive, max_per_prompt)
        if drop.any():
            count.dropped += int(drop.sum())
            orders = keys[ORDER][alive[drop]]
            dropped.append(
                pl.DataFrame({ORDER: orders}).with_columns(
                    reason=pl.lit(item.reason), detail=pl.lit(item.detail)
                )
            )
            alive = alive[~drop]
    del keys, alive
    if not dropped:
        return
    frame = pl.concat(dropped)
    offsets = np.array([t.partition.offset for t in tasks], dtype=np.int64)
    owner = np.searchsorted(offsets, frame[ORDER].to_numpy(), side="right") - 1
    frame = frame.with_columns(pl.Series("_partition", owner))
    for (index,), rows in frame.partition_by("_partition", as_dict=True).items():
        rows.drop("_partition").write_ipc(tasks[index].path("drops"))


KEY_FIELDS = (("pair_id", "pair"), (PROMPT_KEY, "prompt"))


def _read_keys(tasks: list[PartTask]) -> dict[str, np.ndarray]:
    """Every partition's keys as flat numpy arrays (input order; `pair_hi`, `pair_lo`, `prompt_hi`,
    `prompt_lo`: the 128-bit keys as two u64). The arrays are allocated once at their full size and
    filled batch by batch from the memory-mapped key files: no list of pieces to concatenate (which
    would hold every key twice)."""
    names = [ORDER, *(f"{name}_{half}" for _, name in KEY_FIELDS for half in ("hi", "lo"))]
    total = sum(batch.num_rows for task in tasks for batch in _key_batches(task))
    keys = {name: np.empty(total, dtype=np.int64 if name == ORDER else np.uint64) for name in names}
    row = 0
    for task in tasks:
        for batch in _key_batches(task):
            stop = row + batch.num_rows
            keys[ORDER][row:stop] = batch.column(ORDER).to_numpy()
            for column, name in KEY_FIELDS:
                struct = batch.column(column)
                for half in ("hi", "lo"):
                    keys[f"{name}_{half}"][row:stop] = struct.field(half).to_numpy()
            row = stop
    if total > 1 and not (np.diff(keys[ORDER]) > 0).all():  # partitions come in input order
        raise RuntimeError("build: the partitions' keys are not in input order")
    return keys


def _key_batches(task: PartTask) -> Iterator[pa.RecordBatch]:
    with pa.memory_map(str(task.path("keys"))) as source:
        reader = pa.ipc.open_file(source)
        for index in range(reader.num_record_batches):
            yield reader.get_batch(index)


def _global_mask(
    item: Filter, keys: dict[str, np.ndarray], alive: np.ndarray, max_per_prompt: int | None
) -> np.ndarray:
    """Which of the `alive` rows the global filter drops."""
    if item.name == "duplicate_pair":
        return _repeats(*_alive_key(keys, "pair", alive))
    if item.name == "max_pairs_per_prompt" and max_per_prompt is not None:
        return _beyond_first(*_alive_key(keys, "prompt", alive), max_per_prompt)
    # any other global filter: its own expression over the key frame (Polars, the general path)
    frame = pl.DataFrame(
        {
            ORDER: keys[ORDER][alive],
            **{
                column: pl.DataFrame(
                    {"hi": keys[f"{name}_hi"][alive], "lo": keys[f"{name}_lo"][alive]}
                ).to_struct()
                for column, name in KEY_FIELDS
            },
        }
    )
    return item.drop_mask(frame).to_numpy()


def _alive_key(keys: dict[str, np.ndarray], name: str, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A key's two halves at the alive rows (no copy while every row is alive)."""
    hi, lo = keys[f"{name}_hi"], keys[f"{name}_lo"]
    if len(alive) == len(hi):
        return hi, lo
    return hi[alive], lo[alive]


def _group_runs(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(perm, starts): the stable order that puts equal (hi, lo) keys together, input order kept
    within a key, and the positions in that order where a new key begins."""
    perm = np.lexsort((lo, hi))
    new = np.ones(len(perm), dtype=bool)
    for half in (hi, lo):  # one sorted copy at a time
        ordered = half[perm]
        new[1:] &= ordered[1:] == ordered[:-1]
        del ordered
    np.logical_not(new[1:], out=new[1:])  # new[i]: key i differs from key i-1
    return perm, np.flatnonzero(new)


def _repeats(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """True where the key appeared at an earlier position (`~is_first_distinct`)."""
    perm, starts = _group_runs(hi, lo)
    repeat = np.ones(len(perm), dtype=bool)
    repeat[perm[starts]] = False
    return repeat


def _beyond_first(hi: np.ndarray, lo: np.ndarray, limit: int) -> np.ndarray:
    """True for every row after the first `limit` rows of its key, in input order
    (`int_range(len()).over(key) >= limit`); the work past the sort is per key and per dropped row."""
    perm, starts = _group_runs(hi, lo)
    lengths = np.diff(np.append(starts, len(perm)))
    excess = np.maximum(lengths - limit, 0)
    # sorted positions start + limit .. start + length - 1 of each key with more than `limit` rows
    first = np.repeat(starts + limit - np.cumsum(excess) + excess, excess)
    beyond = np.zeros(len(perm), dtype=bool)
    beyond[perm[first + np.arange(len(first))]] = True
    return beyond


def _funnel(
    scored: list[ScoreResult], counts: dict[str, FilterCount], sharded: list[ShardResult]
) -> list[FunnelStep]:
    rows_in = sum(result.rows_in for result in scored)
    steps = [FunnelStep("input", rows_in, 0, "")]
    steps += [FunnelStep(c.name, c.rows_in, c.dropped, c.reason) for c in counts.values()]
    tokenized = sum(r.tokenize_rows_in for r in sharded)
    steps.append(FunnelStep("tokenize.max_length", tokenized, sum(r.too_long for r in sharded), "too_long"))
    return steps


def _merge_parquet(parts: list[Path], out: Path, schema: pa.Schema) -> None:
    """Concatenate Arrow IPC parts into one Parquet file in row groups of ROW_GROUP_ROWS, one row group
    in memory at a time; each part is deleted once copied."""

    def tables():
        for path in parts:
            yield from ipc_tables(path)
            path.unlink()

    with pq.ParquetWriter(out, schema) as writer:
        for table in rebatch(tables(), ROW_GROUP_ROWS):
            writer.write_table(table.cast(schema))


def _name_shards(
    out: Path, tasks: list[PartTask], sharded: list[ShardResult], rows_per_shard: int
) -> dict[str, SplitInfo]:
    """Rename the partitions' shards into one sequence per split, in partition order."""
    by_index = {result.index: dict(result.shards) for result in sharded}
    splits = {}
    for split in SPLITS:
        infos: list[ShardInfo] = []
        for task in tasks:
            for info in by_index[task.partition.index].get(split, ()):
                name = f"{split}-{len(infos):05d}.arrow"
                os.replace(task.shard_dir / info.file, out / name)
                infos.append(replace(info, file=name))
        if not infos:  # readers always find a schema: an empty split still has one (empty) shard
            infos = SplitWriter(out, split, rows_per_shard).close()
        splits[split] = SplitInfo(sum(i.rows for i in infos), tuple(infos))
    return splits


# --- the convenience entry point ----------------------------------------------------------------------


def build_dataset(
    workspace: Workspace | str | os.PathLike[str],
    config: CurationConfig | dict[str, Any] | str | os.PathLike[str] | None,
    tokenizer_path: str | os.PathLike[str],
    ingests: Sequence[IngestLike] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    partition_rows: int = DEFAULT_PARTITION_ROWS,
    executor: Executor = INLINE,
) -> BuildResult:
    """Curate and tokenise ingested pairs (default: the latest ingest of every source) into a dataset
    version, through the stage runner: an existing version is returned as is (`reused=True`)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    config = load_curation_config(config)
    if ingests is None:
        from pipeline.ingest import latest_ingests

        ingests = latest_ingests(ws)
    if not ingests:
        raise ValueError(f"no ingested pairs in workspace {ws.root}: run `dpop ingest` first")
    stage = BuildStage(tuple(ingests), config, Path(tokenizer_path), partition_rows, batch_rows)
    stage._check_inputs()
    return BuildResult.from_record(ws, run_stage(ws, stage, executor))
