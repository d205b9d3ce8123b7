"""The collator, the one-pass log-probs (padding-invariant), the memory-mapped dataset and the sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpop.data import LengthGroupedSampler, ShardDataset
from dpop.logps import PairCollator, pair_logps
from tests.dpop.conftest import write_dataset


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_collator_layout():
    rows = [
        {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6], "common_prefix_len": 0},
        {"prompt_ids": [7, 8], "chosen_ids": [9, 10, 11], "rejected_ids": [9, 12], "common_prefix_len": 1},
    ]
    batch = PairCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 4, 5],
        [7, 8, 9, 10, 11],
        [1, 2, 3, 6, 0],
        [7, 8, 9, 12, 0],
    ]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1] * 5, [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    # the position before each response token: its logits predict that token
    assert batch["logits_mask"].int().tolist() == [
        [0, 0, 1, 1, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 0, 0],
        [0, 1, 1, 0, 0],
    ]
    # scored tokens, flat, sequence by sequence: chosen of both pairs, then rejected
    assert batch["score_labels"].tolist() == [4, 5, 9, 10, 11, 6, 9, 12]
    assert batch["score_sequence"].tolist() == [0, 0, 1, 1, 1, 2, 3, 3]
    assert batch["score_index"].tolist() == list(range(8))
    # chosen tokens after the first edit: all of pair 0, pair 1 from its second response token
    assert batch["chosen_post_edit"].int().tolist() == [1, 1, 0, 1, 1, 0, 0, 0]
    assert batch["prompt_lengths"].tolist() == [3, 2, 3, 2]
    assert batch["sequence_lengths"].tolist() == [5, 5, 4, 4]
    assert "ref_chosen_logps" not in batch
    with_refs = [{**row, "ref_chosen_logps": -1.5, "ref_rejected_logps": -2.5} for row in rows]
    batch = PairCollator(pad_token_id=0, pad_to_multiple_of=8)(with_refs)
    assert batch["input_ids"].shape == (4, 8)
    assert batch["ref_chosen_logps"].tolist() == [-1.5, -1.5]


def test_logps_match_a_plain_log_softmax(model):
    rows = [
        {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9, 2], "rejected_ids": [10, 2], "common_prefix_len": 0},
        {"prompt_ids": [11], "chosen_ids": [12, 13, 14, 2], "rejected_ids": [12, 2], "common_prefix_len": 1},
    ]
    with torch.no_grad():
        result = pair_logps(model, PairCollator(pad_token_id=0)(rows))
        expected = []
        for side in ("chosen_ids", "rejected_ids"):
            for row in rows:
                ids = torch.tensor([row["prompt_ids"] + row[side]])
                logprobs = model(ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
                expected.append(logprobs[len(row["prompt_ids"]) - 1 :].sum().item())
    assert torch.cat([result.chosen, result.rejected]).tolist() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("pass_attention_mask", [False, True])
def test_padding_never_changes_a_pairs_logps(model, pass_attention_mask):
    short = {
        "prompt_ids": [5, 6, 7],
        "chosen_ids": [8, 9, 2],
        "rejected_ids": [10, 2],
        "common_prefix_len": 0,
    }
    long = {
        "prompt_ids": list(range(20, 80)),
        "chosen_ids": list(range(100, 160)) + [2],
        "rejected_ids": list(range(100, 150)) + [2],
        "common_prefix_len": 50,
    }
    collate = PairCollator(pad_token_id=0)
    with torch.no_grad():
        alone = pair_logps(model, collate([short]), pass_attention_mask)
        together = pair_logps(model, collate([long, short]), pass_attention_mask)
        padded = pair_logps(
            model, PairCollator(pad_token_id=0, pad_to_multiple_of=64)([short]), pass_attention_mask
        )
    for other in (together, padded):
        index = 1 if other is together else 0
        assert other.chosen[index].item() == pytest.approx(alone.chosen[0].item(), abs=1e-5)
        assert other.rejected[index].item() == pytest.approx(alone.rejected[0].item(), abs=1e-5)


def test_dataset_is_memory_mapped_and_complete(workspace, tiny_model_dir):
    dataset_id = write_dataset(workspace, tiny_model_dir, train=45, eval=5, rows_per_shard=20)
    dataset = ShardDataset.open(workspace, dataset_id, "train")
    assert len(dataset) == 45
    assert len(dataset.table.column("prompt_ids").chunks) == 3  # three shard files, not copied together
    row = dataset[44]
    assert row["prompt_ids"].dtype == np.int32 and row["chosen_ids"][-1] == row["rejected_ids"][-1]
    assert np.isnan(row["ref_chosen_logps"]) and not dataset.has_reference_logps()
    expected = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in dataset]
    assert dataset.lengths().tolist() == expected
    # zero-copy: the token buffer lives in the memory-mapped file, not in a copy
    values = dataset.table.column("prompt_ids").chunks[0].values
    assert not values.buffers()[1].is_mutable
    with pytest.raises(IndexError):
        dataset[45]


def test_missing_columns_named(workspace):
    import pyarrow as pa

    with pytest.raises(ValueError, match="missing column\\(s\\) chosen_ids, rejected_ids, common_prefix_len"):
        ShardDataset(pa.table({"prompt_ids": [[1]]}), name="bad")


def test_sampler_is_deterministic_grouped_and_batch_size_free():
    lengths = np.random.default_rng(0).integers(5, 500, size=1000)
    sampler = LengthGroupedSampler(lengths, window=100, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(1000))
    assert order == list(LengthGroupedSampler(lengths, window=100, seed=3))
    for start in range(0, 1000, 100):
        window = lengths[order[start : start + 100]]
        assert (np.diff(window) <= 0).all()
    sampler.set_epoch(1)
    assert list(sampler) != order
    # padding: mean of (max length in batch) over batches of 8 is much lower than for a plain shuffle
    shuffled = np.random.default_rng(1).permutation(1000)
    grouped_pad = np.mean([lengths[order[i : i + 8]].max() for i in range(0, 1000, 8)])
    random_pad = np.mean([lengths[shuffled[i : i + 8]].max() for i in range(0, 1000, 8)])
    assert grouped_pad < 0.8 * random_pad
