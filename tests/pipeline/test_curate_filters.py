"""Each curation filter drops exactly the pairs it should, with its reason code and counts."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.curate import ConfigError, load_curation_config
from pipeline.curate.filters import PROMPT_KEY, build_filters, check_sql_filters, run_filters
from pipeline.curate.split import prompt_keys
from pipeline.score import score_pairs
from tests.pipeline._pairs import pair_table

# every built-in filter off, so a test turns on just the one it checks
OFF = {"empty_response": False, "identical_responses": False, "duplicate_pair": False}


def curate(rows: list[dict], filters: dict) -> tuple[list[int], dict[int, str], dict]:
    """Run the configured filters; returns (kept source rows, {dropped source row: reason}, counts)."""
    config = load_curation_config({"filters": {**OFF, **filters}})
    frame = pl.from_arrow(score_pairs(pair_table(rows)))
    frame = frame.with_columns(prompt_keys(frame["prompt"]).alias(PROMPT_KEY))
    counts: dict = {}
    kept, dropped = run_filters(frame, build_filters(config), counts)
    dropped_map = {} if dropped is None else dict(zip(dropped["source_row"], dropped["reason"], strict=True))
    return (
        kept["source_row"].to_list(),
        dropped_map,
        {name: (c.rows_in, c.dropped) for name, c in counts.items()},
    )


def pair(prompt: str, chosen: str, rejected: str, **scores) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **scores}


def test_empty_and_identical_responses() -> None:
    rows = [pair("p", "a", "b"), pair("p", " ", "b"), pair("p", "same", "same "), pair("q", "a", "")]
    kept, dropped, counts = curate(rows, {"empty_response": True, "identical_responses": True})
    assert kept == [0]
    assert dropped == {1: "empty_response", 3: "empty_response", 2: "identical_responses"}
    assert counts == {"empty_response": (4, 2), "identical_responses": (2, 1)}


def test_max_chars_and_length_ratio() -> None:
    rows = [
        pair("p" * 20, "aa", "bb"),
        pair("p", "a" * 11, "b"),
        pair("p", "a" * 6, "b" * 2),
        pair("p", "abc", "ab"),
    ]
    kept, dropped, _ = curate(rows, {"max_chars": {"prompt": 10, "response": 10}, "length_ratio": 2.0})
    assert kept == [3]
    assert dropped == {0: "too_long", 1: "too_long", 2: "length_ratio"}


def test_edit_bounds_keep_low_edit_pairs() -> None:
    rows = [
        pair("p", "The answer is 72.", "The answer is 73."),  # distance 1, ratio 1/17
        pair("p", "The answer is 72.", "I do not know at all"),  # far apart
        pair("p", "abc", "abd"),  # distance 1, ratio 1/3
    ]
    kept, dropped, _ = curate(rows, {"edit_ratio": {"max": 0.2}})
    assert kept == [0] and dropped == {1: "edit_ratio", 2: "edit_ratio"}
    kept, dropped, _ = curate(rows, {"edit_distance": {"min": 2}})
    assert kept == [1] and dropped == {0: "edit_distance", 2: "edit_distance"}


def test_score_margin_keeps_unscored_pairs() -> None:
    rows = [
        pair("p", "a", "b", chosen_score=9.0, rejected_score=2.0),
        pair("p", "a", "c", chosen_score=5.0, rejected_score=4.5),
        pair("p", "a", "d"),
    ]
    kept, dropped, _ = curate(rows, {"score_margin": {"min": 1.0}})
    assert kept == [0, 2] and dropped == {1: "score_margin"}


def test_duplicates_and_pairs_per_prompt_keep_the_first_in_input_order() -> None:
    rows = [
        pair("p", "a", "b"),
        pair("p", "a", "b"),  # duplicate of row 0
        pair(" p\r\n", "a", "c"),  # same prompt after normalisation
        pair("p", "a", "d"),
        pair("q", "a", "b"),
    ]
    kept, dropped, counts = curate(rows, {"duplicate_pair": True, "max_pairs_per_prompt": 2})
    assert kept == [0, 2, 4]
    assert dropped == {1: "duplicate_pair", 3: "max_pairs_per_prompt"}
    assert counts["max_pairs_per_prompt"] == (4, 1)


def test_user_filters_drop_where_and_keep_where() -> None:
    rows = [pair("hi", "a", "b"), pair("a longer prompt", "a", "b"), pair("a longer prompt", "xyz", "b")]
    user = [
        {"name": "short_prompt", "drop_where": "len_prompt_chars < 5"},
        {"name": "chosen_starts_a", "keep_where": "starts_with(chosen, 'a') AND prompt[1].role = 'user'"},
    ]
    kept, dropped, counts = curate(rows, {"user": user})
    assert kept == [1] and dropped == {0: "user_filter", 2: "user_filter"}
    assert counts == {"user.short_prompt": (3, 1), "user.chosen_starts_a": (2, 1)}


def test_bad_user_predicate_reports_duckdb_message_and_filter_name() -> None:
    config = load_curation_config(
        {"filters": {"user": [{"name": "typo", "drop_where": "len_promt_chars < 5"}]}}
    )
    frame = pl.from_arrow(score_pairs(pair_table([pair("p", "a", "b")])))
    with pytest.raises(ConfigError) as error:
        check_sql_filters(build_filters(config), frame)
    assert "'user.typo'" in str(error.value) and "len_promt_chars" in str(error.value)
    assert "Binder Error" in str(error.value) or "not found" in str(error.value)
    config = load_curation_config(
        {"filters": {"user": [{"name": "notbool", "drop_where": "len_prompt_chars + 1"}]}}
    )
    with pytest.raises(ConfigError, match="notbool"):
        check_sql_filters(build_filters(config), frame)
