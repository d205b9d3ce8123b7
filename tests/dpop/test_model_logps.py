"""Log-probs of any model stored once per pair (`dpop logps`), and the per-pair cache that makes a refreshed
dataset cost only its new pairs: equal to a full pass within float tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpop.data import ShardDataset
from dpop.logps import PairCollator, pair_logps
from dpop.logps_cache import MAX_SEGMENTS, LogpsCache, pair_digests
from dpop.model_io import load_causal_lm, model_id, tokenizer_sha256
from dpop.model_logps import compute_model_logps, dataset_logps
from dpop.refs import compute_reference_logps
from pipeline.catalog import Catalog
from pipeline.contracts import validate
from pipeline.shards import load_manifest, shard_schema, write_manifest, write_split
from tests.dpop.conftest import synthetic_pairs, tokenised_rows, write_dataset


def write_pairs(workspace, model_dir: Path, dataset_id: str, train: list, eval: list) -> str:
    """A dataset version of exactly these (prompt, chosen, rejected) pairs."""
    out = workspace.dataset_dir(dataset_id)
    splits = {}
    for split, pairs in (("train", train), ("eval", eval)):
        table = pa.Table.from_pylist(tokenised_rows(model_dir, pairs), schema=shard_schema())
        infos = write_split(out, split, table, rows_per_shard=16)
        splits[split] = {"rows": table.num_rows, "shards": [info.as_dict() for info in infos]}
    manifest = {
        "dataset_id": dataset_id,
        "parents": [],
        "tokenizer": {"path": str(model_dir), "sha256": tokenizer_sha256(model_dir), "pad_token_id": 0},
        "reference_model": None,
        "splits": splits,
    }
    write_manifest(out, manifest)
    return dataset_id


@pytest.fixture(scope="module")
def probe_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A second model with the same tokenizer and other weights (what a probe is to the reference)."""
    from demo.tiny_model import make_tiny_model

    return make_tiny_model(
        tiny_model_dir,
        tmp_path_factory.mktemp("probe") / "model",
        num_layers=2,
        hidden_size=32,
        num_heads=2,
        seed=7,
    )


def full_pass(model_dir: Path, dataset: ShardDataset) -> tuple[np.ndarray, np.ndarray]:
    model = load_causal_lm(model_dir, dtype=torch.float32).eval()
    rows = [dataset[i] for i in range(len(dataset))]
    with torch.no_grad():
        result = pair_logps(model, PairCollator(pad_token_id=0)(rows))
    return result.chosen.numpy(), result.rejected.numpy()


def test_logps_table_holds_one_forward_pass_per_pair(workspace, tiny_model_dir, probe_dir):
    dataset_id = write_dataset(workspace, probe_dir, train=20, eval=5, rows_per_shard=6)
    record = compute_model_logps(workspace, dataset_id, probe_dir, batch_size=4, progress=False)
    path = record.output("logps").location(workspace)
    table = pq.read_table(path)
    validate(table, "model_logps")
    assert record.id.startswith("lp-") and path == workspace.root / "logps" / record.id / "logps.parquet"
    assert record.summary == {
        "model": model_id(probe_dir),
        "dtype": "float32",
        "dataset_id": dataset_id,
        "computed": 25,
        "cached": 0,
    }
    for split in ("train", "eval"):
        dataset = ShardDataset.open(workspace, dataset_id, split)
        rows = table.filter(pc.equal(table.column("split"), split))
        chosen, rejected = full_pass(probe_dir, dataset)
        np.testing.assert_allclose(rows.column("chosen_logps").to_numpy(), chosen, atol=1e-4)
        np.testing.assert_allclose(rows.column("rejected_logps").to_numpy(), rejected, atol=1e-4)
        assert rows.column("pair_id").to_pylist() == dataset.table.column("pair_id").to_pylist()
        lengths = [len(dataset[i]["chosen_ids"]) for i in range(len(dataset))]
        assert rows.column("chosen_tokens").to_pylist() == lengths
    assert set(Catalog(workspace).parents(record.id)) == {
        (dataset_id, "logps_of"),
        (model_id(probe_dir), "logps_model"),
    }
    again = compute_model_logps(workspace, dataset_id, probe_dir, progress=False)
    assert again.reused and again.id == record.id


