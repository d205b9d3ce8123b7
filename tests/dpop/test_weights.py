"""Per-pair weights in the trainer's loss: all ones give today's loss, other weights the weighted mean by
hand, evaluation ignores them, and the per-process scaling gives the global weighted mean under DDP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from dpop.config import TrainConfig
from dpop.data import ShardDataset
from dpop.logps import PairCollator, pair_logps
from dpop.losses import dpop_loss
from dpop.trainer import DPOPTrainer, weighted_loss
from tests.dpop.conftest import write_dataset

REFERENCE = (-30.0, -31.5, -28.0, -33.0)


@pytest.fixture
def setup(workspace, tiny_model_dir, tmp_path):
    dataset_id = write_dataset(workspace, tiny_model_dir, train=4, eval=0)
    dataset = ShardDataset.open(workspace, dataset_id, "train")
    rows = [dict(dataset[i]) for i in range(4)]
    for row, value in zip(rows, REFERENCE, strict=True):
        row["ref_chosen_logps"], row["ref_rejected_logps"] = value, value - 0.5
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = TrainConfig(output_dir=str(tmp_path), max_steps=1, disable_tqdm=True, report_to=[])
    trainer = DPOPTrainer(model=model, args=config, data_collator=PairCollator(0))
    return trainer, rows


def loss_of(trainer, rows, weights=None, training=True) -> torch.Tensor:
    rows = [dict(row, weight=w) for row, w in zip(rows, weights, strict=True)] if weights else rows
    batch = PairCollator(0)(rows)
    trainer.model.train(training)
    return trainer.compute_loss(trainer.model, batch)


def test_weights_of_one_give_todays_loss(setup):
    trainer, rows = setup
    plain = loss_of(trainer, rows)
    ones = loss_of(trainer, rows, [1.0, 1.0, 1.0, 1.0])
    assert abs(plain.item() - ones.item()) <= 1e-7
    plain.backward()
    expected = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.model.zero_grad()
    loss_of(trainer, rows, [1.0, 1.0, 1.0, 1.0]).backward()
    for want, param in zip(expected, trainer.model.parameters(), strict=True):
        torch.testing.assert_close(param.grad, want, atol=1e-7, rtol=1e-6)


def test_weighted_loss_is_the_weighted_mean_by_hand(setup):
    trainer, rows = setup
    weights = [2.0, 0.0, 1.0, 0.5]
    got = loss_of(trainer, rows, weights).item()
    with torch.no_grad():
        policy = pair_logps(trainer.model, PairCollator(0)(rows))
    reference = torch.tensor(REFERENCE)
    losses, _, _ = dpop_loss(
        policy.chosen, policy.rejected, reference, reference - 0.5, beta=0.1, penalty_lambda=50.0
    )
    expected = sum(w * loss for w, loss in zip(weights, losses.tolist(), strict=True)) / sum(weights)
    assert got == pytest.approx(expected, rel=1e-6)
    assert got != pytest.approx(losses.mean().item(), rel=1e-3)  # the weights changed it
    # every weight 0: a zero loss, not NaN
    assert loss_of(trainer, rows, [0.0, 0.0, 0.0, 0.0]).item() == 0.0


def test_evaluation_ignores_weights(setup):
    trainer, rows = setup
    plain = loss_of(trainer, rows, training=False)
    weighted = loss_of(trainer, rows, [5.0, 0.0, 0.0, 1.0], training=False)
    assert weighted.item() == pytest.approx(plain.item(), abs=1e-7)


def test_the_metrics_report_the_mean_weight(setup):
    trainer, rows = setup
    loss_of(trainer, rows, [2.0, 0.0, 1.0, 1.0])
    metrics = trainer._averages("train")
    assert metrics["weights/mean"] == pytest.approx(1.0)
    assert "weights" not in metrics and metrics["rewards/accuracies"] >= 0


def test_per_process_scaling_averages_to_the_global_weighted_mean():
    """What DDP does with the per-process losses (averages their gradients, so their values): two
    processes with different batch sizes and weights give exactly Σ w·l / Σ w of the whole batch."""
    rng = np.random.default_rng(0)
    losses = torch.tensor(rng.random(7), dtype=torch.float32, requires_grad=True)
    weights = torch.tensor([0.5, 2.0, 1.0, 0.0, 3.0, 1.0, 0.25])
    total = weights.sum()
    parts = [(0, 3), (3, 7)]  # uneven per-process batches
    per_process = [weighted_loss(losses[a:b], weights[a:b], total, processes=2) for a, b in parts]
    averaged = sum(per_process) / 2
    expected = (losses * weights).sum() / total
    assert averaged.item() == pytest.approx(expected.item(), rel=1e-6)
    averaged.backward()
    torch.testing.assert_close(losses.grad, weights / total)
    assert math.isclose(weighted_loss(losses, torch.zeros(7), torch.tensor(0.0), 1).item(), 0.0)


def test_the_collator_passes_weights_and_reads_null_as_one(setup):
    _, rows = setup
    assert "weight" not in PairCollator(0)(rows)
    batch = PairCollator(0)([dict(rows[0], weight=2.0), dict(rows[1], weight=float("nan")), rows[2]])
    assert batch["weight"].tolist() == [2.0, 1.0, 1.0]
