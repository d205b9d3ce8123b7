"""Stored reference log-probs: a new dataset version with the ref columns, its lineage, and reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpop.data import ShardDataset
from dpop.logps import PairCollator, pair_logps
from dpop.model_io import PickledWeightsError, load_causal_lm, model_id
from dpop.refs import compute_reference_logps
from pipeline.catalog import Catalog
from pipeline.shards import load_manifest, shard_paths
from tests.dpop.conftest import write_dataset


def test_reference_logps_written_to_a_new_version(workspace, tiny_model_dir):
    dataset_id = write_dataset(workspace, tiny_model_dir, train=30, eval=6, rows_per_shard=8)
    new_id = compute_reference_logps(workspace, dataset_id, tiny_model_dir, batch_size=7, progress=False)
    assert new_id != dataset_id

    manifest = load_manifest(workspace, new_id)
    reference = model_id(tiny_model_dir)
    assert manifest["dataset_id"] == new_id
    assert manifest["reference_model"]["id"] == reference
    assert manifest["reference_model"]["dtype"] == "float32"  # the default: training's default too
    assert {(p["id"], p["relation"]) for p in manifest["parents"]} == {
        (dataset_id, "reference_logps_from"),
        (reference, "reference_model"),
    }
    assert manifest["tokenizer"] == load_manifest(workspace, dataset_id)["tokenizer"]
    assert [len(shard_paths(workspace, new_id, split, verify=True)) for split in ("train", "eval")] == [4, 1]

    model = load_causal_lm(tiny_model_dir, dtype=torch.float32).eval()
    for split in ("train", "eval"):
        before, after = (
            ShardDataset.open(workspace, dataset_id, split),
            ShardDataset.open(workspace, new_id, split),
        )
        assert after.has_reference_logps() and len(after) == len(before)
        # the same rows, in the same order, with the values one forward pass gives (any batch size)
        rows = [before[i] for i in range(len(before))]
        with torch.no_grad():
            expected = pair_logps(model, PairCollator(pad_token_id=0)(rows))
        stored_chosen = after.table.column("ref_chosen_logps").to_numpy()
        stored_rejected = after.table.column("ref_rejected_logps").to_numpy()
        np.testing.assert_allclose(stored_chosen, expected.chosen.numpy(), atol=1e-4)
        np.testing.assert_allclose(stored_rejected, expected.rejected.numpy(), atol=1e-4)
        assert after.table.column("pair_id").to_pylist() == before.table.column("pair_id").to_pylist()

    catalog = Catalog(workspace)
    assert set(catalog.parents(new_id)) == {
        (dataset_id, "reference_logps_from"),
        (reference, "reference_model"),
    }
    assert catalog.get(reference).kind == "model"
    assert len([c for c in catalog.children(new_id) if c[1] == "part_of"]) == 5

    # asking again reuses the version
    mtime = (workspace.dataset_dir(new_id) / "manifest.json").stat().st_mtime_ns
    assert compute_reference_logps(workspace, dataset_id, tiny_model_dir, progress=False) == new_id
    assert (workspace.dataset_dir(new_id) / "manifest.json").stat().st_mtime_ns == mtime


def test_missing_model_and_dataset(workspace, tiny_model_dir, tmp_path):
    dataset_id = write_dataset(workspace, tiny_model_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compute_reference_logps(workspace, dataset_id, tmp_path / "nowhere", progress=False)
    with pytest.raises(RuntimeError, match="not found"):
        compute_reference_logps(workspace, "nope", tiny_model_dir, progress=False)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (pickled / name).write_bytes((tiny_model_dir / name).read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(PickledWeightsError, match="only pickled weights \\(pytorch_model.bin\\)"):
        compute_reference_logps(workspace, dataset_id, pickled, progress=False)
    (pickled / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        compute_reference_logps(workspace, dataset_id, pickled, progress=False)
