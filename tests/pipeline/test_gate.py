"""The gate's rules (`pipeline.gate`): floors, regressions beyond a tolerance, the first champion, the best
of several passing candidates, metrics where lower is better, and the `gate:` section's one-line errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import ConfigError
from pipeline.gate import (
    KEPT,
    PROMOTED,
    REFUSED,
    Scores,
    decide,
    load_gate_config,
    scores_from_rows,
)

SETS = ("evalset-a", "evalset-b")


def scores(model: str, accuracy: float, exact: float | None = None, penalty: float | None = None) -> Scores:
    values = {(s, "rewards/accuracies"): accuracy for s in SETS}
    if exact is not None:
        values[("promptset-x", "exact_match")] = exact
    if penalty is not None:
        values |= {(s, "dpop/penalty_active"): penalty for s in SETS}
    return Scores(model, values)


CONFIG = load_gate_config(
    {"floors": {"rewards/accuracies": 0.5}, "max_regression": {"rewards/accuracies": 0.02}}
)


def test_the_first_model_is_champion_only_above_the_floors() -> None:
    passing = decide([scores("m1", 0.7)], None, CONFIG)
    assert (passing.outcome, passing.promoted, passing.champion_after) == (PROMOTED, "m1", "m1")
    assert "first model" in passing.reason
    failing = decide([scores("m1", 0.4)], None, CONFIG)
    assert (failing.outcome, failing.promoted, failing.champion_after) == (REFUSED, None, None)
    assert "rewards/accuracies 0.4 on evalset-a misses the floor (at least 0.5)" in failing.reason


def test_a_candidate_worse_than_the_champion_beyond_the_tolerance_is_refused() -> None:
    champion = scores("old", 0.8)
    worse = decide([scores("new", 0.77)], champion, CONFIG)
    assert worse.outcome == REFUSED and worse.champion_after == "old"
    assert (
        "rewards/accuracies 0.77 vs champion 0.8 on evalset-a: worse than the tolerance 0.02" in worse.reason
    )
    within = decide([scores("new", 0.785)], champion, CONFIG)
    assert within.outcome == PROMOTED and within.champion_after == "new"


def test_one_eval_set_is_enough_to_refuse() -> None:
    """Bad new data looks fine on its own eval split and shows on the champion's."""
    champion = Scores(
        "old", {("evalset-a", "rewards/accuracies"): 0.9, ("evalset-b", "rewards/accuracies"): 0.1}
    )
    candidate = Scores(
        "new", {("evalset-a", "rewards/accuracies"): 0.1, ("evalset-b", "rewards/accuracies"): 0.9}
    )
    decision = decide([candidate], champion, CONFIG)
    assert decision.outcome == REFUSED
    failed = [c for c in decision.verdicts[0].checks if not c.passed]
    assert {c.eval_set_id for c in failed} == {"evalset-a"}


def test_a_floored_metric_that_was_not_measured_fails() -> None:
    config = load_gate_config({"floors": {"exact_match": 0.1}})
    decision = decide([scores("m", 0.9)], None, config)
    assert decision.outcome == REFUSED and "exact_match was not measured" in decision.reason


def test_lower_is_better_metrics_compare_the_other_way() -> None:
    config = load_gate_config(
        {"floors": {"dpop/penalty_active": 0.5}, "max_regression": {"dpop/penalty_active": 0.1}}
    )
    champion = scores("old", 0.8, penalty=0.2)
    assert decide([scores("new", 0.8, penalty=0.25)], champion, config).outcome == PROMOTED
    assert decide([scores("new", 0.8, penalty=0.35)], champion, config).outcome == REFUSED
    assert decide([scores("new", 0.8, penalty=0.6)], None, config).outcome == REFUSED


def test_the_best_passing_candidate_is_promoted_by_rank_by() -> None:
    config = load_gate_config({"rank_by": ["exact_match", "rewards/accuracies"], "floors": {}})
    candidates = [
        scores("dpop", 0.9, exact=0.30),
        scores("dpo", 0.95, exact=0.40),
        scores("ipo", 0.2, exact=0.5),
    ]
    champion = scores("old", 0.9, exact=0.35)
    decision = decide(candidates, champion, config)
    # ipo regresses on accuracy (0.2 vs 0.9), dpop on exact match (0.30 vs 0.35, tolerance 0.05 … passes);
    # of those passing, dpo's exact match is the highest
    assert decision.outcome == PROMOTED and decision.promoted == "dpo"
    assert "best of 2 passing" in decision.reason
    tie = decide([scores("a", 0.9), scores("b", 0.9)], None, config)
    assert tie.promoted == "a"  # an exact tie goes to the candidates' (the losses') order


def test_the_champion_passing_again_keeps_its_alias() -> None:
    decision = decide([scores("same", 0.8)], scores("same", 0.8), CONFIG)
    assert decision.outcome == KEPT and decision.champion_after == "same" and decision.promoted is None


def test_no_candidate_and_a_disabled_gate() -> None:
    assert decide([], None, CONFIG).outcome == REFUSED
    disabled = decide([scores("m", 0.9)], None, load_gate_config({"enabled": False}))
    assert disabled.outcome == "disabled" and disabled.champion_after is None


@given(
    st.floats(0, 1),
    st.floats(0, 0.5),
    st.floats(0, 0.2),
)
def test_regression_rule_property(champion_value: float, drop: float, tolerance: float) -> None:
    """A candidate is refused exactly when it trails the champion by more than the tolerance."""
    config = load_gate_config({"floors": {}, "max_regression": {"rewards/accuracies": tolerance}})
    candidate_value = champion_value - drop
    decision = decide([scores("new", candidate_value)], scores("old", champion_value), config)
    assert (decision.outcome == PROMOTED) == (candidate_value >= champion_value - tolerance)


def test_scores_come_from_the_overall_rows() -> None:
    rows = [
        {
            "model_id": "m",
            "eval_set_id": "e",
            "metric": "rewards/accuracies",
            "group_kind": "all",
            "value": 0.7,
        },
        {
            "model_id": "m",
            "eval_set_id": "e",
            "metric": "rewards/accuracies",
            "group_kind": "source",
            "value": 0.1,
        },
        {"model_id": "m", "eval_set_id": "p", "metric": "exact_match", "group_kind": "all", "value": None},
    ]
    found = scores_from_rows(rows)["m"]
    assert found.measured("rewards/accuracies") == {"e": 0.7} and found.measured("exact_match") == {}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"floors": {"accuracy": 0.5}}, "config key 'gate.floors' names an unknown metric 'accuracy'"),
        (
            {"max_regression": {"exact_match": -0.1}},
            "'gate.max_regression.exact_match' must be a number >= 0",
        ),
        ({"generation": {"max_new_tokens": 0}}, "'gate.generation.max_new_tokens' must be int in [1, 32768]"),
        ({"generation": {"answer_pattern": "(a)(b)"}}, "'gate.generation.answer_pattern' has 2 groups"),
        ({"alais": "champion"}, "unknown key 'gate.alais'; did you mean alias?"),
    ],
)
def test_a_bad_gate_section_names_its_key(section: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_gate_config(section, source="dpop.yaml")
    text = str(caught.value)
    assert text.startswith("dpop.yaml: ") and message in text and "\n" not in text
