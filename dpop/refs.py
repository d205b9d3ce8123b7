"""Reference log-probabilities computed once and stored in the shards: training then loads no reference model.

`compute_reference_logps` runs the reference model (no grad, large length-sorted batches) over every
split of a tokenised dataset version and writes a *new* version whose shards are the same rows with
`ref_chosen_logps` / `ref_rejected_logps` filled. Its parents are the tokenised version
(`reference_logps_from`) and the model (`reference_model`); its id is a hash of both and of the
precision, so asking again for the same triple reuses the folder. The folder is built under a
temporary name and renamed: a crash leaves no version a reader could take for whole.

The precision (`dtype`, a `dpop.model_io.Precision` or its label) must be the one the policy trains in
(`precision_for_training(config)`): at step 0 the policy is the reference, so its log-ratio is 0 only
when both forward passes run the same arithmetic; bf16 references against a float32 policy would give
every pair a log-ratio of a few nats and switch DPOP's penalty on before any update. The manifest
records it (`reference_model.dtype`) and training refuses a mismatch (`check_reference_precision`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dpop.data import ShardDataset
from dpop.model_io import (
    Precision,
    check_tokenizer,
    load_causal_lm,
    model_id,
    record_model,
    require_model_dir,
)
from pipeline.atomic import atomic_dir
from pipeline.catalog import Catalog
from pipeline.identity import stable_hash
from pipeline.shards import MANIFEST, SPLITS, load_manifest, shard_paths, write_manifest, write_split
from pipeline.workspace import Workspace

DEFAULT_BATCH_SIZE = 64
# Padded tokens per forward pass (both sequences of each pair): long pairs get smaller batches, so
# activation and attention memory stay bounded whatever the length mix.
DEFAULT_TOKEN_BUDGET = 65_536
# Files of the parent version that describe its rows and travel with the new version unchanged.
CARRIED_FILES = ("pairs.parquet", "rejections.parquet")


def reference_dataset_id(
    dataset_id: str, reference_model_id: str, precision: Precision | str = "float32"
) -> str:
    identity = [dataset_id, reference_model_id, Precision.parse(precision).label]
    return f"{dataset_id.split('-ref-')[0]}-ref-{stable_hash(identity, 12)}"


def compute_reference_logps(
    workspace: Workspace | str | os.PathLike[str],
    dataset_id: str,
    model_path: str | os.PathLike[str],
    batch_size: int | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
    dtype: Precision | str = "float32",
) -> str:
    """Fill the ref_* columns of `dataset_id` with `model_path`'s log-probs computed in precision
    `dtype` (the policy's: `precision_for_training(config)`); return the new dataset id."""
    import torch

    precision = Precision.parse(dtype)
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    model_path = require_model_dir(model_path)
    manifest = load_manifest(ws, dataset_id)
    check_tokenizer(manifest, model_path)
    for split in manifest.get("splits", {}):
        shard_paths(ws, dataset_id, split)  # a corrupt parent fails here, even when the result exists
    reference_id = model_id(model_path)
    new_id = reference_dataset_id(dataset_id, reference_id, precision)
    new_dir = ws.dataset_dir(new_id)
    catalog = Catalog(ws)
    if (new_dir / MANIFEST).is_file():
        record_model(catalog, model_path, role="reference", identifier=reference_id)
        return new_id

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_causal_lm(model_path, dtype=precision.torch_dtype(), trust_remote_code=trust_remote_code)
    model.to(device).eval()
    forward = precision.forward_of(model, device.type)
    pad_token_id = _pad_token_id(model_path)
    batch_size = batch_size or DEFAULT_BATCH_SIZE

    splits: dict[str, Any] = {}
    with atomic_dir(new_dir) as tmp:
        for split in SPLITS:
            if split not in manifest.get("splits", {}):
                continue
            dataset = ShardDataset.open(ws, dataset_id, split)
            chosen, rejected = split_reference_logps(
                forward, dataset, pad_token_id, batch_size, device, progress
            )
            table = dataset.table
            table = _set_column(table, "ref_chosen_logps", chosen)
            table = _set_column(table, "ref_rejected_logps", rejected)
            rows_per_shard = max((info["rows"] for info in manifest["splits"][split]["shards"]), default=1)
            infos = write_split(tmp, split, table, rows_per_shard=max(rows_per_shard, 1))
            splits[split] = {"rows": table.num_rows, "shards": [info.as_dict() for info in infos]}
            del dataset, table
        for name in CARRIED_FILES:
            if (ws.dataset_dir(dataset_id) / name).is_file():
                shutil.copyfile(ws.dataset_dir(dataset_id) / name, tmp / name)
        new_manifest = {key: value for key, value in manifest.items() if key != "contract"}
        new_manifest.update(
            dataset_id=new_id,
            parents=[
                {"id": dataset_id, "kind": "dataset", "relation": "reference_logps_from"},
                {"id": reference_id, "kind": "model", "relation": "reference_model"},
            ],
            reference_model={"id": reference_id, "path": str(model_path), "dtype": precision.label},
            splits=splits,
        )
        write_manifest(tmp, new_manifest)

    rows = sum(split["rows"] for split in splits.values())
    with catalog.batch() as batch:
        record_model(batch, model_path, role="reference", identifier=reference_id)
        batch.record_artifact(
            new_id,
            "dataset",
            uri=str(new_dir),
            rows=rows,
            meta={"reference_model": reference_id, "dtype": precision.label},
            parents={dataset_id: "reference_logps_from", reference_id: "reference_model"},
        )
        for split in splits.values():
            for info in split["shards"]:
                batch.record_artifact(
                    info["sha256"],
                    "shard",
                    uri=str(new_dir / info["file"]),
                    rows=info["rows"],
                    parents={new_id: "part_of"},
                )
    return new_id


def check_reference_precision(manifest: dict[str, Any], precision: Precision | str) -> None:
    """Refuse stored reference log-probs computed in another precision than the policy trains in:
    the policy would start with a log-ratio that is rounding, not learning (see the module doc)."""
    policy = Precision.parse(precision)
    reference = manifest.get("reference_model") or {}
    stored = reference.get("dtype")
    if stored == policy.label:
        return
    parent = next(
        (p["id"] for p in manifest.get("parents", []) if p.get("relation") == "reference_logps_from"),
        manifest.get("dataset_id", "").split("-ref-")[0],
    )
    flags = f"--dtype {policy.weights}" + (f" --autocast {policy.autocast}" if policy.autocast else "")
    raise ValueError(
        f"dataset {manifest.get('dataset_id')} holds reference log-probs computed in {stored or 'an unrecorded precision'}, "
        f"but the policy trains in {policy.label}: recompute them with "
        f"`dpop refs --dataset {parent} --model {reference.get('path', 'REFERENCE')} {flags}`"
    )


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
    progress: bool = False,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-probs of chosen and rejected for every row of `dataset`, in row order (float32)."""
    import torch
    from rich.progress import Progress

    from dpop.logps import PairCollator, pair_logps

    collate = PairCollator(pad_token_id=pad_token_id)
    chosen = np.zeros(len(dataset), dtype=np.float32)
    rejected = np.zeros(len(dataset), dtype=np.float32)
    # Longest first: similar lengths share a batch (little padding) and an out-of-memory shows at once.
    lengths = dataset.lengths()
    order = np.argsort(-lengths, kind="stable")
    with Progress(disable=not progress, transient=True) as bar, torch.inference_mode():
        task = bar.add_task(f"reference log-probs ({dataset.name})", total=len(order))
        for indices in token_budget_batches(order, lengths, batch_size, token_budget):
            batch = collate([dataset[int(index)] for index in indices])
            batch = {key: value.to(device) for key, value in batch.items()}
            result = pair_logps(model, batch)
            chosen[indices] = result.chosen.float().cpu().numpy()
            rejected[indices] = result.rejected.float().cpu().numpy()
            bar.advance(task, len(indices))
    return chosen, rejected


def _set_column(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    index = table.column_names.index(name)
    return table.set_column(
        index, pa.field(name, pa.float32(), nullable=True), pa.array(values, pa.float32())
    )


def _pad_token_id(model_path: Path) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"the tokenizer in {model_path} has neither a pad nor an eos token")
    return pad
