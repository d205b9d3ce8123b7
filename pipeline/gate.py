"""The promotion gate: pure rules over evaluation metrics that decide whether a candidate model replaces
the champion (docs/gate.md).

Input: each model's overall metrics per eval set (`Scores`: (eval set id, metric) -> value, read from
eval_metric rows with group "all"); the champion's on the same eval sets (the chain evaluates it on
every eval set the candidates were evaluated on); a `GateConfig` (the `gate:` section of dpop.yaml).

A candidate passes when

- **floors**: on every eval set where a floored metric was measured, its value is at least the floor
  (at most, for a metric where lower is better); a floored metric measured on no eval set fails
  ("not measured": a gate never passes on a metric it could not see);
- **no regression**: on every eval set both it and the champion were measured on, each metric of
  `max_regression` is no worse than the champion's by more than its tolerance.

No champion yet: the floors alone decide (the first model becomes champion only if it passes them).
Several candidates (a `--losses` comparison): the best one that passes is promoted; "best" compares
`rank_by` metrics in order, each averaged over the eval sets it was measured on (direction-aware:
higher accuracy, lower `dpop/penalty_active`); an exact tie goes to the next metric, then to the
candidates' order (the losses' order). A refusal is a normal outcome: the decision says why.

No torch, no I/O: `flows/chain.py` gathers the metrics and records the decision (`pipeline.registry`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import ConfigError, setting, validate_fields
from pipeline.evalset import DEFAULT_ANSWER_PATTERN, compile_pattern

# metric -> True when higher is better (every metric the gate may name)
DIRECTION = {
    "rewards/accuracies": True,
    "rewards/margins": True,
    "logps/chosen_delta": True,
    "logps/rejected_delta": False,
    "logps/chosen_pre_edit_delta": True,
    "logps/chosen_post_edit_delta": True,
    "dpop/penalty_active": False,
    "exact_match": True,
    "answer_found": True,
}
PROMOTED, KEPT, REFUSED, DISABLED = "promoted", "kept", "refused", "disabled"


# --- the config --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationSettings:
    """Generation evaluation in the chain (verifiable prompts: GSM8K-style answers)."""

    enabled: bool = setting(True, help="greedy generation + exact match where the prompts are verifiable")
    from_eval_split: bool = setting(True, help="prompts of the eval split, answers from the chosen answers")
    eval_file: str | None = setting(None, help="also a fixed question/answer file (GSM8K test.jsonl)")
    answer_pattern: str = setting(DEFAULT_ANSWER_PATTERN, nonempty=True, help="final-answer regex")
    max_prompts: int = setting(64, ge=1, le=1_000_000)
    max_new_tokens: int = setting(256, ge=1, le=32_768)
    batch_size: int = setting(16, ge=1, le=4096)

    def __post_init__(self) -> None:
        validate_fields(self)
        try:
            compile_pattern(self.answer_pattern)
        except ValueError as error:
            raise ConfigError(
                str(error).replace(f"answer pattern {self.answer_pattern!r} ", ""), key="answer_pattern"
            ) from None


@dataclass(frozen=True)
class GateConfig:
    """The `gate:` section of dpop.yaml (module doc)."""

    enabled: bool = setting(True, help="false: train and evaluate, never move an alias")
    alias: str = setting("champion", nonempty=True, help="the alias a passing candidate takes")
    max_regression: dict[str, float] = setting(
        default_factory=lambda: {"rewards/accuracies": 0.02, "exact_match": 0.05},
        help="metric -> how much worse than the champion's a candidate may be",
    )
    floors: dict[str, float] = setting(
        # The failure mode DPOP exists for: by default a model whose chosen answers became less likely than
        # under the reference (mean over the eval pairs, nats) is not shipped, however well it ranks pairs.
        default_factory=lambda: {"rewards/accuracies": 0.5, "logps/chosen_delta": -1.0},
        help="metric -> minimum (maximum if lower is better)",
    )
    rank_by: list[str] = setting(
        default_factory=lambda: ["exact_match", "rewards/accuracies", "logps/chosen_delta"],
        help="how the best passing candidate is chosen",
    )
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    def __post_init__(self) -> None:
        validate_fields(self)
        for key, names in (
            ("max_regression", self.max_regression),
            ("floors", self.floors),
            ("rank_by", self.rank_by),
        ):
            for name in names:
                if name not in DIRECTION:
                    raise ConfigError(
                        f"names an unknown metric {name!r} (known: {', '.join(DIRECTION)})", key=key
                    )
        for name, tolerance in self.max_regression.items():
            if not (math.isfinite(tolerance) and tolerance >= 0):
                raise ConfigError(f"must be a number >= 0, got {tolerance}", key=f"max_regression.{name}")
        for name, floor in self.floors.items():
            if not math.isfinite(floor):
                raise ConfigError(f"must be a finite number, got {floor}", key=f"floors.{name}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_gate_config(data: Mapping[str, Any] | None, source: str = "gate") -> GateConfig:
    """The `gate:` section (a raw mapping, as ChainSpec carries it) through the one config loader."""
    from pipeline.config import load

    return load(GateConfig, dict(data or {}), source=source, prefix="gate.")


# --- the rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    """One model's overall metrics: (eval set id, metric) -> value (None: not computable there)."""

    model_id: str
    values: Mapping[tuple[str, str], float | None]

    def measured(self, metric: str) -> dict[str, float]:
        """eval set id -> value of `metric`, where it was measured."""
        return {
            eval_set: value
            for (eval_set, name), value in self.values.items()
            if name == metric and value is not None and math.isfinite(value)
        }


