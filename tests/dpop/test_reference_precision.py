"""Reference log-probs are computed in the precision the policy trains in, recorded in the manifest and
in the version id, and training refuses stored references of another precision.

At step 0 the policy *is* the reference, so its chosen log-ratio (policy − reference log-prob,
`rewards/chosen` / β of the first logged step, measured before any update) must be 0: anything else is
arithmetic, not learning, and with λ = 50 it would switch DPOP's penalty on for no reason."""

from __future__ import annotations

import json

import pytest
import torch

from dpop.config import TrainConfig
from dpop.model_io import Precision, precision_for_training
from dpop.refs import compute_reference_logps, reference_dataset_id
from dpop.train import train
from pipeline.shards import load_manifest, open_split
from tests.dpop.conftest import write_dataset

BETA = 0.1


def one_step_config(**overrides) -> TrainConfig:
    values = dict(
        max_steps=1,
        logging_steps=1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        save_steps=100,
        disable_tqdm=True,
        beta=BETA,
    )
    return TrainConfig(**{**values, **overrides})


def first_step(run_dir) -> dict:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(event for event in events if event["split"] == "train" and event["step"] == 1)


@pytest.mark.parametrize("mixed", [{}, {"bf16": True}], ids=["float32", "bf16-autocast"])
def test_log_ratio_is_zero_at_the_first_step(workspace, tiny_model_dir, mixed):
    config = one_step_config(**mixed)
    precision = precision_for_training(config)
    if mixed and precision.autocast is None:
        pytest.skip("this CPU has no bf16: the config fell back to float32")
    dataset_id = write_dataset(workspace, tiny_model_dir, train=16, eval=4)
    refs_id = compute_reference_logps(workspace, dataset_id, tiny_model_dir, progress=False, dtype=precision)
    assert load_manifest(workspace, refs_id)["reference_model"]["dtype"] == precision.label

    step = first_step(train(workspace, refs_id, tiny_model_dir, config).run_dir)
    log_ratio = step["rewards/chosen"] / BETA
    assert abs(log_ratio) <= sum_tolerance(workspace, refs_id), step


def sum_tolerance(workspace, dataset_id: str) -> float:
    """How far two computations of one pair's log-prob may legitimately differ.

    Same weights, same precision, only other batches (the reference pass sorts 16 pairs longest first,
    training takes 4 in its own order): each matmul output is one dot product over the hidden size,
    whatever the batch, but the sum of a sequence's token log-probs runs over its padded width, and a
    reduction over another length may add in another order. Two float32 sums of the same n terms
    differ by at most 2(n−1)·u·Σ|terms| (u = 2⁻²⁴, Higham, Accuracy and Stability, §4.2), and every
    token log-prob is ≤ 0, so Σ|terms| is the pair's |log-prob| itself. Under bf16 autocast the same
    holds: both passes round the same inputs to bf16 the same way and accumulate in float32. The batch
    mean of the log-ratios is within the largest pair's bound. (Measured here: exactly 0 in both.)"""
    table = open_split(workspace, dataset_id, "train")
    prompts, chosen = table.column("prompt_ids").to_pylist(), table.column("chosen_ids").to_pylist()
    terms = max(len(p) + len(c) for p, c in zip(prompts, chosen, strict=True))
    scale = max(abs(v) for v in table.column("ref_chosen_logps").to_pylist())
    return 2 * (terms - 1) * 2.0**-24 * scale


def test_the_precision_is_part_of_the_version(workspace, tiny_model_dir):
    dataset_id = write_dataset(workspace, tiny_model_dir, train=8, eval=0)
    ids = {
        label: reference_dataset_id(dataset_id, "model-x", label)
        for label in ("float32", "bfloat16", "float32+autocast-bfloat16")
    }
    assert len(set(ids.values())) == 3
    assert Precision.parse("float32+autocast-bfloat16") == Precision("float32", "bfloat16")
    assert (
        precision_for_training({"model_dtype": "bfloat16", "fp16": True}).label == "bfloat16+autocast-float16"
    )
    with pytest.raises(ValueError, match="autocast dtype 'float64'"):
        Precision("float32", "float64")


def test_training_refuses_references_of_another_precision(workspace, tiny_model_dir):
    dataset_id = write_dataset(workspace, tiny_model_dir, train=8, eval=0)
    refs_id = compute_reference_logps(
        workspace, dataset_id, tiny_model_dir, progress=False, dtype="float32+autocast-bfloat16"
    )
    with pytest.raises(ValueError) as refused:
        train(workspace, refs_id, tiny_model_dir, one_step_config())
    message = str(refused.value)
    assert "\n" not in message
    assert "float32+autocast-bfloat16" in message and "trains in float32" in message
    assert f"dpop refs --dataset {dataset_id} --model {tiny_model_dir} --dtype float32" in message
    assert not workspace.runs_dir.exists()  # refused before anything was written


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no bf16 on this CPU")
def test_the_precision_changes_the_values(workspace, tiny_model_dir):
    """`dtype` is not only a label: bf16 autocast gives other log-probs (on this tiny, nearly uniform
    model by a few 1e-3 nats; on a trained model by whole nats), enough to switch DPOP's penalty on at
    step 0 for a float32 policy (measured: 1 pair in 4)."""
    dataset_id = write_dataset(workspace, tiny_model_dir, train=8, eval=0)
    values = {}
    for label in ("float32", "float32+autocast-bfloat16"):
        refs_id = compute_reference_logps(workspace, dataset_id, tiny_model_dir, progress=False, dtype=label)
        values[label] = open_split(workspace, refs_id, "train").column("ref_chosen_logps").to_pylist()
    assert values["float32"] != values["float32+autocast-bfloat16"]
