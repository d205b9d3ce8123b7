"""Scores: exact values on hand-made pairs, rapidfuzz equality on random and on real GSM8K pairs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein

from pipeline.contracts import validate
from pipeline.score import score_pairs, word_counts, word_edit_distances
from tests.pipeline._pairs import pair_table


def test_exact_scores_on_small_pairs() -> None:
    table = pair_table(
        [
            {
                "prompt": "hi there  you",
                "chosen": "the cat sat on the mat",
                "rejected": "the dog sat on a mat",
                "chosen_score": 2.0,
                "rejected_score": 0.5,
            },
            {
                "prompt": [{"role": "system", "content": "a b"}, {"role": "user", "content": "c"}],
                "chosen": "é ü x",
                "rejected": "é ü x y",
            },
            {"prompt": "q", "chosen": "", "rejected": ""},
        ]
    )
    scored = score_pairs(table)
    validate(scored, "preference_pair")
    rows = scored.to_pylist()
    assert [r["edit_distance"] for r in rows] == [6, 2, 0]
    assert rows[0]["edit_ratio"] == 6 / 22 and rows[1]["edit_ratio"] == 2 / 7 and rows[2]["edit_ratio"] == 0.0
    assert [r["word_edit_distance"] for r in rows] == [2, 1, 0]
    assert [r["len_prompt_chars"] for r in rows] == [13, 4, 1]
    assert [r["len_prompt_words"] for r in rows] == [3, 3, 1]
    assert [(r["len_chosen_chars"], r["len_rejected_chars"]) for r in rows] == [(22, 20), (5, 7), (0, 0)]
    assert [(r["len_chosen_words"], r["len_rejected_words"]) for r in rows] == [(6, 6), (3, 4), (0, 0)]
    assert [r["score_margin"] for r in rows] == [1.5, None, None]
    # scoring twice replaces the columns instead of duplicating them
    assert score_pairs(scored).equals(scored)


words = st.lists(st.sampled_from(["a", "b", "cc", "é", "日本", "x1"]), max_size=12)
spaces = st.sampled_from([" ", "  ", "\n", "\t "])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(words, words, spaces), min_size=1, max_size=20))
def test_word_distance_equals_rapidfuzz_on_word_lists(cases) -> None:
    chosen = [sep.join(c) for c, _, sep in cases]
    rejected = [" ".join(r) for _, r, _ in cases]
    expected = [Levenshtein.distance(c.split(), r.split()) for c, r in zip(chosen, rejected, strict=True)]
    assert word_edit_distances(pa.array(chosen), pa.array(rejected)).tolist() == expected


def test_distances_equal_rapidfuzz_on_real_gsm8k_pairs(shared_data) -> None:
    path = shared_data / "openai_grade-school-math" / "example_model_solutions.jsonl"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for key in ("6b_finetuning", "175b_finetuning"):
            if not record[key]["is_correct"]:
                rows.append(
                    {
                        "prompt": record["question"],
                        "chosen": record["ground_truth"],
                        "rejected": record[key]["solution"],
                    }
                )
    assert len(rows) > 1000
    scored = score_pairs(pair_table(rows))
    chosen, rejected = [r["chosen"] for r in rows], [r["rejected"] for r in rows]
    expected = np.array([Levenshtein.distance(c, r) for c, r in zip(chosen, rejected, strict=True)])
    assert (scored["edit_distance"].to_numpy() == expected).all()
    expected_words = np.array(
        [Levenshtein.distance(c.split(), r.split()) for c, r in zip(chosen, rejected, strict=True)]
    )
    assert (scored["word_edit_distance"].to_numpy() == expected_words).all()
    longest = np.maximum([len(c) for c in chosen], [len(r) for r in rejected])
    assert np.allclose(scored["edit_ratio"].to_numpy(), expected / longest)


def test_distances_on_ingested_gsm8k_model_solutions(shared_data, workspace) -> None:
    import pyarrow.parquet as pq

    from pipeline.ingest import ingest_source

    (result,) = ingest_source(
        shared_data / "openai_grade-school-math" / "example_model_solutions.jsonl", workspace
    )
    assert result.format == "model_solutions"
    scored = score_pairs(pq.read_table(result.pairs_path))
    chosen, rejected = scored["chosen"].to_pylist(), scored["rejected"].to_pylist()
    assert len(chosen) > 3000
    expected = [Levenshtein.distance(c, r) for c, r in zip(chosen, rejected, strict=True)]
    assert scored["edit_distance"].to_pylist() == expected
    expected_words = [
        Levenshtein.distance(c.split(), r.split()) for c, r in zip(chosen, rejected, strict=True)
    ]
    assert scored["word_edit_distance"].to_pylist() == expected_words


def test_per_pair_symbols_when_the_batch_vocabulary_is_too_large(monkeypatch) -> None:
    import pipeline.score as score

    monkeypatch.setattr(score, "_MAX_SYMBOLS", 3)  # force the per-pair fallback
    chosen = ["a b c d e", "x y z", "  p q  "]
    rejected = ["a c d f e g", "z y x", "q"]
    expected = [Levenshtein.distance(c.split(), r.split()) for c, r in zip(chosen, rejected, strict=True)]
    assert word_edit_distances(pa.array(chosen), pa.array(rejected)).tolist() == expected


def test_scores_do_not_depend_on_the_batching() -> None:
    rows = [
        {"prompt": f"q{i}", "chosen": f"the cat sat on mat {i}", "rejected": f"a dog sat {i} on the mat"}
        for i in range(7)
    ]
    table = pair_table(rows)
    assert score_pairs(table, batch_rows=3).equals(score_pairs(table))


# every character Python's str.split() treats as whitespace, and a few that it does not
WHITESPACE = [chr(c) for c in range(0x3001) if chr(c).isspace()]
any_text = st.lists(
    st.sampled_from([*WHITESPACE, "a", "é", "日本", "x1", "\u200b", "\ufeff", "\U0001f600"]), max_size=30
).map("".join)


@settings(max_examples=100, deadline=None)
@given(st.lists(any_text, min_size=1, max_size=10))
def test_word_counts_equal_python_split(texts: list[str]) -> None:
    assert word_counts(pa.array(texts)).tolist() == [len(t.split()) for t in texts]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(any_text, any_text, any_text), min_size=1, max_size=10))
def test_word_distance_is_a_column_on_demand(rows: list[tuple[str, str, str]]) -> None:
    table = pair_table([{"prompt": p or "q", "chosen": c, "rejected": r} for p, c, r in rows])
    full, cheap = score_pairs(table), score_pairs(table, word_distance=False)
    assert "word_edit_distance" not in cheap.column_names
    assert cheap.equals(full.drop_columns(["word_edit_distance"]))
    validate(cheap, "preference_pair")
    prompts = [p or "q" for p, _, _ in rows]
    assert cheap["len_prompt_words"].to_pylist() == [len(p.split()) for p in prompts]
    expected = [Levenshtein.distance(c.split(), r.split()) for _, c, r in rows]
    assert full["word_edit_distance"].to_pylist() == expected