def scores_from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, Scores]:
    """eval_metric rows (any groups) -> Scores per model, from the overall ("all") rows."""
    values: dict[str, dict[tuple[str, str], float | None]] = {}
    for row in rows:
        if row.get("group_kind", "all") != "all":
            continue
        values.setdefault(row["model_id"], {})[(row["eval_set_id"], row["metric"])] = row.get("value")
    return {model: Scores(model, found) for model, found in values.items()}


@dataclass(frozen=True)
class Check:
    """One rule on one metric and eval set: passed or not, and a sentence saying so."""

    rule: str  # floor | regression
    metric: str
    eval_set_id: str | None
    value: float | None
    threshold: float | None
    champion_value: float | None
    passed: bool
    text: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Verdict:
    model_id: str
    checks: tuple[Check, ...]
    rank_key: tuple[float, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [c.text for c in self.checks if not c.passed]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "passed": self.passed,
            "rank_key": list(self.rank_key),
            "checks": [c.as_dict() for c in self.checks],
        }


@dataclass(frozen=True)
class Decision:
    """What the gate decided: `outcome` promoted | kept | refused | disabled, the model that holds the
    alias after it (`champion_after`), every candidate's verdict, and one sentence (`reason`)."""

    outcome: str
    alias: str
    promoted: str | None
    champion_before: str | None
    champion_after: str | None
    verdicts: tuple[Verdict, ...]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "alias": self.alias,
            "promoted": self.promoted,
            "champion_before": self.champion_before,
            "champion_after": self.champion_after,
            "reason": self.reason,
            "verdicts": [v.as_dict() for v in self.verdicts],
        }


def _better(metric: str, value: float, than: float) -> bool:
    return value >= than if DIRECTION[metric] else value <= than


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def floor_checks(scores: Scores, floors: Mapping[str, float]) -> list[Check]:
    """Each floored metric on each eval set it was measured on; one failing check if on none."""
    checks = []
    for metric, floor in floors.items():
        measured = scores.measured(metric)
        if not measured:
            text = f"{metric} was not measured (a floor of {floor:g} needs it)"
            checks.append(Check("floor", metric, None, None, floor, None, False, text))
        for eval_set, value in sorted(measured.items()):
            passed = _better(metric, value, floor)
            word = "at least" if DIRECTION[metric] else "at most"
            text = f"{metric} {_fmt(value)} on {eval_set} {'meets' if passed else 'misses'} the floor ({word} {floor:g})"
            checks.append(Check("floor", metric, eval_set, value, floor, None, passed, text))
    return checks


