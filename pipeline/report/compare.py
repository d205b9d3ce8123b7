"""The numbers the report states about each run, computed once from its metrics and its evaluation.

`summarise(run, dataset)` gives a `RunSummary`: the final values on the eval split (from the
evaluation stage when the run has one: every eval pair, per-pair log-probs; else from the trainer's
last evaluation in metrics.jsonl), the trajectory over the trainer's evaluations, and the training
loss. The final-values table, the group tables and every sentence of the text read these, so a number
on the page is said once and comes from one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pipeline.report.data import DatasetData, RunData

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def series(metrics: Sequence[dict[str, Any]], name: str, split: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric of one split, in logged order."""
    points = [
        (m["step"], float(m[name]))
        for m in metrics
        if m.get("split", "train") == split
        and isinstance(m.get(name), int | float)
        and not isinstance(m.get(name), bool)
        and isinstance(m.get("step"), int)
    ]
    return [p[0] for p in points], [p[1] for p in points]


def chosen_minus_reference(metrics: Sequence[dict[str, Any]], split: str) -> tuple[list[int], list[float]]:
    """log p(chosen) − reference log p(chosen) per logged step: what DPOP keeps at or above zero. Each
    train batch has its own reference level, so the difference, not log p itself, is comparable."""
    points = [
        (m["step"], float(m["logps/chosen"]) - float(m["ref_logps/chosen"]))
        for m in metrics
        if m.get("split", "train") == split
        and isinstance(m.get("logps/chosen"), int | float)
        and isinstance(m.get("ref_logps/chosen"), int | float)
        and isinstance(m.get("step"), int)
    ]
    return [p[0] for p in points], [p[1] for p in points]


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (good at small n and near 0 or 1)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # clamped to hold p: at p = 0 or 1 the bound equals p exactly, up to rounding
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


@dataclass
class Trajectory:
    """A metric over the trainer's evaluations: first and last logged value and their steps."""

    first: float
    last: float
    first_step: int
    last_step: int

    @classmethod
    def of(cls, steps: list[int], values: list[float]) -> Trajectory | None:
        return cls(values[0], values[-1], steps[0], steps[-1]) if steps else None


@dataclass
class RunSummary:
    run_id: str
    label: str
    penalty_lambda: float
    source: str  # where the eval numbers come from, in words
    eval_pairs: int | None
    is_dpo: bool = False  # plain DPO (loss dpo, or dpop with λ = 0): the baseline DPOP is compared with
    chosen_delta: float | None = None  # mean log p(chosen) − reference, nats per answer
    rejected_delta: float | None = None
    pre_edit_delta: float | None = None  # mean per-token change before the first edit (eval stage only)
    post_edit_delta: float | None = None
    pre_edit_logp: float | None = None  # per-token log p of chosen tokens (trainer's last evaluation)
    post_edit_logp: float | None = None
    accuracy: float | None = None
    accuracy_interval: tuple[float, float] | None = None
    margin: float | None = None
    below_reference: float | None = None  # share of eval pairs whose log p(chosen) is below the reference
    penalty: float | None = None
    steps: int | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    loss_max: float | None = None
    loss_max_step: int | None = None
    over_steps: dict[str, Trajectory] = field(default_factory=dict)

    @property
    def at_chance(self) -> bool:
        """Chance (0.5) lies in the 95% interval of the eval reward accuracy."""
        return (
            self.accuracy_interval is not None
            and self.accuracy_interval[0] <= 0.5 <= self.accuracy_interval[1]
        )


