"""Reference log-probabilities computed once and stored in the shards: training then loads no reference model.

`LogpsStage` runs a model (no grad, large length-sorted batches) over every split of a tokenised dataset
version and writes a *new* version whose shards are the same rows with `ref_chosen_logps` /
`ref_rejected_logps` filled. Its inputs are the tokenised version (`reference_logps_from`) and the model
(`reference_model`, by `dpop.model_io.model_artifact`: a content id, never a path); its id is
`<base dataset id>-ref-<hash>` of both and of the precision, so asking again for the same triple reuses
the folder, in any workspace. The runner writes it under a temporary name renamed when complete: a crash
leaves no version a reader could take for whole. `compute_reference_logps` is the convenience entry.

The precision (`dtype`, a `dpop.model_io.Precision` or its label) must be the one the policy trains in
(`precision_for_training(config)`): at step 0 the policy is the reference, so its log-ratio is 0 only
when both forward passes run the same arithmetic; bf16 references against a float32 policy would give
every pair a log-ratio of a few nats and switch DPOP's penalty on before any update. The manifest
records it (`reference_model.dtype`) and training refuses a mismatch (`check_reference_precision`).

The reference is one model among others (`dpop.model_logps`: `dpop logps` stores any model's log-probs
in a table keyed by pair id); this stage is its shorthand that also fills the shards. Both compute
through `dpop.model_logps.dataset_logps`, which runs the model only on pairs the workspace's per-pair
cache (token ids digest, model id, precision) has not seen: refreshing a dataset with new pairs costs
the new pairs, not a full pass.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dpop.data import ShardDataset
from dpop.model_io import Precision
from dpop.model_logps import (  # noqa: F401  (token_budget_batches, split_reference_logps: re-exported)
    ModelPassStage,
    dataset_artifact,
    split_reference_logps,
    token_budget_batches,
)
from pipeline.identity import stable_hash
from pipeline.manifest import SplitInfo, shard_artifacts
from pipeline.shards import CONTRACT, write_manifest, write_split
from pipeline.stage import (
    INLINE,
    Artifact,
    Executor,
    Input,
    StageContext,
    StageOutput,
    run_stage,
    workspace_path,
)
from pipeline.workspace import Workspace

# Files of the parent version that describe its rows and travel with the new version unchanged.
CARRIED_FILES = ("pairs.parquet", "rejections.parquet")
STAGE_NAME = "logps"
STAGE_VERSION = 1
FROM, MODEL = "reference_logps_from", "reference_model"


def reference_dataset_id(
    dataset_id: str, reference_model_id: str, precision: Precision | str = "float32"
) -> str:
    """`<base dataset id>-ref-<hash>`: the hash of what any stage id hashes (name, version, input ids
    and relations, config), so log-probs of another model or precision are another version."""
    identity = {
        "stage": STAGE_NAME,
        "version": STAGE_VERSION,
        "inputs": sorted([[dataset_id, FROM], [reference_model_id, MODEL]]),
        "config": {"dtype": Precision.parse(precision).label},
    }
    return f"{dataset_id.split('-ref-')[0]}-ref-{stable_hash(identity, 12)}"


@dataclass(frozen=True)
class LogpsStage(ModelPassStage):
    """`model`'s log-probs of every pair of `dataset_id`, in precision `dtype`, as a new dataset version."""

    name = STAGE_NAME
    version = STAGE_VERSION
    id_prefix = "ref"  # ids read <dataset>-ref-<hash> (see `id`)

    @cached_property
    def id(self) -> str:  # type: ignore[override]
        return reference_dataset_id(self.dataset_id, self.model_artifact.id, self.dtype)

    def inputs(self) -> list[Input]:
        return [Input(dataset_artifact(self.dataset_id), FROM), Input(self.model_artifact, MODEL)]

    def config(self) -> dict[str, Any]:
        return {"dtype": self.dtype.label}

    def folder(self, ws: Workspace) -> Path:
        return ws.dataset_dir(self.id)

    def label(self) -> str:
        return f"log-probs of {self.dataset_id} ({self.dtype.label})"

    def run(self, ctx: StageContext) -> StageOutput:
        manifest = self.check(ctx.ws)
        values = self.split_logps(ctx, on_split=lambda split: ctx.progress(0, None, f"{split} split"))
        splits: dict[str, Any] = {}
        for split, logps in values.items():
            dataset = ShardDataset.open(ctx.ws, self.dataset_id, split)
            table = _set_column(dataset.table, "ref_chosen_logps", logps.chosen)
            table = _set_column(table, "ref_rejected_logps", logps.rejected)
            rows_per_shard = max((info["rows"] for info in manifest["splits"][split]["shards"]), default=1)
            infos = write_split(ctx.out, split, table, rows_per_shard=max(rows_per_shard, 1))
            splits[split] = {"rows": table.num_rows, "shards": [info.as_dict() for info in infos]}
            del dataset, table
        for name in CARRIED_FILES:
            if (ctx.ws.dataset_dir(self.dataset_id) / name).is_file():
                shutil.copyfile(ctx.ws.dataset_dir(self.dataset_id) / name, ctx.out / name)
        write_manifest(ctx.out, self._manifest(manifest, splits))
        computed = sum(v.computed for v in values.values())
        return self._output(ctx, splits, computed)

    def _manifest(self, parent: dict[str, Any], splits: dict[str, Any]) -> dict[str, Any]:
        manifest = {key: value for key, value in parent.items() if key != "contract"}
        reference = self.model_artifact.id
        manifest.update(
            dataset_id=self.id,
            parents=[
                {"id": self.dataset_id, "kind": "dataset", "relation": FROM},
                {"id": reference, "kind": "model", "relation": MODEL},
            ],
            reference_model={"id": reference, "path": str(self.model), "dtype": self.dtype.label},
            splits=splits,
        )
        return manifest

    def _output(self, ctx: StageContext, splits: dict[str, Any], computed: int) -> StageOutput:
        rows = sum(split["rows"] for split in splits.values())
        meta = {"reference_model": self.model_artifact.id, "dtype": self.dtype.label}
        outputs = [Artifact(self.id, "dataset", workspace_path(ctx.ws, ctx.folder), rows, CONTRACT, meta)]
        outputs += shard_artifacts(ctx, self.id, {s: SplitInfo.from_json(i) for s, i in splits.items()})
        return StageOutput(
            outputs=outputs,
            counts={"rows_in": rows, "rows_out": rows, "computed": computed, "cached": rows - computed},
            summary={"reference_model": self.model_artifact.id, "dtype": self.dtype.label},
        )


def compute_reference_logps(
    workspace: Workspace | str | os.PathLike[str],
    dataset_id: str,
    model_path: str | os.PathLike[str],
    batch_size: int | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
    dtype: Precision | str = "float32",
    executor: Executor = INLINE,
) -> str:
    """Fill the ref_* columns of `dataset_id` with `model_path`'s log-probs computed in precision
    `dtype` (the policy's: `precision_for_training(config)`) through the stage runner; return the new
    dataset id. The parent is checked first, so a corrupt one fails even when the result exists."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    stage = LogpsStage(dataset_id, Path(model_path), dtype, batch_size, trust_remote_code, progress)
    stage.check(ws)
    return run_stage(ws, stage, executor).id


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


def _set_column(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    index = table.column_names.index(name)
    return table.set_column(
        index, pa.field(name, pa.float32(), nullable=True), pa.array(values, pa.float32())
    )
