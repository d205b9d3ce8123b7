"""Build a dataset version: ingested pairs -> score -> curate -> split -> tokenise -> Arrow shards.

Streaming in two passes so memory stays flat in the number of pairs:

1. per source file, per batch: score, run the row filters, write the survivors (scored) to a staging
   Parquet file and keep only their keys (input order, pair id, prompt key: 40 bytes a pair);
2. the global filters (duplicate pair, pairs per prompt) run on the key frame; then per staged batch:
   drop what they rejected, assign the split, tokenise (rejecting `too_long`), and stream the kept
   pairs, the rejections and the train/eval shards to their files.

Everything is written inside a temporary folder renamed to `<ws>/datasets/<dataset_id>` at the end,
so a killed build leaves no dataset folder (and no shard a reader would accept). The id is a hash of
the inputs (parent pair-table ids), the curation config, the tokenizer and chat-template hashes and
the contract versions: the same build gives the same id and byte-identical files, and an existing
version is returned as is (`reused=True`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import TMP_PREFIX, atomic_dir
from pipeline.catalog import Catalog
from pipeline.contracts import load_contract
from pipeline.curate.config import CurationConfig, load_curation_config
from pipeline.curate.decontaminate import EvalNgrams
from pipeline.curate.filters import (
    ORDER,
    PROMPT_KEY,
    FilterCount,
    build_filters,
    check_sql_filters,
    run_filters,
)
from pipeline.curate.split import prompt_keys, split_expr
from pipeline.identity import file_sha256, stable_hash
from pipeline.score import SCORE_COLUMNS, score_pairs
from pipeline.shards import MANIFEST, SplitWriter, load_manifest, write_manifest
from pipeline.tokenize import TRUNCATION_RULE, PairTokenizer
from pipeline.version import code_version
from pipeline.workspace import Workspace

BUILD_FORMAT = 1  # bump when the build's semantics change, so old versions are not reused
DEFAULT_BATCH_ROWS = 8192
PAIRS_FILE = "pairs.parquet"
REJECTIONS_FILE = "rejections.parquet"
_STAGE = f"{TMP_PREFIX}stage1.parquet"


class IngestLike(Protocol):
    ingest_id: str
    source_uri: str
    pairs_path: Path


@dataclass(frozen=True)
class BuildResult:
    dataset_id: str
    dataset_dir: Path
    funnel: list[tuple[str, int, int, str]]  # (step, rows in, dropped, reason code)
    rows_in: int
    rows_kept: int
    train_rows: int
    eval_rows: int
    reused: bool
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


def build_dataset(
    workspace: Workspace | str | os.PathLike[str],
    config: CurationConfig | dict[str, Any] | str | os.PathLike[str] | None,
    tokenizer_path: str | os.PathLike[str],
    ingests: Sequence[IngestLike] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> BuildResult:
    """Curate and tokenise ingested pairs into a versioned dataset (see the module docstring)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    config = load_curation_config(config)
    if ingests is None:
        from pipeline.ingest import latest_ingests

        ingests = latest_ingests(ws)
    if not ingests:
        raise ValueError(f"no ingested pairs in workspace {ws.root}: run `dpop ingest` first")
    ingests = sorted(ingests, key=lambda item: (item.source_uri, item.ingest_id))
    for item in ingests:
        if not Path(item.pairs_path).is_file():
            raise FileNotFoundError(
                f"pairs of ingest {item.ingest_id} ({item.source_uri}) missing: {item.pairs_path}"
            )
    tokenizer = PairTokenizer(tokenizer_path, config.tokenize.max_length, config.tokenize.max_prompt_length)
    tokenizer_info = tokenizer.info()
    identity = _identity(ingests, config, tokenizer_info)
    dataset_id = "ds-" + stable_hash(identity)
    final = ws.dataset_dir(dataset_id)
    if (final / MANIFEST).is_file():
        return _result_from_manifest(ws, dataset_id, reused=True)

    eval_ngrams = None
    if config.filters.decontaminate is not None:
        spec = config.filters.decontaminate
        eval_ngrams = EvalNgrams(spec.file, spec.fields, spec.n)
    mask = (lambda frame: eval_ngrams.pair_mask(frame, spec.check)) if eval_ngrams else None
    filters = build_filters(config, mask)
    with atomic_dir(final) as tmp:
        funnel, splits = _build_into(tmp, ingests, config, tokenizer, filters, batch_rows)
        manifest = {
            "dataset_id": dataset_id,
            "parents": [
                {"id": f"pairs-{item.ingest_id}", "kind": "pairs", "relation": "curated_from"}
                for item in ingests
            ],
            "inputs": [{"ingest_id": item.ingest_id, "source_uri": item.source_uri} for item in ingests],
            "tokenizer": tokenizer_info,
            "max_length": config.tokenize.max_length,
            "max_prompt_length": config.tokenize.max_prompt_length,
            "truncation": TRUNCATION_RULE,
            "config": config.as_dict(),
            "identity": identity,
            "reference_model": None,
            "splits": splits,
            "funnel": [list(step) for step in funnel],
        }
        write_manifest(tmp, manifest)
    result = _result_from_manifest(ws, dataset_id, reused=False)
    _record_catalog(ws, result, ingests, load_manifest(ws, dataset_id))
    return result