def test_a_refresh_computes_only_new_pairs_and_equals_a_full_pass(workspace, tiny_model_dir, probe_dir):
    old = synthetic_pairs(30, seed=3)
    new = synthetic_pairs(6, seed=4)
    first = write_pairs(workspace, tiny_model_dir, "ds-first", old[:24], old[24:])
    # the refreshed version: the same pairs in another order and split, plus 6 new ones
    refreshed = write_pairs(workspace, tiny_model_dir, "ds-refreshed", old[6:] + new[:4], old[:6] + new[4:])
    before = dataset_logps(workspace, first, tiny_model_dir, batch_size=5)
    assert sum(s.computed for s in before.values()) == 30
    after = dataset_logps(workspace, refreshed, tiny_model_dir, batch_size=7)
    assert sum(s.computed for s in after.values()) == 6 and sum(s.cached for s in after.values()) == 30
    full = dataset_logps(workspace, refreshed, tiny_model_dir, batch_size=3, use_cache=False)
    for split in ("train", "eval"):
        np.testing.assert_allclose(after[split].chosen, full[split].chosen, atol=1e-5, rtol=1e-6)
        np.testing.assert_allclose(after[split].rejected, full[split].rejected, atol=1e-5, rtol=1e-6)
    # `dpop refs` goes through the same cache: nothing left to compute, the same values in the shards
    ref_id = compute_reference_logps(workspace, refreshed, tiny_model_dir, progress=False)
    stored = ShardDataset.open(workspace, ref_id, "train").table.column("ref_chosen_logps").to_numpy()
    np.testing.assert_allclose(stored, full["train"].chosen, atol=1e-5, rtol=1e-6)
    assert load_manifest(workspace, ref_id)["reference_model"]["id"] == model_id(tiny_model_dir)


def test_the_cache_is_per_model_and_precision(workspace, tiny_model_dir, probe_dir):
    dataset_id = write_pairs(workspace, tiny_model_dir, "ds-keys", synthetic_pairs(8, seed=5), [])
    assert sum(s.computed for s in dataset_logps(workspace, dataset_id, tiny_model_dir).values()) == 8
    assert sum(s.computed for s in dataset_logps(workspace, dataset_id, probe_dir).values()) == 8
    bf16 = dataset_logps(workspace, dataset_id, tiny_model_dir, precision="bfloat16")
    assert sum(s.computed for s in bf16.values()) == 8
    assert sum(s.computed for s in dataset_logps(workspace, dataset_id, tiny_model_dir).values()) == 0


def test_a_damaged_segment_means_recomputing_never_a_wrong_value(workspace, tiny_model_dir):
    dataset_id = write_pairs(workspace, tiny_model_dir, "ds-damaged", synthetic_pairs(6, seed=6), [])
    first = dataset_logps(workspace, dataset_id, tiny_model_dir)
    cache = LogpsCache(workspace, model_id(tiny_model_dir), "float32")
    (segment,) = cache.segments()
    segment.write_bytes(b"not parquet")
    again = dataset_logps(workspace, dataset_id, tiny_model_dir)
    assert again["train"].computed == 6
    np.testing.assert_allclose(again["train"].chosen, first["train"].chosen, atol=1e-5)


def test_segments_are_merged_past_the_limit(workspace):
    cache = LogpsCache(workspace, "model-x", "float32")
    digests = [bytes([i]) * 16 for i in range(MAX_SEGMENTS + 3)]
    for index, digest in enumerate(digests):
        cache.add([digest], np.array([-float(index)]), np.array([-2.0 * index]))
    assert len(cache.segments()) <= MAX_SEGMENTS
    hit = cache.lookup([*digests, b"\xff" * 16])
    assert hit.found.tolist() == [True] * len(digests) + [False]
    assert hit.chosen[: len(digests)].tolist() == [-float(i) for i in range(len(digests))]


token_lists = st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=6)


@settings(max_examples=100, deadline=None)
@given(a=st.tuples(token_lists, token_lists, token_lists), b=st.tuples(token_lists, token_lists, token_lists))
def test_digests_are_equal_exactly_when_the_tokens_are(a, b):
    def table(rows):
        return pa.table(
            {
                name: pa.array([list(row[i]) for row in rows], pa.list_(pa.int32()))
                for i, name in enumerate(("prompt_ids", "chosen_ids", "rejected_ids"))
            }
        )

    first, second = pair_digests(table([a, b]))
    assert (first == second) == (a == b)
    # moving a token across the boundary of two lists is another pair
    moved = (a[0] + a[1][:1], a[1][1:] or [0], a[2])
    assert pair_digests(table([moved]))[0] != first or tuple(map(tuple, moved)) == tuple(map(tuple, a))
