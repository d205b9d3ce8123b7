"""Decontamination by word n-grams against an eval JSONL file, on small cases and on real GSM8K."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.curate.decontaminate import EvalNgrams, ngram_hashes
from pipeline.score import score_pairs
from tests.pipeline._pairs import pair_table

EVAL = [
    {
        "question": "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning.",
        "answer": "#### 18",
    },
    {
        "question": "A robe takes 2 bolts of blue fiber and half that much white fiber.",
        "answer": "It takes 3 bolts.",
    },
]


def write_eval(tmp_path: Path) -> Path:
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in EVAL), encoding="utf-8")
    return path


def test_ngram_hashes_respect_text_boundaries() -> None:
    hashes, owner = ngram_hashes(pl.Series(["a b c d", "e f", "", "g h i"]), 3)
    assert owner.tolist() == [0, 0, 3]  # "e f" is shorter than n, no n-gram spans two texts
    again, _ = ngram_hashes(pl.Series(["A, b! c"]), 3)
    assert again[0] == hashes[0]  # case and punctuation do not matter


def test_pairs_sharing_an_ngram_are_flagged(tmp_path: Path) -> None:
    ngrams = EvalNgrams(write_eval(tmp_path), ("question", "answer"), n=8)
    rows = [
        {
            "prompt": "Q: janet's ducks lay 16 eggs per day; she eats three for lunch",
            "chosen": "a",
            "rejected": "b",
        },
        {"prompt": "Unrelated question about ducks and eggs", "chosen": "a", "rejected": "b"},
        {
            "prompt": "Unrelated",
            "chosen": "ok",
            "rejected": "A robe takes 2 bolts of blue fiber and half that",
        },
        {"prompt": "Janet's ducks lay 16 eggs per", "chosen": "day", "rejected": "x"},  # split across fields
    ]
    frame = pl.from_arrow(score_pairs(pair_table(rows)))
    assert ngrams.pair_mask(frame, ("prompt", "chosen", "rejected")).to_list() == [True, False, True, False]
    assert ngrams.pair_mask(frame, ("prompt",)).to_list() == [True, False, False, False]


def test_bad_eval_file_names_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "x"}\n{"question": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: field 'question'"):
        EvalNgrams(path, ("question",), 8)
    with pytest.raises(FileNotFoundError):
        EvalNgrams(tmp_path / "none.jsonl", ("question",), 8)


def test_gsm8k_model_solutions_are_contaminated_train_questions_are_not(shared_data: Path) -> None:
    folder = shared_data / "openai_grade-school-math"
    ngrams = EvalNgrams(folder / "test.jsonl", ("question", "answer"), n=13)
    solutions = [json.loads(line)["question"] for line in (folder / "example_model_solutions.jsonl").open()]
    flagged = ngrams.contaminated(pl.Series(solutions))
    assert flagged.mean() > 0.95  # the model-solution file is built on the test questions
    train = [json.loads(line)["question"] for line in (folder / "train.jsonl").open()]
    assert np.mean(ngrams.contaminated(pl.Series(train))) < 0.01
