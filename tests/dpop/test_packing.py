"""Batch layouts (`packing`): padding-free and shared-prompt batches give the padded path's log-probs,
per pair and per token, its losses and its gradients (float32, the tiny Llama), and train the same."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpop.config import HardwareFallbackWarning, TrainConfig
from dpop.data import ShardDataset
from dpop.logps import (
    PACKINGS,
    PairCollator,
    has_local_attention,
    pair_logps,
    post_edit_stats,
    resolve_packing,
)
from dpop.losses import dpop_loss
from tests.dpop.conftest import synthetic_pairs, tokenised_rows, write_dataset

# (packing, varlen): the layouts the trainer can choose on CPU and on a FlashAttention GPU
LAYOUTS = [("padding_free", False), ("padding_free", True), ("shared_prompt", False)]
TOLERANCE = 1e-5
# Sums over hundreds of tokens: float32 resolves them to ~1e-7 of their size, whatever the order.
SUM_RTOL = 1e-6


def load_model(model_dir, attention: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=attention
    ).eval()


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tiny_model_dir):
    return load_model(tiny_model_dir, request.param)


@pytest.fixture(scope="module")
def rows(tiny_model_dir):
    # prompts repeated 1-3 times and answers of 0-4 steps: lengths from ~15 to ~90 tokens
    return tokenised_rows(tiny_model_dir, synthetic_pairs(6, seed=5))


def collate(model, rows, packing="none", varlen=False, **kwargs):
    additive = model.config._attn_implementation != "sdpa"
    return PairCollator(0, packing=packing, varlen=varlen, additive_mask=additive, **kwargs)(rows)


@pytest.mark.parametrize("packing, varlen", LAYOUTS)
def test_layouts_give_the_padded_log_probs_per_pair_and_per_token(model, rows, packing, varlen):
    with torch.no_grad():
        padded = pair_logps(model, collate(model, rows))
        batch = collate(model, rows, packing, varlen)
        packed = pair_logps(model, batch)
    torch.testing.assert_close(packed.chosen, padded.chosen, atol=TOLERANCE, rtol=SUM_RTOL)
    torch.testing.assert_close(packed.rejected, padded.rejected, atol=TOLERANCE, rtol=SUM_RTOL)
    # the same tokens in the same order: per-token values line up one to one
    torch.testing.assert_close(packed.per_token, padded.per_token, atol=TOLERANCE, rtol=0)
    # and the losses (DPOP, λ = 50, a reference a little off the policy) match
    reference = (padded.chosen + 0.3, padded.rejected - 0.2)
    losses = [
        dpop_loss(p.chosen, p.rejected, *reference, beta=0.1, penalty_lambda=50.0)[0]
        for p in (padded, packed)
    ]
    torch.testing.assert_close(losses[1], losses[0], atol=TOLERANCE, rtol=0)
    # fewer positions computed than the padded batch of 2B rows
    assert batch["input_ids"].numel() < collate(model, rows)["input_ids"].numel()


def test_log_probs_are_a_plain_log_softmax_in_every_layout(tiny_model_dir, rows):
    """Against the definition: each sequence alone, full log-softmax, summed over its response."""
    model = load_model(tiny_model_dir, "sdpa")
    expected_sums, expected_tokens = [], []
    with torch.no_grad():
        for side in ("chosen_ids", "rejected_ids"):
            for row in rows:
                ids = torch.tensor([list(row["prompt_ids"]) + list(row[side])])
                logprobs = model(ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
                response = logprobs[len(row["prompt_ids"]) - 1 :]
                expected_sums.append(response.sum().item())
                expected_tokens.append(response)
        for packing in PACKINGS:
            result = pair_logps(model, collate(model, rows, packing))
            sums = torch.cat([result.chosen, result.rejected]).tolist()
            assert sums == pytest.approx(expected_sums, abs=TOLERANCE, rel=SUM_RTOL)
            torch.testing.assert_close(result.per_token, torch.cat(expected_tokens), atol=TOLERANCE, rtol=0)


def test_post_edit_metric_is_the_same_in_every_layout(model, rows):
    """`logps/chosen_post_edit`: mean chosen per-token log-prob from common_prefix_len on."""
    with torch.no_grad():
        padded_batch = collate(model, rows)
        padded = pair_logps(model, padded_batch)
        # by hand: the chosen response tokens of pair i are its first len(chosen) scored tokens
        expected, count, offset = 0.0, 0, 0
        for row in rows:
            tokens = padded.per_token[offset : offset + len(row["chosen_ids"])]
            expected += tokens[row["common_prefix_len"] :].sum().item()
            count += len(row["chosen_ids"]) - row["common_prefix_len"]
            offset += len(row["chosen_ids"])
        assert count > 0
        for packing in PACKINGS:
            batch = collate(model, rows, packing)
            total, tokens = post_edit_stats(pair_logps(model, batch).per_token, batch["chosen_post_edit"])
            assert int(tokens) == count
            assert total.item() == pytest.approx(expected, abs=TOLERANCE, rel=SUM_RTOL)


@pytest.mark.parametrize("packing, varlen", LAYOUTS)
def test_gradients_match_the_padded_path(tiny_model_dir, rows, packing, varlen):
    """The shared prompt gets the gradient of both answers, as its two copies do in the padded batch."""
    gradients = []
    for layout, flag in (("none", False), (packing, varlen)):
        model = load_model(tiny_model_dir, "sdpa").train()
        result = pair_logps(model, collate(model, rows, layout, flag))
        losses, _, _ = dpop_loss(
            result.chosen, result.rejected, result.chosen.detach() + 0.5, result.rejected.detach(), beta=0.1,
            penalty_lambda=50.0,
        )  # fmt: skip
        losses.mean().backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(gradients[1], gradients[0], atol=1e-5, rtol=1e-4)


def test_shared_prompt_layout():
    rows = [
        {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6], "common_prefix_len": 0},
        {"prompt_ids": [7], "chosen_ids": [8], "rejected_ids": [9], "common_prefix_len": 1},
    ]
    batch = PairCollator(0, packing="shared_prompt")(rows)
    # pair 0 is 6 tokens, pair 1 three: both fit a row of the longest (6)? no: 6 + 3 > 6, two rows
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 0, 0, 0]]
    # rejected's positions continue from the prompt's end, like chosen's; padding restarts
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 1, 0, 1, 2]]
    mask = batch["attention_mask"][0, 0].int().tolist()
    assert mask[5] == [1, 1, 1, 0, 0, 1]  # rejected sees the prompt and itself, not chosen
    assert mask[4] == [1, 1, 1, 1, 1, 0]  # chosen is causal as usual
    pad_rows = batch["attention_mask"][1, 0].int().tolist()
    # a pad sees only pads: no fully masked row (sdpa would give NaN), and nothing real sees it
    assert pad_rows[3] == [0, 0, 0, 1, 0, 0]
    # the prompt's last token (position 2) predicts both chosen's and rejected's first token
    assert batch["logits_mask"].int().tolist() == [[0, 0, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]]
    assert batch["score_labels"].tolist() == [4, 5, 8, 6, 9]
    assert batch["score_index"].tolist() == [0, 1, 2, 0, 2]
    assert batch["score_sequence"].tolist() == [0, 0, 1, 2, 3]
    assert batch["chosen_post_edit"].int().tolist() == [1, 1, 0, 0, 0]
    additive = PairCollator(0, packing="shared_prompt", additive_mask=True)(rows)["attention_mask"]
    assert additive.dtype == torch.float32 and additive[0, 0, 5, 3] < -1e30 and additive[0, 0, 5, 2] == 0


def test_packed_layout_rows():
    rows = [
        {"prompt_ids": [1, 2], "chosen_ids": [3, 4, 5], "rejected_ids": [6], "common_prefix_len": 0},
        {"prompt_ids": [7], "chosen_ids": [8], "rejected_ids": [9, 10], "common_prefix_len": 0},
    ]
    one_row = PairCollator(0, packing="padding_free", varlen=True)(rows)
    assert one_row["input_ids"].tolist() == [[1, 2, 3, 4, 5, 7, 8, 1, 2, 6, 7, 9, 10]]
    assert one_row["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 0, 1, 2, 0, 1, 2]]
    assert "attention_mask" not in one_row  # transformers finds the sequences from the restarts
    # bounded rows (dense-mask attention): first-fit decreasing into rows of the longest sequence (5)
    bounded = PairCollator(0, packing="padding_free", varlen=False)(rows)
    assert bounded["input_ids"].tolist() == [[1, 2, 3, 4, 5], [7, 8, 1, 2, 6], [7, 9, 10, 0, 0]]
    assert bounded["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 0, 1, 2], [0, 1, 2, 0, 1]]
    assert bounded["score_labels"].tolist() == [3, 4, 5, 8, 6, 9, 10]
    assert bounded["sequence_lengths"].tolist() == [5, 2, 3, 3]
    multiple = PairCollator(0, packing="padding_free", varlen=True, pad_to_multiple_of=8)(rows)
    assert multiple["input_ids"].shape == (1, 16) and multiple["position_ids"][0, 13:].tolist() == [0, 1, 2]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_batch_gives_the_same_log_probs_in_every_layout(tiny_model_dir, data):
    """Property: whatever the lengths and tokens, each layout agrees with the padded batch."""
    model = _property_model(tiny_model_dir)
    pairs = data.draw(st.integers(1, 5))
    tokens = st.lists(st.integers(3, 300), min_size=1, max_size=24)
    rows = []
    for _ in range(pairs):
        chosen, rejected = data.draw(tokens), data.draw(tokens)
        rows.append(
            {
                "prompt_ids": data.draw(tokens),
                "chosen_ids": chosen,
                "rejected_ids": rejected,
                "common_prefix_len": data.draw(st.integers(0, min(len(chosen), len(rejected)))),
            }
        )
    multiple = data.draw(st.sampled_from([None, 8]))
    with torch.no_grad():
        padded = pair_logps(model, PairCollator(0, pad_to_multiple_of=multiple)(rows))
        for packing, varlen in LAYOUTS:
            result = pair_logps(model, PairCollator(0, multiple, packing, varlen=varlen)(rows))
            torch.testing.assert_close(result.per_token, padded.per_token, atol=TOLERANCE, rtol=0)
            torch.testing.assert_close(result.chosen, padded.chosen, atol=TOLERANCE, rtol=SUM_RTOL)
            torch.testing.assert_close(result.rejected, padded.rejected, atol=TOLERANCE, rtol=SUM_RTOL)


_MODELS: dict = {}


def _property_model(model_dir):
    if model_dir not in _MODELS:  # hypothesis runs the body many times: load once
        _MODELS[model_dir] = load_model(model_dir, "sdpa")
    return _MODELS[model_dir]


def test_empty_prompt_is_named():
    row = {"pair_id": "abc", "prompt_ids": [], "chosen_ids": [1], "rejected_ids": [2], "common_prefix_len": 0}
    with pytest.raises(ValueError, match="pair abc has an empty prompt_ids"):
        PairCollator(0)([row])
    with pytest.raises(ValueError, match="packing must be one of none, padding_free, shared_prompt"):
        PairCollator(0, packing="packed")


def test_resolve_packing_falls_back_where_the_attention_cannot():
    assert resolve_packing("shared_prompt", "sdpa") == ("shared_prompt", None)
    assert resolve_packing("padding_free", "flash_attention_2") == ("padding_free", None)
    packing, reason = resolve_packing("shared_prompt", "flash_attention_3")
    assert packing == "padding_free" and "4D mask" in reason and "flash_attention_3" in reason
    packing, reason = resolve_packing("padding_free", "paged|sdpa")
    assert packing == "none" and "paged|sdpa" in reason
    assert resolve_packing("none", "paged|sdpa") == ("none", None)
    with pytest.raises(ValueError, match="packing must be one of"):
        resolve_packing("packed", "sdpa")
    # sliding-window / chunked layers: transformers builds their (packed) masks; a 4D mask would widen them
    packing, reason = resolve_packing("shared_prompt", "sdpa", local_attention=True)
    assert packing == "padding_free" and "sliding-window" in reason


def test_local_attention_is_found_in_the_config():
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    assert not has_local_attention(LlamaConfig())
    assert has_local_attention(MistralConfig(sliding_window=4096))
    assert not has_local_attention(MistralConfig(sliding_window=None))
    assert not has_local_attention(Qwen2Config(use_sliding_window=False))
    assert has_local_attention(Qwen2Config(use_sliding_window=True, max_window_layers=0))


def test_trainer_trains_the_same_in_every_layout(workspace, tiny_model_dir, tmp_path):
    """Two steps through DPOPTrainer per layout: the same losses and metrics (post-edit included)."""
    from transformers import AutoModelForCausalLM

    from dpop.trainer import DPOPTrainer

    dataset_id = write_dataset(workspace, tiny_model_dir, train=8, eval=0)
    dataset = ShardDataset.open(workspace, dataset_id, "train")
    histories = {}
    for packing in PACKINGS:
        config = TrainConfig(
            output_dir=str(tmp_path / packing),
            packing=packing,
            max_steps=2,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            logging_steps=1,
            save_strategy="no",
            disable_tqdm=True,
        )
        load = lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)  # noqa: E731
        trainer = DPOPTrainer(
            model=load(), args=config, train_dataset=dataset, data_collator=PairCollator(0), ref_model=load()
        )
        assert trainer.data_collator.packing == packing
        trainer.train()
        histories[packing] = [entry for entry in trainer.state.log_history if "loss" in entry]
    keys = ("loss", "logps/chosen", "logps/rejected", "logps/chosen_post_edit", "rewards/margins")
    for packing in PACKINGS:
        assert len(histories[packing]) == 2
        for got, want in zip(histories[packing], histories["none"], strict=True):
            for key in keys:
                assert got[key] == pytest.approx(want[key], abs=1e-4), (packing, key)


def test_trainer_falls_back_with_one_warning(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from dpop.trainer import DPOPTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config._attn_implementation = "paged|sdpa"  # a kernel that takes neither packing nor 4D masks
    config = TrainConfig(output_dir=str(tmp_path), packing="shared_prompt", max_steps=1, disable_tqdm=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = DPOPTrainer(model=model, args=config, data_collator=PairCollator(0))
    messages = [str(w.message) for w in caught if issubclass(w.category, HardwareFallbackWarning)]
    assert len(messages) == 1 and "using none" in messages[0]
    assert trainer.data_collator == dataclasses.replace(PairCollator(0), additive_mask=True)


def test_gpu_check_cpu_smoke_trains_from_stored_references_with_a_zero_first_log_ratio(tmp_path):
    """benchmarks/gpu_check.py's own code path on CPU (a tiny model): it must keep running here, and
    its check (policy = reference at step 1, same precision: every chosen log-ratio 0) must hold."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    argv = ["--cpu-smoke", "--steps", "2", "--warmup", "1", "--batch-size", "2", "--no-trl"]
    assert gpu_check.main([*argv, "--packings", "shared_prompt", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check_cpu_smoke.json").read_text())
    (run,) = report["runs"]
    assert run["packing_used"] == "shared_prompt" and run["real_tokens_per_second"] > 0
    assert run["first_step_chosen_log_ratios"] and max(map(abs, run["first_step_chosen_log_ratios"])) == 0.0