def _identity(
    ingests: Sequence[IngestLike], config: CurationConfig, tokenizer_info: dict[str, Any]
) -> dict[str, Any]:
    """Everything the dataset's bytes depend on, and nothing else (no paths, no times)."""
    config_dict = config.as_dict()
    decontaminate = config_dict["filters"]["decontaminate"]
    if decontaminate is not None:
        # the eval file counts by content, not by where it lies
        decontaminate = {**decontaminate, "file": file_sha256(decontaminate["file"])}
        config_dict["filters"]["decontaminate"] = decontaminate
    return {
        "build_format": BUILD_FORMAT,
        "parents": sorted(f"pairs-{item.ingest_id}" for item in ingests),
        "config": config_dict,
        "tokenizer_sha256": tokenizer_info["sha256"],
        "chat_template_sha256": tokenizer_info["chat_template_sha256"],
        # tokenizer.json does not hold which token ends a response or pads: they change the shards
        "special_tokens": {k: tokenizer_info[k] for k in ("eos_token_id", "pad_token_id")},
        "truncation": TRUNCATION_RULE,
        "contracts": {
            name: load_contract(name).version for name in ("preference_pair", "rejection", "dpop_shard")
        },
    }


def _read_batches(path: Path, batch_rows: int) -> Iterator[pa.Table]:
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=batch_rows):
        yield pa.Table.from_batches([batch])


@dataclass
class _Run:
    """What the two passes share: output folder, config, tokenizer, filters, counters, writers."""

    out: Path
    config: CurationConfig
    tokenizer: PairTokenizer
    row_filters: list
    global_filters: list
    counts: dict[str, FilterCount]
    batch_rows: int
    rejections: pq.ParquetWriter | None = None
    token_count: FilterCount = field(default_factory=lambda: FilterCount("tokenize.max_length", "too_long"))

    def reject(self, dropped: pl.DataFrame | None, stage: str) -> None:
        _write_rejections(self.rejections, dropped, stage)


def _build_into(
    out: Path,
    ingests: Sequence[IngestLike],
    config: CurationConfig,
    tokenizer: PairTokenizer,
    filters: list,
    batch_rows: int,
) -> tuple[list[tuple[str, int, int, str]], dict[str, Any]]:
    run = _Run(
        out=out,
        config=config,
        tokenizer=tokenizer,
        row_filters=[f for f in filters if not f.global_scope],
        global_filters=[f for f in filters if f.global_scope],
        counts={f.name: FilterCount(f.name, f.reason) for f in filters},
        batch_rows=batch_rows,
    )
    stage_path = out / _STAGE
    with pq.ParquetWriter(out / REJECTIONS_FILE, load_contract("rejection").schema()) as rejections:
        run.rejections = rejections
        rows_in, keys = _pass_one(run, ingests, stage_path)
        global_drops = _global_drops(run, keys)
        del keys
        split_rows, shard_infos = _pass_two(run, stage_path, global_drops)
    stage_path.unlink()

    funnel = [("input", rows_in, 0, "")]
    funnel += [(c.name, c.rows_in, c.dropped, c.reason) for c in run.counts.values()]
    funnel.append(
        (run.token_count.name, run.token_count.rows_in, run.token_count.dropped, run.token_count.reason)
    )
    splits = {
        split: {"rows": split_rows[split], "shards": [info.as_dict() for info in shard_infos[split]]}
        for split in ("train", "eval")
    }
    return funnel, splits


