"""Log-probs of any model, stored once per pair: `dpop logps --dataset ID --model M`.

`ModelLogpsStage` runs a model (no grad, length-sorted token-budget batches) over every pair of a
dataset version and writes `<ws>/logps/<lp-id>/logps.parquet` (contract `model_logps`): per pair, the
summed log-probs of chosen and rejected and their token counts, keyed by `pair_id`. Its id is
`lp-<hash>` of the dataset id, the model's id (`dpop.model_io.model_artifact`: content, never a path)
and the precision, so asking again reuses the table in any workspace. Why a table beside the dataset
and not columns in a new version: a selection reads the log-probs of several models (a reference and a
probe) joined on `pair_id`, and a model's table serves every version that holds those pairs; only the
reference's values travel in the shards (`dpop refs`, `dpop.refs.LogpsStage`), because training reads
them there.

Both stages compute through `dataset_logps`, which looks every pair up in the workspace's per-pair
cache first (`dpop.logps_cache`: keyed by token ids digest, model id and precision) and runs the model
only on the pairs never seen under that model and precision: a refreshed dataset with 10% new pairs
costs about 10% of a full pass (benchmarks/bench_logps_refresh.py). When every pair is cached the
model is not even loaded.

A probe (any checkpoint, e.g. a short DPO run on a seeded random subset) and the reference give the
policy and reference sides of the implicit reward β·(log πθ(y|x) − log πref(y|x)) that selection rules
rank by (`pipeline.select_rules`), without training on the whole set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dpop.data import ShardDataset
from dpop.logps_cache import LogpsCache, pair_digests
from dpop.model_io import (
    Precision,
    check_tokenizer,
    load_causal_lm,
    model_artifact,
    require_model_dir,
    require_safetensors,
)
from pipeline.contracts import load_contract
from pipeline.shards import SPLITS, load_manifest, shard_paths
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
)
from pipeline.workspace import Workspace

DEFAULT_BATCH_SIZE = 64
# Padded tokens per forward pass (both sequences of each pair): long pairs get smaller batches, so
# activation and attention memory stay bounded whatever the length mix.
DEFAULT_TOKEN_BUDGET = 65_536
LOGPS_DIR = "logps"  # <ws>/logps/<lp-id>/
LOGPS_FILE = "logps.parquet"
CONTRACT = "model_logps"
OF, MODEL = "logps_of", "logps_model"


def dataset_artifact(dataset_id: str) -> Artifact:
    """A dataset version as a stage input: by id, its folder named relative to the workspace."""
    return Artifact(dataset_id, "dataset", str(Workspace(Path()).dataset_dir(dataset_id)))


def check_model_for(ws: Workspace, dataset_id: str, model: Path) -> dict[str, Any]:
    """What fails before any work, in one line: a missing or corrupt dataset version, a model whose
    tokenizer is not the shards' one, pickled weights. Returns the dataset's manifest."""
    manifest = load_manifest(ws, dataset_id)
    check_tokenizer(manifest, model)
    require_safetensors(model)
    for split in manifest.get("splits", {}):
        shard_paths(ws, dataset_id, split)
    return manifest


# --- the forward passes -----------------------------------------------------------------------------


def token_budget_batches(
    order: np.ndarray, lengths: np.ndarray, batch_size: int, token_budget: int
) -> list[np.ndarray]:
    """Cut `order` (longest first) into batches of at most `batch_size` pairs and `token_budget` padded
    tokens (2 sequences × the batch's longest); a pair longer than the budget still gets its own batch."""
    batches, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])  # longest first: the first row sets the padded width
        count = max(1, min(batch_size, token_budget // max(2 * longest, 1)))
        batches.append(order[start : start + count])
        start += count
    return batches


def split_reference_logps(
    model: Any,  # a model, or its forward under autocast (Precision.forward_of)
    dataset: ShardDataset,
    pad_token_id: int,
    batch_size: int,
    device: Any,
    progress: bool | Callable[[str, int, int], None] = False,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-probs of chosen and rejected (float32) for the `rows` of `dataset` (default: every
    row), in the order of `rows`. `progress`: True shows a bar; a function is told (split, pairs done,
    pairs) after each batch instead (a stage's `ctx.progress`, shown by the console)."""
    import torch
    from rich.progress import Progress

    from dpop.logps import PairCollator, pair_logps

    rows = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
    collate = PairCollator(pad_token_id=pad_token_id)
    chosen = np.zeros(len(dataset), dtype=np.float32)
    rejected = np.zeros(len(dataset), dtype=np.float32)
    # Longest first: similar lengths share a batch (little padding) and an out-of-memory shows at once.
    lengths = dataset.lengths()
    order = rows[np.argsort(-lengths[rows], kind="stable")]
    report, done = (progress if callable(progress) else None), 0
    with Progress(disable=progress is not True, transient=True) as bar, torch.inference_mode():
        task = bar.add_task(f"log-probs ({dataset.name})", total=len(order))
        for indices in token_budget_batches(order, lengths, batch_size, token_budget):
            batch = collate([dataset[int(index)] for index in indices])
            batch = {key: value.to(device) for key, value in batch.items()}
            result = pair_logps(model, batch)
            chosen[indices] = result.chosen.float().cpu().numpy()
            rejected[indices] = result.rejected.float().cpu().numpy()
            bar.advance(task, len(indices))
            done += len(indices)
            if report is not None:
                report(dataset.name, done, len(order))
    return chosen[rows], rejected[rows]


def pad_token_id(model_path: Path) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"the tokenizer in {model_path} has neither a pad nor an eos token")
    return pad


@dataclass
class SplitLogps:
    """One split's log-probs in row order, and how many pairs were computed vs found in the cache."""

    chosen: np.ndarray
    rejected: np.ndarray
    computed: int
    cached: int


@dataclass
class _Forward:
    """The model, loaded on first use only: a dataset whose pairs are all cached loads no model."""

    model_path: Path
    precision: Precision
    trust_remote_code: bool
    _loaded: tuple[Any, Any, int] | None = None

    def get(self) -> tuple[Any, Any, int]:
        if self._loaded is None:
            import torch

            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            model = load_causal_lm(
                self.model_path, dtype=self.precision.torch_dtype(), trust_remote_code=self.trust_remote_code
            )
            model.to(device).eval()
            forward = self.precision.forward_of(model, device.type)
            self._loaded = (forward, device, pad_token_id(self.model_path))
        return self._loaded


def dataset_logps(
    ws: Workspace,
    dataset_id: str,
    model_path: Path,
    precision: Precision | str = "float32",
    batch_size: int | None = None,
    trust_remote_code: bool = False,
    progress: bool | Callable[[str, int, int], None] = False,
    model_id: str | None = None,
    use_cache: bool = True,
    on_split: Any = None,
) -> dict[str, SplitLogps]:
    """Every split's log-probs under the model, computing only the pairs the cache lacks (module doc)."""
    precision = Precision.parse(precision)
    manifest = load_manifest(ws, dataset_id)
    forward = _Forward(Path(model_path), precision, trust_remote_code)
    cache = LogpsCache(ws, model_id or model_artifact(model_path).id, precision.label) if use_cache else None
    result: dict[str, SplitLogps] = {}
    for split in SPLITS:
        if split not in manifest.get("splits", {}):
            continue
        if on_split is not None:
            on_split(split)
        dataset = ShardDataset.open(ws, dataset_id, split)
        result[split] = _split_logps(dataset, forward, cache, batch_size or DEFAULT_BATCH_SIZE, progress)
    return result


def _split_logps(
    dataset: ShardDataset,
    forward: _Forward,
    cache: LogpsCache | None,
    batch_size: int,
    progress: bool | Callable[[str, int, int], None],
) -> SplitLogps:
    count = len(dataset)
    digests = pair_digests(dataset.table) if cache is not None else []
    if cache is not None:
        hit = cache.lookup(digests)
        chosen, rejected, missing = hit.chosen.copy(), hit.rejected.copy(), np.flatnonzero(~hit.found)
    else:
        chosen, rejected = np.zeros(count, np.float32), np.zeros(count, np.float32)
        missing = np.arange(count)
    if len(missing):
        model, device, pad = forward.get()
        new_chosen, new_rejected = split_reference_logps(
            model, dataset, pad, batch_size, device, progress, rows=missing
        )
        chosen[missing], rejected[missing] = new_chosen, new_rejected
        if cache is not None:
            cache.add([digests[i] for i in missing], new_chosen, new_rejected)
    return SplitLogps(chosen, rejected, computed=len(missing), cached=count - len(missing))


# --- the stage --------------------------------------------------------------------------------------


def logps_dir(ws: Workspace, logps_id: str) -> Path:
    return ws.root / LOGPS_DIR / logps_id


@dataclass(frozen=True)
class ModelPassStage(Stage):
    """What a stage that runs `model` over every pair of `dataset_id` in precision `dtype` is given (this
    table's stage and `dpop.refs.LogpsStage`). `batch_size`, `trust_remote_code` and `progress` change how
    it runs, not what it writes."""

    dataset_id: str
    model: Path
    dtype: Precision | str = "float32"
    batch_size: int | None = None
    trust_remote_code: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", require_model_dir(self.model))
        object.__setattr__(self, "dtype", Precision.parse(self.dtype))

    @cached_property
    def model_artifact(self) -> Artifact:
        return model_artifact(self.model)

    def check(self, ws: Workspace) -> dict[str, Any]:
        """What fails before any work, in one line: a missing or corrupt parent version, a model whose
        tokenizer is not the shards' one, pickled weights. Returns the parent's manifest."""
        return check_model_for(ws, self.dataset_id, self.model)

    def split_logps(self, ctx: StageContext, **options: Any) -> dict[str, SplitLogps]:
        """`dataset_logps` of this stage's model over every split, its progress on the console (pairs of
        each split) unless a bar of its own was asked for."""
        return dataset_logps(
            ctx.ws,
            self.dataset_id,
            self.model,
            self.dtype,
            self.batch_size,
            self.trust_remote_code,
            self.progress or (lambda split, done, total: ctx.progress(done, total, f"{split} split")),
            model_id=self.model_artifact.id,
            **options,
        )


@dataclass(frozen=True)
class ModelLogpsStage(ModelPassStage):
    """`model`'s log-probs of every pair of `dataset_id`, in precision `dtype`, as a `model_logps` table."""

    name = "model_logps"
    version = 1
    id_prefix = "lp"

    def inputs(self) -> list[Input]:
        return [Input(dataset_artifact(self.dataset_id), OF), Input(self.model_artifact, MODEL)]

    def config(self) -> dict[str, Any]:
        return {"dtype": self.dtype.label}

    def folder(self, ws: Workspace) -> Path:
        return logps_dir(ws, self.id)

    def label(self) -> str:
        return f"log-probs of {self.dataset_id} under {self.model_artifact.id} ({self.dtype.label})"

    def run(self, ctx: StageContext) -> StageOutput:
        self.check(ctx.ws)
        splits = self.split_logps(ctx)
        table = logps_table(ctx.ws, self.dataset_id, splits)
        pq.write_table(table, ctx.out / LOGPS_FILE)
        computed = sum(s.computed for s in splits.values())
        cached = sum(s.cached for s in splits.values())
        meta = {
            "model": self.model_artifact.id,
            "dtype": self.dtype.label,
            "dataset_id": self.dataset_id,
        }
        output = Artifact(self.id, "logps", ctx.path(LOGPS_FILE), table.num_rows, CONTRACT, meta)
        return StageOutput(
            outputs=[output],
            counts={
                "rows_in": table.num_rows,
                "rows_out": table.num_rows,
                "computed": computed,
                "cached": cached,
            },
            summary={**meta, "computed": computed, "cached": cached},
        )


def logps_table(ws: Workspace, dataset_id: str, splits: dict[str, SplitLogps]) -> pa.Table:
    """The `model_logps` rows of a dataset version, split by split in row order."""
    tables = []
    for split, values in splits.items():
        shards = ShardDataset.open(ws, dataset_id, split).table
        tables.append(
            pa.table(
                {
                    "pair_id": shards.column("pair_id"),
                    "split": pa.array([split] * shards.num_rows, pa.string()),
                    "chosen_logps": pa.array(values.chosen, pa.float32()),
                    "rejected_logps": pa.array(values.rejected, pa.float32()),
                    "chosen_tokens": pc.list_value_length(shards.column("chosen_ids")).cast(pa.int32()),
                    "rejected_tokens": pc.list_value_length(shards.column("rejected_ids")).cast(pa.int32()),
                }
            )
        )
    contract = load_contract(CONTRACT)
    table = pa.concat_tables(tables) if tables else contract.schema().empty_table()
    return contract.conform(table)


def compute_model_logps(
    workspace: Workspace | str | os.PathLike[str],
    dataset_id: str,
    model_path: str | os.PathLike[str],
    dtype: Precision | str = "float32",
    batch_size: int | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
    executor: Executor = INLINE,
) -> StageRecord:
    """The log-probs of `model_path` on `dataset_id` through the stage runner (reused when they exist;
    computed only for pairs the cache lacks otherwise); returns the stage's record (output: `logps`)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    stage = ModelLogpsStage(dataset_id, Path(model_path), dtype, batch_size, trust_remote_code, progress)
    stage.check(ws)
    return run_stage(ws, stage, executor)


def read_logps(ws: Workspace, record: StageRecord) -> pa.Table:
    """The `model_logps` table a record names."""
    return pq.read_table(record.output("logps").location(ws))
