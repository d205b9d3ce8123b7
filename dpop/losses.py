"""Preference losses as pure functions of four summed log-probabilities.

Every loss has torchtune's signature::

    loss_fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, ...)
        -> (losses, chosen_rewards, rejected_rewards)

Inputs are per-pair sums of response-token log-probs, shape (batch,). `losses` is per pair (the caller
takes the mean); the rewards are `beta * (log πθ − log πref)` of each response, detached, as TRL logs them.

Notation shared by the docstrings: r_w = log πθ(y_w|x) − log πref(y_w|x) and r_l the same for y_l
(the implicit rewards before β), h = r_w − r_l the margin of log-ratios.

The DPO-Positive penalty `λ · max(0, −r_w)` can be added to the margin of any of these losses
(`penalty_lambda`, default 0 except for `dpop_loss` where it is the point): it always sits *inside*
the link function, exactly as in Pal et al.'s corrected equation, never added to the loss outside it.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


class PreferenceLoss(Protocol):
    def __call__(
        self,
        policy_chosen_logps: Tensor,
        policy_rejected_logps: Tensor,
        reference_chosen_logps: Tensor,
        reference_rejected_logps: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]: ...


def log_ratios(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
) -> tuple[Tensor, Tensor]:
    """(r_w, r_l): how much more (or less) likely the policy makes each response than the reference."""
    return policy_chosen_logps - reference_chosen_logps, policy_rejected_logps - reference_rejected_logps


def dpop_penalty(chosen_log_ratio: Tensor, penalty_lambda: float) -> Tensor:
    """λ · max(0, −r_w): non-zero only once the policy makes the chosen response *less* likely than the
    reference did, which is the failure mode of DPO that DPOP exists to stop."""
    return penalty_lambda * torch.relu(-chosen_log_ratio)


def penalised_margin(chosen_log_ratio: Tensor, rejected_log_ratio: Tensor, penalty_lambda: float) -> Tensor:
    """h − λ · max(0, −r_w), the argument every loss below applies its link function to (times β)."""
    margin = chosen_log_ratio - rejected_log_ratio
    if penalty_lambda:
        margin = margin - dpop_penalty(chosen_log_ratio, penalty_lambda)
    return margin


def _rewards(beta: float, chosen_log_ratio: Tensor, rejected_log_ratio: Tensor) -> tuple[Tensor, Tensor]:
    return beta * chosen_log_ratio.detach(), beta * rejected_log_ratio.detach()


def _check(beta: float, penalty_lambda: float) -> None:
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if penalty_lambda < 0:
        raise ValueError(f"penalty_lambda must be >= 0, got {penalty_lambda}")


def dpop_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float = 0.1,
    penalty_lambda: float = 50.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO-Positive (Pal et al., "Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive",
    arXiv:2402.13228, corrected version of July 2024, eq. 3)::

        L_DPOP = −log σ( β · ( r_w − r_l − λ · max(0, −r_w) ) )

    With λ = 0 this is DPO (Rafailov et al., arXiv:2305.18290, eq. 7). DPO only rewards the *difference*
    r_w − r_l, so it can be minimised by pushing both log-likelihoods down, the chosen one included; for
    pairs that differ in a few tokens this is what happens (the paper's Theorem 3.1). The penalty sits
    inside β and the sigmoid: it lowers the margin the sigmoid sees whenever the policy's chosen
    log-likelihood falls below the reference's, so the gradient pushes r_w back up, with the same
    saturation as the rest of the loss. The older preprint's form `−log σ(β h) + λ max(0, −r_w)` is a
    different loss (unbounded, and not scaled by β); see docs/training.md.
    """
    _check(beta, penalty_lambda)
    chosen_log_ratio, rejected_log_ratio = log_ratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    margin = penalised_margin(chosen_log_ratio, rejected_log_ratio, penalty_lambda)
    losses = -F.logsigmoid(beta * margin)
    return (losses, *_rewards(beta, chosen_log_ratio, rejected_log_ratio))


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO (Rafailov et al., arXiv:2305.18290, eq. 7): L = −log σ(β (r_w − r_l)); `dpop_loss` with λ = 0."""
    return dpop_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
        penalty_lambda=0.0,
    )


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float = 0.1,
    penalty_lambda: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """IPO (Azar et al., "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    arXiv:2310.12036, eq. 17)::

        L_IPO = ( h − 1 / (2β) )²        (here β is the paper's τ)

    A squared loss regresses the margin to a fixed target instead of pushing it to infinity, so IPO does
    not over-fit deterministic preferences the way DPO's sigmoid does. Log-probs are summed over tokens,
    as in the paper and torchtune (TRL divides by the response length; pass averaged log-probs for that).
    """
    _check(beta, penalty_lambda)
    chosen_log_ratio, rejected_log_ratio = log_ratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    margin = penalised_margin(chosen_log_ratio, rejected_log_ratio, penalty_lambda)
    losses = (margin - 1.0 / (2.0 * beta)) ** 2
    return (losses, *_rewards(beta, chosen_log_ratio, rejected_log_ratio))


def robust_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
    unbiased: bool = True,
    penalty_lambda: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO for noisy labels, where each preference is flipped with probability ε = `label_smoothing`.

    cDPO (Mitchell, "A note on DPO with noisy preferences", 2023), `unbiased=False`: the label-smoothed
    cross-entropy::

        L_cDPO = −(1 − ε) log σ(β h) − ε log σ(−β h)

    rDPO (Chowdhury et al., "Provably Robust DPO", arXiv:2403.00409, eq. 8), `unbiased=True`: the unbiased
    estimate of the clean loss, as TRL's `loss_type="robust"`::

        L_rDPO = ( −(1 − ε) log σ(β h) + ε log σ(−β h) ) / (1 − 2ε)

    cDPO stops pushing once σ(β h) = 1 − ε; rDPO de-biases the gradient so it matches clean-data DPO in
    expectation.
    """
    _check(beta, penalty_lambda)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_log_ratio, rejected_log_ratio = log_ratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    logits = beta * penalised_margin(chosen_log_ratio, rejected_log_ratio, penalty_lambda)
    clean = -(1.0 - label_smoothing) * F.logsigmoid(logits)
    if unbiased:
        losses = (clean + label_smoothing * F.logsigmoid(-logits)) / (1.0 - 2.0 * label_smoothing)
    else:
        losses = clean - label_smoothing * F.logsigmoid(-logits)
    return (losses, *_rewards(beta, chosen_log_ratio, rejected_log_ratio))


def hinge_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float = 0.1,
    penalty_lambda: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Hinge loss of SLiC-HF (Zhao et al., arXiv:2305.10425, eq. 1) in the normalised-likelihood form of
    RSO (Liu et al., "Statistical Rejection Sampling Improves Preference Optimization", arXiv:2309.06657,
    eq. 11)::

        L_hinge = max(0, 1 − β h)

    Pairs whose margin already exceeds 1/β contribute nothing: a max-margin rather than a likelihood view.
    """
    _check(beta, penalty_lambda)
    chosen_log_ratio, rejected_log_ratio = log_ratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    losses = torch.relu(1.0 - beta * penalised_margin(chosen_log_ratio, rejected_log_ratio, penalty_lambda))
    return (losses, *_rewards(beta, chosen_log_ratio, rejected_log_ratio))


LOSSES = {"dpop": dpop_loss, "dpo": dpo_loss, "ipo": ipo_loss, "robust": robust_loss, "hinge": hinge_loss}