def _last_eval(metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    final: dict[str, Any] = {}
    for event in metrics:
        if event.get("split") == "eval":
            final.update(
                {k: v for k, v in event.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            )
    return final


def _from_evaluation(summary: RunSummary, run: RunData) -> None:
    evaluation = run.evaluation
    assert evaluation is not None
    values = {
        "chosen_delta": "logps/chosen_delta",
        "rejected_delta": "logps/rejected_delta",
        "pre_edit_delta": "logps/chosen_pre_edit_delta",
        "post_edit_delta": "logps/chosen_post_edit_delta",
        "margin": "rewards/margins",
    }
    for attribute, metric in values.items():
        setattr(summary, attribute, evaluation.overall(metric)[0])
    summary.accuracy, n = evaluation.overall("rewards/accuracies")
    summary.eval_pairs = n or None
    pairs = evaluation.pairs(("delta_chosen_logps", "correct")).collect()
    if pairs.height:
        summary.eval_pairs = pairs.height
        summary.below_reference = float((pairs.get_column("delta_chosen_logps") < 0).mean())
        if summary.accuracy is None:
            summary.accuracy = float(pairs.get_column("correct").cast(pl.Float64).mean())
    summary.source = f"the evaluation stage ({evaluation.eval_id}, {summary.eval_pairs or 0:,} eval pairs)"


def _from_metrics(summary: RunSummary, run: RunData, eval_rows: int | None) -> None:
    last = _last_eval(run.metrics)
    if not last:
        summary.source = "no evaluation logged"
        return
    if "logps/chosen" in last and "ref_logps/chosen" in last:
        summary.chosen_delta = last["logps/chosen"] - last["ref_logps/chosen"]
    if "logps/rejected" in last and "ref_logps/rejected" in last:
        summary.rejected_delta = last["logps/rejected"] - last["ref_logps/rejected"]
    summary.accuracy, summary.margin = last.get("rewards/accuracies"), last.get("rewards/margins")
    summary.below_reference = last.get("dpop/penalty_active")
    summary.eval_pairs = eval_rows
    summary.source = (
        f"the trainer's last evaluation (step {last.get('step', '?')}, {eval_rows or '?'} eval pairs)"
    )


def _training(summary: RunSummary, run: RunData) -> None:
    steps, losses = series(run.metrics, "loss", "train")
    if losses:
        peak = max(range(len(losses)), key=losses.__getitem__)
        summary.loss_first, summary.loss_last = losses[0], losses[-1]
        summary.loss_max, summary.loss_max_step = losses[peak], steps[peak]
    all_steps = [m["step"] for m in run.metrics if isinstance(m.get("step"), int)]
    summary.steps = max(all_steps) if all_steps else None
    over = {
        "rewards/accuracies": series(run.metrics, "rewards/accuracies", "eval"),
        "rewards/margins": series(run.metrics, "rewards/margins", "eval"),
        "chosen_delta": chosen_minus_reference(run.metrics, "eval"),
        "logps/chosen_pre_edit": series(run.metrics, "logps/chosen_pre_edit", "eval"),
        "logps/chosen_post_edit": series(run.metrics, "logps/chosen_post_edit", "eval"),
    }
    summary.over_steps = {k: t for k, (s, v) in over.items() if (t := Trajectory.of(s, v)) is not None}
    last = _last_eval(run.metrics)
    summary.pre_edit_logp = last.get("logps/chosen_pre_edit")
    summary.post_edit_logp = last.get("logps/chosen_post_edit")
    summary.penalty = last.get("dpop/penalty")


def summarise(run: RunData, dataset: DatasetData) -> RunSummary:
    eval_rows = ((dataset.manifest.get("splits") or {}).get("eval") or {}).get("rows")
    is_dpo = run.loss.get("name", "dpop") in ("dpo", "dpop") and run.penalty_lambda == 0
    summary = RunSummary(run.run_id, run.label, run.penalty_lambda, "", None, is_dpo)
    if run.evaluation is not None:
        _from_evaluation(summary, run)
    else:
        _from_metrics(summary, run, eval_rows)
    if summary.accuracy is not None and summary.eval_pairs:
        summary.accuracy_interval = wilson_interval(summary.accuracy * summary.eval_pairs, summary.eval_pairs)
    _training(summary, run)
    return summary


# --- per source and per edit-ratio bucket --------------------------------------------------------------


@dataclass
class GroupRow:
    group: str
    n: int
    values: dict[str, tuple[float | None, float | None]]  # run id -> (reward accuracy, Δ log p(chosen))


def group_rows(runs: Sequence[RunData], group_kind: str) -> list[GroupRow]:
    """Reward accuracy and Δ log p(chosen) per group (source or edit bucket) for each run, from the
    evaluation stage's metrics; the groups of every run, in order (buckets q1 < q2 < …)."""
    evaluated = [r for r in runs if r.evaluation is not None]
    groups = sorted({g for r in evaluated for g in r.evaluation.groups(group_kind)}, key=_group_order)
    rows = []
    for group in groups:
        values, n = {}, 0
        for run in evaluated:
            accuracy, count = run.evaluation.group_value("rewards/accuracies", group_kind, group)
            delta, _ = run.evaluation.group_value("logps/chosen_delta", group_kind, group)
            values[run.run_id] = (accuracy, delta)
            n = max(n, count)
        rows.append(GroupRow(group, n, values))
    return rows


def _group_order(group: str) -> tuple[int, str]:
    """Buckets "q1 [0.00, 0.01)" … in quartile order (q10 after q9), other groups by name."""
    head = group.split(" ", 1)[0]
    if head[:1] == "q" and head[1:].isdigit():
        return int(head[1:]), group
    return 10**6, group
