"""Exact values and gradients of the preference losses."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpop.losses import dpo_loss, dpop_loss, hinge_loss, ipo_loss, robust_loss

# The worked values of issue 4 / ARCHITECTURE.md (β = 0.1).
POLICY_CHOSEN = torch.tensor([-0.5, -10.0, -1.0], dtype=torch.float64)
POLICY_REJECTED = torch.tensor([-0.1, -30.0, -21.0], dtype=torch.float64)
REF_CHOSEN = torch.tensor([-0.5, -10.1, -0.1], dtype=torch.float64)
REF_REJECTED = torch.tensor([-0.1, -20.1, -0.1], dtype=torch.float64)
ARGS = (POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED)


def test_dpo_exact_values():
    losses, chosen_rewards, rejected_rewards = dpo_loss(*ARGS, beta=0.1)
    assert losses.tolist() == pytest.approx([0.693147, 0.313262, 0.126928], abs=1e-6)
    assert chosen_rewards.tolist() == pytest.approx([0.0, 0.01, -0.09], abs=1e-12)
    assert rejected_rewards.tolist() == pytest.approx([0.0, -0.99, -2.09], abs=1e-12)


@pytest.mark.parametrize(("penalty_lambda", "third"), [(0.0, 0.126928), (5.0, 0.192476), (50.0, 2.578890)])
def test_dpop_exact_values(penalty_lambda, third):
    losses, _, _ = dpop_loss(*ARGS, beta=0.1, penalty_lambda=penalty_lambda)
    # The first two pairs have r_w >= 0, so the penalty is off and DPOP equals DPO there.
    assert losses.tolist() == pytest.approx([0.693147, 0.313262, third], abs=1e-6)


def test_penalty_is_inside_the_sigmoid():
    # The outside form −log σ(βh) + λ max(0, −r_w) would give 0.126928 + 50 * 0.9 = 45.126928.
    losses, _, _ = dpop_loss(*ARGS, beta=0.1, penalty_lambda=50.0)
    assert losses[2].item() == pytest.approx(2.578890, abs=1e-6)
    assert losses[2].item() != pytest.approx(45.126928, abs=1.0)


def test_other_losses_exact_values():
    # h = r_w − r_l per pair: 0, 10, 20
    ipo, _, _ = ipo_loss(*ARGS, beta=0.1)
    assert ipo.tolist() == pytest.approx([25.0, 25.0, 225.0], abs=1e-9)
    hinge, _, _ = hinge_loss(*ARGS, beta=0.1)
    assert hinge.tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-9)
    eps = 0.1
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected_cdpo = [-(1 - eps) * math.log(sig(z)) - eps * math.log(sig(-z)) for z in (0.0, 1.0, 2.0)]
    expected_rdpo = [(-(1 - eps) * math.log(sig(z)) + eps * math.log(sig(-z))) / 0.8 for z in (0.0, 1.0, 2.0)]
    cdpo, _, _ = robust_loss(*ARGS, beta=0.1, label_smoothing=eps, unbiased=False)
    rdpo, _, _ = robust_loss(*ARGS, beta=0.1, label_smoothing=eps, unbiased=True)
    assert cdpo.tolist() == pytest.approx(expected_cdpo, abs=1e-9)
    assert rdpo.tolist() == pytest.approx(expected_rdpo, abs=1e-9)


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda *a: dpop_loss(*a, beta=0.1, penalty_lambda=5.0)[0],
        lambda *a: ipo_loss(*a, beta=0.1, penalty_lambda=2.0)[0],
        lambda *a: robust_loss(*a, beta=0.1, label_smoothing=0.2)[0],
        lambda *a: hinge_loss(*a, beta=0.5, penalty_lambda=1.0)[0],
    ],
    ids=["dpop", "ipo", "robust", "hinge"],
)
def test_gradcheck(loss_fn):
    generator = torch.Generator().manual_seed(0)
    # Random values away from relu/hinge kinks (probability of hitting one is zero).
    inputs = [
        (-20 * torch.rand(6, generator=generator, dtype=torch.float64)).requires_grad_() for _ in range(4)
    ]
    assert torch.autograd.gradcheck(loss_fn, inputs, eps=1e-6, atol=1e-5)


def test_dpop_gradient_raises_chosen_when_penalty_active():
    # Pair 3 has r_w = −0.9 < 0: the penalty makes the push on the chosen log-prob stronger than DPO's.
    policy_chosen = POLICY_CHOSEN.clone().requires_grad_()
    dpop_loss(policy_chosen, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.1, penalty_lambda=50.0)[
        0
    ].sum().backward()
    dpop_grad = policy_chosen.grad[2].item()
    policy_chosen.grad = None
    dpo_loss(policy_chosen, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.1)[0].sum().backward()
    assert dpop_grad < policy_chosen.grad[2].item() < 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-50, 0), min_size=4, max_size=4), st.floats(0.01, 1.0), st.floats(0, 100))
def test_dpop_never_below_dpo(values, beta, penalty_lambda):
    args = [torch.tensor([value], dtype=torch.float64) for value in values]
    dpop = dpop_loss(*args, beta=beta, penalty_lambda=penalty_lambda)[0].item()
    dpo = dpo_loss(*args, beta=beta)[0].item()
    assert dpop >= dpo - 1e-12


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="beta"):
        dpop_loss(*ARGS, beta=0.0)
    with pytest.raises(ValueError, match="penalty_lambda"):
        dpop_loss(*ARGS, penalty_lambda=-1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        robust_loss(*ARGS, label_smoothing=0.5)