def _pass_one(run: _Run, ingests: Sequence[IngestLike], stage_path: Path) -> tuple[int, pl.DataFrame]:
    """Score and row-filter every batch; stage the survivors; return (rows in, their key frame)."""
    rows_in = 0
    key_parts = []
    pair_contract = load_contract("preference_pair")
    with pq.ParquetWriter(stage_path, _stage_schema(pair_contract)) as stage:
        for item in ingests:
            for table in _read_batches(Path(item.pairs_path), run.batch_rows):
                scored = score_pairs(
                    table.drop_columns([c for c in SCORE_COLUMNS if c in table.column_names])
                )
                frame = pl.from_arrow(scored).with_columns(
                    pl.int_range(rows_in, rows_in + scored.num_rows, dtype=pl.Int64).alias(ORDER)
                )
                if rows_in == 0:
                    check_sql_filters(run.row_filters, frame)
                rows_in += scored.num_rows
                kept, dropped = run_filters(frame, run.row_filters, run.counts)
                run.reject(dropped, "curate")
                kept = kept.with_columns(prompt_keys(kept["prompt"]).alias(PROMPT_KEY))
                stage.write_table(kept.to_arrow().cast(stage.schema))
                key_parts.append(kept.select(ORDER, _key128("pair_id"), _key128(PROMPT_KEY)))
    keys = pl.concat(key_parts, rechunk=True) if key_parts else pl.DataFrame()
    return rows_in, keys


def _global_drops(run: _Run, keys: pl.DataFrame) -> pl.DataFrame:
    """The global filters over the keys of every surviving pair, in input order: (order, reason, detail)."""
    empty = pl.DataFrame(schema={ORDER: pl.Int64, "reason": pl.String, "detail": pl.String})
    if keys.height == 0:
        return empty
    _, dropped = run_filters(keys.sort(ORDER), run.global_filters, run.counts)
    return empty if dropped is None else dropped.select(ORDER, "reason", "detail")


def _pass_two(
    run: _Run, stage_path: Path, global_drops: pl.DataFrame
) -> tuple[dict[str, int], dict[str, list]]:
    """Per staged batch: drop what the global filters rejected, split, tokenise, write everything."""
    writers = {
        split: SplitWriter(run.out, split, run.config.shards.rows_per_shard) for split in ("train", "eval")
    }
    split_rows = {"train": 0, "eval": 0}
    pair_contract = load_contract("preference_pair")
    pairs_schema = pair_contract.schema()
    dropped_orders = global_drops[ORDER].implode()
    with pq.ParquetWriter(run.out / PAIRS_FILE, pairs_schema) as pairs_writer:
        for table in _read_batches(stage_path, run.batch_rows):
            frame = pl.from_arrow(table)
            if global_drops.height:
                # rows dropped by a global filter become rejections here, where their columns are
                is_dropped = pl.col(ORDER).is_in(dropped_orders)
                dropped = frame.filter(is_dropped).join(
                    global_drops, on=ORDER, how="left", maintain_order="left"
                )
                run.reject(dropped, "curate")
                frame = frame.filter(~is_dropped)
            if frame.height == 0:
                continue
            frame = frame.with_columns(split_expr(PROMPT_KEY, run.config.split.eval_fraction).alias("split"))
            kept, shard_rows = _tokenize_batch(run, frame)
            pairs_writer.write_table(pair_contract.conform(kept.select(list(pairs_schema.names)).to_arrow()))
            for split in ("train", "eval"):
                part = shard_rows.filter(pa.array((kept["split"] == split).to_numpy()))
                if part.num_rows:
                    writers[split].write(part)
                    split_rows[split] += part.num_rows
    return split_rows, {split: writer.close() for split, writer in writers.items()}


def _tokenize_batch(run: _Run, frame: pl.DataFrame) -> tuple[pl.DataFrame, pa.Table]:
    """Tokenise a batch; reject pairs over max_length; return (kept pairs, their shard rows)."""
    tokens = run.tokenizer.encode(frame)
    run.token_count.rows_in += frame.height
    too_long = pl.Series(tokens.too_long)
    if too_long.any():
        template = "prompt + response is {} tokens, over max_length {}"
        long_rows = (
            frame.filter(too_long)
            .with_columns(pl.Series("_total", tokens.total_tokens[tokens.too_long]))
            .with_columns(
                reason=pl.lit("too_long"),
                detail=pl.format(template, "_total", pl.lit(run.config.tokenize.max_length)),
            )
        )
        run.token_count.dropped += long_rows.height
        run.reject(long_rows, "tokenize")
    keep = ~too_long
    kept = frame.filter(keep)
    return kept, _shard_table(kept, tokens, keep.to_numpy())


