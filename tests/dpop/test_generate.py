"""Generation evaluation (`dpop.generate`, `pipeline.evalset`): exact-match extraction on real GSM8K
answers, number normalisation (property), batched left-padded greedy generation equal to one prompt at a
time, the generations in SQL, the overlap with training data, and eval ids stable across workspaces."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpop.generate import GenerationEvalStage, evaluate_generation, read_generations
from pipeline.contracts import validate
from pipeline.evalset import (
    extract_answer,
    from_dataset,
    from_file,
    make_prompt_set,
    normalize_number,
    prompt_key,
)
from pipeline.sql import query
from pipeline.workspace import Workspace
from tests.dpop.conftest import synthetic_pairs, write_dataset

GSM8K_TEST = "openai_grade-school-math/test.jsonl"


def test_exact_match_extraction_on_every_real_gsm8k_answer(shared_data: Path) -> None:
    rows = [json.loads(line) for line in (shared_data / GSM8K_TEST).read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1319
    for row in rows:
        final = row["answer"].rsplit("####", 1)[1].strip()
        extracted = extract_answer(row["answer"])
        assert extracted == final.replace(",", ""), row["answer"]
        assert extracted.lstrip("-").isdigit()
        # the worked steps' numbers (<<48/2=24>>24) never win over the final answer
        assert extract_answer(row["answer"].replace("####", "Then:\n####")) == extracted
    # a model's answer in another form still matches: commas, a dollar sign, a trailing .0
    assert extract_answer("so she makes $1,080.00 in total.\n#### 1,080.0") == "1080"
    assert extract_answer("The answer is: 18") == "18" and extract_answer("no number here") is None


def test_a_gsm8k_file_is_a_prompt_set_with_a_content_id(shared_data: Path, tmp_path: Path) -> None:
    prompts = from_file(shared_data / GSM8K_TEST, r"####\s*(-?[\d,]+)", 50)
    assert len(prompts.rows) == 50 and prompts.unverifiable == 0 and prompts.dropped_by_limit == 1269
    lines = (shared_data / GSM8K_TEST).read_text(encoding="utf-8").splitlines()
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")
    again = from_file(shuffled, r"####\s*(-?[\d,]+)", 50)
    assert again.id == prompts.id  # content order: the file's order does not matter
    assert [r["prompt_key"] for r in again.rows] == sorted(r["prompt_key"] for r in again.rows)


@given(st.integers(-(10**12), 10**12), st.booleans(), st.booleans(), st.sampled_from(["", ".0", ".00", "."]))
def test_numbers_normalise_to_one_spelling(number: int, commas: bool, dollar: bool, tail: str) -> None:
    text = f"{abs(number):,}" if commas else str(abs(number))
    text = ("-" if number < 0 else "") + ("$" if dollar else "") + text + tail
    assert normalize_number(text) == str(number)
    assert extract_answer(f"... #### {text}") == str(number)


@given(st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False, allow_infinity=False))
def test_decimals_compare_by_value(value) -> None:
    assert normalize_number(str(value)) == normalize_number(f"{value:f}0")


def test_a_bad_pattern_or_file_fails_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a regular expression"):
        extract_answer("#### 1", "((")
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"text": "no prompt column"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"qa.jsonl: needs a prompt column"):
        from_file(bad, r"####\s*(\d+)", 5)
    bad.write_text('{"question": "", "answer": "#### 1"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"qa.jsonl: row 0: field 'question'"):
        from_file(bad, r"####\s*(\d+)", 5)


def _prompts(count: int, seed: int = 0):
    rows = [
        {"prompt": [{"role": "user", "content": p}], "reference": c, "source": f"s{i % 2}"}
        for i, (p, c, _) in enumerate(synthetic_pairs(count, seed))
    ]
    return make_prompt_set(rows, r"answer is (\d+)", count, {"test": seed})


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(workspace, tiny_model_dir) -> None:
    prompts = _prompts(6)
    lengths = {len(r["prompt"][0]["content"]) for r in prompts.rows}
    assert len(lengths) > 1  # prompts of different lengths: left padding matters
    batched = GenerationEvalStage(tiny_model_dir, prompts, max_new_tokens=12, batch_size=6, ws=workspace)
    alone = GenerationEvalStage(tiny_model_dir, prompts, max_new_tokens=12, batch_size=1, ws=workspace)
    assert batched.id == alone.id  # how it runs is not what it writes
    record = evaluate_generation(workspace, tiny_model_dir, prompts, max_new_tokens=12, batch_size=6)
    table = read_generations(workspace, record)
    validate(table, "generation_eval")
    first = table.to_pylist()
    other = Workspace.open(workspace.root.parent / "ws-one-by-one")
    second = evaluate_generation(other, tiny_model_dir, prompts, max_new_tokens=12, batch_size=1)
    assert second.id == record.id  # the same model and prompt set: the same eval id in another workspace
    assert [r["generation"] for r in read_generations(other, second).to_pylist()] == [
        r["generation"] for r in first
    ]
    assert all(0 < r["generated_tokens"] <= 12 for r in first)
    assert all(r["correct"] == (r["extracted_answer"] == r["reference_answer"]) for r in first)
    metrics = {
        (m["metric"], m["group_kind"], m["group"]): m
        for m in pq.read_table(record.output("eval_metric").location(workspace)).to_pylist()
    }
    assert metrics[("exact_match", "all", "all")]["n"] == 6
    assert metrics[("generated_tokens", "all", "all")]["value"] == pytest.approx(
        sum(r["generated_tokens"] for r in first) / 6
    )
    assert {g for (_, kind, g) in metrics if kind == "source"} == {"s0", "s1"}
    # in SQL: the generations and the metrics, by eval id
    found = query(workspace, f"SELECT count(*) FROM generations WHERE eval_id = '{record.id}'").item()
    assert found == 6
    kinds = query(workspace, f"SELECT DISTINCT kind FROM evals WHERE eval_id = '{record.id}'").to_series()
    assert kinds.to_list() == ["generation"]


def test_a_model_that_answers_right_scores_one(workspace, tiny_model_dir) -> None:
    """Exact match end to end: prompts whose reference is what this model answers score 1, others 0."""
    prompts = _prompts(4)
    record = evaluate_generation(workspace, tiny_model_dir, prompts, max_new_tokens=8)
    answers = read_generations(workspace, record).to_pylist()
    rows = [
        {"prompt": [{"role": "user", "content": a["prompt"]}], "reference": f"#### {i}", "source": "x"}
        for i, a in enumerate(answers)
    ]
    # a pattern that takes the whole generation's first 3 characters as "the answer"
    echoing = make_prompt_set(
        [{**row, "reference": answers[i]["generation"][:3] or "?"} for i, row in enumerate(rows)],
        r"^[\s\S]{1,3}",
        4,
        {"echo": 1},
    )
    scored = evaluate_generation(
        workspace, tiny_model_dir, echoing, answer_pattern=r"^[\s\S]{1,3}", max_new_tokens=8
    )
    assert scored.summary["metrics"]["exact_match"] == 1.0


def test_prompt_sets_of_a_dataset_split_are_checked_against_training(workspace, tiny_model_dir) -> None:
    dataset_id = write_dataset(workspace, tiny_model_dir, train=8, eval=4)
    folder = workspace.dataset_dir(dataset_id)
    pairs = synthetic_pairs(12)
    import pyarrow as pa

    rows = [
        {
            "pair_id": f"p{i}",
            "prompt": [{"role": "user", "content": p}],
            "chosen": c,
            "rejected": r,
            "source": "synthetic",
            "split": "train" if i < 8 else "eval",
        }
        for i, (p, c, r) in enumerate(pairs)
    ]
    rows.append({**rows[0], "pair_id": "leak", "split": "eval"})  # a training prompt in the eval split
    pq.write_table(pa.Table.from_pylist(rows), folder / "pairs.parquet")
    prompts = from_dataset(folder, dataset_id, "eval", r"answer is (\d+)", 10)
    assert len(prompts.rows) == 5 and prompt_key(rows[0]["prompt"]) in prompts.prompt_keys
    record = evaluate_generation(
        workspace, tiny_model_dir, prompts, max_new_tokens=4, train_dataset_id=dataset_id
    )
    assert record.summary["overlap"] == {"train_dataset_id": dataset_id, "pairs": 0, "prompts": 1}
    found = query(
        workspace,
        f"SELECT DISTINCT overlap_prompts, checked_against FROM evals WHERE eval_id = '{record.id}'",
    )
    assert found.row(0) == (1, dataset_id)


def test_an_empty_prompt_set_fails_before_loading_a_model(workspace, tiny_model_dir) -> None:
    empty = make_prompt_set(
        [{"prompt": [{"role": "user", "content": "hi"}], "reference": "no answer"}], r"#### (\d+)", 5, {}
    )
    assert empty.unverifiable == 1
    with pytest.raises(ValueError, match="has no verifiable prompt"):
        evaluate_generation(workspace, tiny_model_dir, empty)
