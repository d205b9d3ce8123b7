"""Property tests for hostile input (issue 9): random nesting depths and random numeric tokens in
every score and label field, through every file format that can carry them. Ingest never crashes,
always conserves rows, rejects exactly the records nested too deep, and never lets a non-finite
number reach a kept pair."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest import ingest_source
from pipeline.ingest.readers import MAX_DEPTH
from pipeline.workspace import Workspace
from tests.pipeline._ingest_util import assert_conserved, pairs_of, reasons_by_row

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- nesting -------------------------------------------------------------------------------------

OPENERS = {"list": ("[", "]"), "object": ('{"k": ', "}")}


def nesting(depth: int, pattern: list[str]) -> str:
    """A JSON value of `depth` nested containers, their kinds cycling through `pattern`."""
    levels = [pattern[i % len(pattern)] for i in range(depth)]
    opening = "".join(OPENERS[kind][0] for kind in levels)
    return opening + "1" + "".join(OPENERS[kind][1] for kind in reversed(levels))


def deep_record(depth: int, pattern: list[str], place: str) -> str:
    value = nesting(depth, pattern)
    return {
        "chosen": '{"prompt": "p", "chosen": ' + value + ', "rejected": "r"}',
        "unused": '{"prompt": "p", "chosen": "c", "rejected": "r", "meta": ' + value + "}",
        "prompt": '{"prompt": [{"role": "user", "content": ' + value + '}], "chosen": "c", "rejected": "r"}',
    }[place]


DEPTHS = st.one_of(st.integers(0, 2 * MAX_DEPTH), st.integers(0, 3_000))
# A record's own object is level 1; a value under "prompt" is also inside a list and a message.
EXTRA_LEVELS = {"chosen": 1, "unused": 1, "prompt": 3}


@SETTINGS
@given(
    rows=st.lists(
        st.tuples(
            DEPTHS,
            st.lists(st.sampled_from(sorted(OPENERS)), min_size=1, max_size=4),
            st.sampled_from(sorted(EXTRA_LEVELS)),
        ),
        min_size=1,
        max_size=5,
    ),
    array=st.booleans(),
)
def test_random_nesting_depth_rejects_exactly_the_too_deep_records(rows, array):
    texts = [deep_record(*row) for row in rows]
    data = "[" + ",\n".join(texts) + "]" if array else "".join(t + "\n" for t in texts)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("deep.json" if array else "deep.jsonl")
        path.write_text(data)
        (result,) = ingest_source(path, Workspace.open(Path(folder) / "ws"), fmt="flat")
        assert_conserved(result)
        assert result.rows_read == len(rows)
        reasons = reasons_by_row(result)
        for row, (depth, _, place) in enumerate(rows):
            too_deep = depth + EXTRA_LEVELS[place] > MAX_DEPTH
            assert (reasons.get(row) == "too_deep") == too_deep, (row, depth, place, reasons.get(row))


# --- numbers -------------------------------------------------------------------------------------

# JSON number tokens (some only Python's parser accepts), and other values where a number belongs.
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "9" * 400, "-" + "9" * 400, "9" * 5_000]
FINITE = ["0", "-3", "4.5", "1e308", "-0.0", "7"]
OTHER = ['"nan"', '"4.5"', '"high"', '""', "null", "true", "[1]", '{"a": 1}', '"Infinity"']
TOKENS = st.one_of(
    st.sampled_from(NON_FINITE + FINITE + OTHER),
    st.floats(allow_nan=True, allow_infinity=True).map(json.dumps),
    st.integers(-(10**30), 10**30).map(str),
)

TEMPLATES = {
    "flat": '{{"prompt": "p", "chosen": "c", "rejected": "r", "chosen_score": {0}, "rejected_score": {1}}}',
    "flat_ultrafeedback": '{{"prompt": "p", "chosen": "c", "rejected": "r", "score_chosen": {0}, "score_rejected": {1}}}',
    "scored_completions": (
        '{{"prompt": "p", "completions": [{{"text": "a", "score": {0}}}, {{"text": "b", "rating": {1}}},'
        ' {{"text": "c", "overall_score": {2}}}]}}'
    ),
    "pairwise_judgement": (
        '{{"instruction": "i", "response1": "a", "response2": "b",'
        ' "annotator1": {0}, "annotator2": {1}, "annotator3": {2}}}'
    ),
    "pairwise_winner": '{{"instruction": "i", "response_a": "a", "response_b": "b", "winner": {0}}}',
    "model_solutions": (
        '{{"question": "q", "ground_truth": "g", "m1": {{"is_correct": {0}, "solution": "w1"}},'
        ' "m2": {{"is_correct": {1}, "solution": "w2"}}, "m3": {{"is_correct": {2}, "solution": "w3"}}}}'
    ),
}
FORMAT_OF = {name: name.split("_")[0] if name.startswith("flat") else name for name in TEMPLATES}
FORMAT_OF["pairwise_winner"] = "pairwise_judgement"


def python_value(token: str):
    return json.loads(token)  # the value Python's parser gives (NaN, inf, big int) or ValueError


def score_class(token: str) -> str:
    """What a score field holding `token` must lead to: absent, finite (kept) or rejected."""
    try:
        value = python_value(token)
    except ValueError:
        return "rejected"  # an integer over Python's 4,300 digits
    if value is None or value == "":
        return "absent"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return "rejected"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "rejected"
    try:
        return "finite" if math.isfinite(float(value)) else "rejected"
    except OverflowError:
        return "rejected"


def assert_no_non_finite_pair(result, ranked: bool = False) -> None:
    """No kept pair carries a non-finite score; a pair ranked from ratings (`ranked`) holds two
    different completions, the better-rated one chosen."""
    for pair in pairs_of(result):
        for side in ("chosen_score", "rejected_score"):
            assert pair[side] is None or math.isfinite(pair[side]), pair
        if ranked:
            assert pair["chosen"] != pair["rejected"]
            assert pair["chosen_score"] > pair["rejected_score"]


def ingest_text(folder: str, name: str, data: str, fmt: str):
    path = Path(folder) / name
    path.write_text(data)
    (result,) = ingest_source(path, Workspace.open(Path(folder) / "ws"), fmt=fmt)
    assert_conserved(result)
    assert_no_non_finite_pair(result, ranked=fmt == "scored_completions")
    return result


@SETTINGS
@given(
    template=st.sampled_from(sorted(TEMPLATES)),
    rows=st.lists(st.tuples(TOKENS, TOKENS, TOKENS), min_size=1, max_size=8),
    array=st.booleans(),
)
def test_random_numbers_in_every_score_and_label_field(template, rows, array):
    texts = [TEMPLATES[template].format(*tokens) for tokens in rows]
    data = "[" + ",\n".join(texts) + "]" if array else "".join(t + "\n" for t in texts)
    with tempfile.TemporaryDirectory() as folder:
        result = ingest_text(folder, "numbers.json" if array else "numbers.jsonl", data, FORMAT_OF[template])
        assert result.rows_read == len(rows)
        if template.startswith("flat"):  # an exact oracle: kept iff both scores are absent or finite
            reasons = reasons_by_row(result)
            for row, tokens in enumerate(rows):
                kept = all(score_class(t) != "rejected" for t in tokens[:2])
                assert (row not in reasons) == kept, (tokens[:2], reasons.get(row))


def cell_text(token: str) -> str:
    """A token as a CSV cell's text: a JSON string's content, anything else as written."""
    return token[1:-1] if token.startswith('"') else token


def csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if "," in text or '"' in text else text


@SETTINGS
@given(rows=st.lists(st.tuples(TOKENS, TOKENS), min_size=1, max_size=8))
def test_random_numbers_in_csv_scores(rows):
    header = "prompt,chosen,rejected,chosen_score,rejected_score\n"
    cells = [(cell_text(a), cell_text(b)) for a, b in rows]
    data = header + "".join(f"p,c,r,{csv_cell(a)},{csv_cell(b)}\n" for a, b in cells)
    with tempfile.TemporaryDirectory() as folder:
        result = ingest_text(folder, "numbers.csv", data, "flat")
        assert result.rows_read == len(rows)
        reasons = reasons_by_row(result)
        for row, texts in enumerate(cells):  # every cell is text: a number written as text is read
            kept = all(score_class(json.dumps(text)) != "rejected" for text in texts)
            assert (row not in reasons) == kept, (texts, reasons.get(row))


@SETTINGS
@given(scores=st.lists(st.tuples(st.floats() | st.none(), st.floats() | st.none()), min_size=1, max_size=8))
def test_random_floats_in_parquet_scores(scores):
    records = [
        {"prompt": "p", "chosen": "c", "rejected": "r", "chosen_score": a, "rejected_score": b}
        for a, b in scores
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "numbers.parquet"
        pq.write_table(pa.Table.from_pylist(records), path)
        (result,) = ingest_source(path, Workspace.open(Path(folder) / "ws"), fmt="flat")
        assert_conserved(result)
        assert_no_non_finite_pair(result)
        finite = [all(v is None or math.isfinite(v) for v in pair) for pair in scores]
        assert result.rows_kept == sum(finite)