def _key128(column: str) -> pl.Expr:
    """A hex id as a struct of two u64 (its first 128 bits): 16 bytes a row instead of a string, so the
    key frame of a million pairs stays small. Exact for pair ids (128-bit already)."""
    hi = pl.col(column).str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64).alias("hi")
    lo = pl.col(column).str.slice(16, 16).str.to_integer(base=16, dtype=pl.UInt64).alias("lo")
    return pl.struct(hi, lo).alias(column)


def _stage_schema(pair_contract) -> pa.Schema:
    schema = pair_contract.schema([c for c in pair_contract.columns if c != "split"])
    return schema.append(pa.field(ORDER, pa.int64())).append(pa.field(PROMPT_KEY, pa.string()))


def _shard_table(kept: pl.DataFrame, tokens, keep) -> pa.Table:
    rows = int(keep.sum())
    null = pa.nulls(rows, pa.float32())
    return pa.table(
        {
            "pair_id": kept["pair_id"].to_arrow(),
            "prompt_ids": tokens.prompt_ids.filter(pa.array(keep)),
            "chosen_ids": tokens.chosen_ids.filter(pa.array(keep)),
            "rejected_ids": tokens.rejected_ids.filter(pa.array(keep)),
            "ref_chosen_logps": null,
            "ref_rejected_logps": null,
            "common_prefix_len": pa.array(tokens.common_prefix_len[keep], pa.int32()),
            "edit_ratio": kept["edit_ratio"].cast(pl.Float32).to_arrow(),
        }
    )


def _write_rejections(writer: pq.ParquetWriter, dropped: pl.DataFrame | None, stage: str) -> None:
    if dropped is None or dropped.height == 0:
        return
    table = dropped.select(
        "source_uri",
        "source_row",
        "source_sha256",
        "pair_id",
        pl.lit(stage).alias("stage"),
        "reason",
        "detail",
        pl.lit(None, dtype=pl.String).alias("raw"),
    ).to_arrow()
    contract = load_contract("rejection")
    writer.write_table(contract.conform(table.cast(contract.schema())))


def _result_from_manifest(ws: Workspace, dataset_id: str, reused: bool) -> BuildResult:
    manifest = load_manifest(ws, dataset_id)
    funnel = [tuple(step) for step in manifest["funnel"]]
    rows_in = funnel[0][1]
    by_reason: dict[str, int] = {}
    for _, _, dropped, reason in funnel[1:]:
        if dropped:
            by_reason[reason] = by_reason.get(reason, 0) + dropped
    train_rows, eval_rows = manifest["splits"]["train"]["rows"], manifest["splits"]["eval"]["rows"]
    return BuildResult(
        dataset_id=dataset_id,
        dataset_dir=ws.dataset_dir(dataset_id),
        funnel=funnel,
        rows_in=rows_in,
        rows_kept=train_rows + eval_rows,
        train_rows=train_rows,
        eval_rows=eval_rows,
        reused=reused,
        rejected_by_reason=by_reason,
    )


def _record_catalog(
    ws: Workspace, result: BuildResult, ingests: Sequence[IngestLike], manifest: dict
) -> None:
    meta = {
        "funnel": manifest["funnel"],
        "train_rows": result.train_rows,
        "eval_rows": result.eval_rows,
        "tokenizer_sha256": manifest["tokenizer"]["sha256"],
        "config": json.loads(json.dumps(manifest["config"])),
        "code_version": code_version(),
    }
    with Catalog(ws).batch() as catalog:
        catalog.record_artifact(
            result.dataset_id,
            "dataset",
            uri=str(result.dataset_dir),
            rows=result.rows_kept,
            meta=meta,
            parents={f"pairs-{item.ingest_id}": "curated_from" for item in ingests},
        )
        for split, info in manifest["splits"].items():
            for shard in info["shards"]:
                catalog.record_artifact(
                    shard["sha256"],
                    "shard",
                    uri=str(result.dataset_dir / shard["file"]),
                    rows=shard["rows"],
                    meta={
                        "dataset_id": result.dataset_id,
                        "split": split,
                        "file": shard["file"],
                        "bytes": shard["bytes"],
                    },
                    parents={result.dataset_id: "part_of"},
                )