def regression_checks(scores: Scores, champion: Scores, tolerances: Mapping[str, float]) -> list[Check]:
    """Each tolerated metric on each eval set both models were measured on."""
    checks = []
    for metric, tolerance in tolerances.items():
        mine, theirs = scores.measured(metric), champion.measured(metric)
        for eval_set in sorted(set(mine) & set(theirs)):
            value, best = mine[eval_set], theirs[eval_set]
            limit = best - tolerance if DIRECTION[metric] else best + tolerance
            passed = _better(metric, value, limit)
            text = (
                f"{metric} {_fmt(value)} vs champion {_fmt(best)} on {eval_set}: "
                + ("within" if passed else "worse than")
                + f" the tolerance {tolerance:g}"
            )
            checks.append(Check("regression", metric, eval_set, value, limit, best, passed, text))
    return checks


def rank_key(scores: Scores, rank_by: Sequence[str]) -> tuple[float, ...]:
    """Larger is better: each metric's mean over its eval sets (negated where lower is better);
    -inf where it was not measured."""
    key = []
    for metric in rank_by:
        measured = list(scores.measured(metric).values())
        mean = sum(measured) / len(measured) if measured else -math.inf
        key.append(mean if DIRECTION[metric] or not measured else -mean)
    return tuple(key)


def verdict(scores: Scores, champion: Scores | None, config: GateConfig) -> Verdict:
    checks = floor_checks(scores, config.floors)
    if champion is not None and champion.model_id != scores.model_id:
        checks += regression_checks(scores, champion, config.max_regression)
    return Verdict(scores.model_id, tuple(checks), rank_key(scores, config.rank_by))


def decide(candidates: Sequence[Scores], champion: Scores | None, config: GateConfig) -> Decision:
    """The gate's decision (module doc). `champion`: the current holder's scores on the same eval sets,
    None when the alias has no holder."""
    before = champion.model_id if champion is not None else None
    verdicts = tuple(verdict(c, champion, config) for c in candidates)

    def done(outcome: str, promoted: str | None, reason: str) -> Decision:
        after = promoted if outcome == PROMOTED else before
        return Decision(outcome, config.alias, promoted, before, after, verdicts, reason)

    if not config.enabled:
        return done(DISABLED, None, f"the gate is disabled (gate.enabled: false): {config.alias} unchanged")
    if not candidates:
        return done(REFUSED, None, "no candidate was evaluated (an empty eval split?): nothing to promote")
    passing = [v for v in verdicts if v.passed]
    if not passing:
        return done(REFUSED, None, _refusal(verdicts, before, config.alias))
    best = max(enumerate(passing), key=lambda item: (item[1].rank_key, -item[0]))[1]
    if best.model_id == before:
        return done(KEPT, None, f"{before} is already {config.alias} and passes the gate")
    among = f" (best of {len(passing)} passing by {', '.join(config.rank_by)})" if len(passing) > 1 else ""
    if before is None:
        why = f"{best.model_id} becomes {config.alias}: first model, passes the floors{among}"
    else:
        why = f"{best.model_id} replaces {before} as {config.alias}: passes the floors and no metric regressed{among}"
    return done(PROMOTED, best.model_id, why)


def _refusal(verdicts: Sequence[Verdict], champion: str | None, alias: str) -> str:
    keep = f"{champion} stays {alias}" if champion else f"{alias} stays unassigned"
    parts = [f"{v.model_id}: {'; '.join(v.failures)}" for v in verdicts]
    return f"refused, {keep}. " + " | ".join(parts)
