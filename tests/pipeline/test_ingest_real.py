"""Ingest of the real public datasets in ../shared/data, with exact counts (skipped where absent).

The whole folder is ingested once per module; each test checks one file's result.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pipeline.ingest import NotPreferenceData, ingest_source
from pipeline.workspace import Workspace
from tests.conftest import SHARED_DATA
from tests.pipeline._ingest_util import assert_conserved, pairs_of, reasons_by_row, rejections_of


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """{relative path: IngestResult} for every data file in the shared folder, and the notes."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    workspace = Workspace.open(tmp_path_factory.mktemp("real") / "ws")
    notes: list[str] = []
    results = ingest_source(SHARED_DATA, workspace, on_note=notes.append)
    by_path = {
        Path(r.source_uri.removeprefix("file://")).relative_to(SHARED_DATA.resolve()).as_posix(): r
        for r in results
    }
    return by_path, notes


def summary(result):
    return (
        result.format,
        result.rows_read,
        result.rows_kept,
        result.pairs_written,
        result.rejected_by_reason,
    )


def test_every_real_file_conserves_rows(ingested):
    results, _ = ingested
    assert sorted(results) == [
        "WeOpenML_PandaLM/testset-v1.json",
        "anthropics_hh-rlhf/harmless-base/test.jsonl.gz",
        "hiyouga_LLaMA-Factory/dpo_en_demo.json",
        "hiyouga_LLaMA-Factory/dpo_zh_demo.json",
        "hiyouga_LLaMA-Factory/v1_dpo_demo.jsonl",
        "openai_grade-school-math/example_model_solutions.jsonl",
    ]
    for result in results.values():
        assert_conserved(result)


def test_folder_notes_name_every_skipped_file(ingested):
    _, notes = ingested
    joined = "\n".join(notes)
    for skipped in ("dataset_info.json", "v1_dpo_demo.yaml", "README.md", "LICENSE", "SHA256SUMS"):
        assert skipped in joined
    for qa in ("openai_grade-school-math/test.jsonl", "openai_grade-school-math/train.jsonl"):
        (note,) = [n for n in notes if qa in n]
        assert "question/answer pairs, not preference pairs" in note


def test_hh_rlhf_harmless_base(ingested):
    result = ingested[0]["anthropics_hh-rlhf/harmless-base/test.jsonl.gz"]
    assert summary(result) == ("hh_rlhf", 2_312, 2_303, 2_303, {"empty_response": 4, "prompt_mismatch": 5})
    reasons = reasons_by_row(result)
    assert sorted(r for r, why in reasons.items() if why == "empty_response") == [86, 516, 925, 1103]
    assert sorted(r for r, why in reasons.items() if why == "prompt_mismatch") == [
        1254,
        1688,
        1950,
        1952,
        2036,
    ]
    assert all(
        "chosen is empty" in r["detail"] for r in rejections_of(result) if r["reason"] == "empty_response"
    )
    pair = pairs_of(result)[0]
    assert pair["prompt"][0]["role"] == "user" and pair["prompt"][-1]["role"] == "user"


@pytest.mark.parametrize("name", ["dpo_en_demo.json", "dpo_zh_demo.json"])
def test_llama_factory_sharegpt(ingested, name):
    result = ingested[0][f"hiyouga_LLaMA-Factory/{name}"]
    assert summary(result) == ("sharegpt", 300, 300, 300, {})
    raw = json.loads((SHARED_DATA / "hiyouga_LLaMA-Factory" / name).read_text(encoding="utf-8"))
    pairs = pairs_of(result)
    with_system = sum(any(m["from"] == "system" for m in r["conversations"]) for r in raw)
    assert sum(p["prompt"][0]["role"] == "system" for p in pairs) == with_system
    assert [len(p["prompt"]) for p in pairs] == [len(r["conversations"]) for r in raw]
    assert [p["chosen"] for p in pairs] == [r["chosen"]["value"] for r in raw]


def test_llama_factory_typed_messages(ingested):
    result = ingested[0]["hiyouga_LLaMA-Factory/v1_dpo_demo.jsonl"]
    assert summary(result) == ("chosen_rejected_messages", 10, 10, 10, {})
    first = json.loads(
        (SHARED_DATA / "hiyouga_LLaMA-Factory/v1_dpo_demo.jsonl").open(encoding="utf-8").readline()
    )
    pair = pairs_of(result)[0]
    assert pair["chosen"] == first["chosen_messages"][-1]["content"][0]["value"]
    assert [m["role"] for m in pair["prompt"]] == ["system", "user"]


def test_pandalm_judgements(ingested):
    result = ingested[0]["WeOpenML_PandaLM/testset-v1.json"]
    assert summary(result) == (
        "pairwise_judgement",
        999,
        836,
        836,
        {"empty_response": 54, "tie": 103, "wrong_type": 6},
    )
    reasons = reasons_by_row(result)
    assert sorted(r for r, why in reasons.items() if why == "wrong_type") == [157, 158, 159, 161, 162, 164]
    raw = json.loads((SHARED_DATA / "WeOpenML_PandaLM/testset-v1.json").read_text(encoding="utf-8"))
    unanimous = [
        i for i, r in enumerate(raw) if (r["annotator1"], r["annotator2"], r["annotator3"]) == (0, 0, 0)
    ]
    assert len(unanimous) == 85
    assert all(reasons[i] in ("tie", "empty_response", "wrong_type") for i in unanimous)
    # the majority label picks the chosen side
    for pair in pairs_of(result)[:50]:
        record = raw[pair["source_row"]]
        votes = Counter(record[f"annotator{k}"] for k in (1, 2, 3))
        winner = votes.most_common(1)[0][0]
        assert pair["chosen"] == record[f"response{winner}"]


def test_gsm8k_model_solutions(ingested):
    result = ingested[0]["openai_grade-school-math/example_model_solutions.jsonl"]
    assert summary(result) == ("model_solutions", 1_319, 1_163, 3_275, {"no_preference": 156})
    rows = [
        json.loads(line)
        for line in (SHARED_DATA / "openai_grade-school-math/example_model_solutions.jsonl").open()
    ]
    wrong = sum(1 for r in rows for v in r.values() if isinstance(v, dict) and v.get("is_correct") is False)
    assert wrong == 3_275
    assert all(p["chosen"] == rows[p["source_row"]]["ground_truth"] for p in pairs_of(result))


def test_gsm8k_question_answer_file_named_explicitly_fails(shared_data, workspace):
    with pytest.raises(
        NotPreferenceData, match=r"test\.jsonl: .*question/answer pairs, not preference pairs"
    ):
        ingest_source(shared_data / "openai_grade-school-math" / "test.jsonl", workspace)


def test_real_file_reingest_is_reused(shared_data, workspace):
    path = shared_data / "hiyouga_LLaMA-Factory" / "v1_dpo_demo.jsonl"
    (first,) = ingest_source(path, workspace)
    (second,) = ingest_source(path, workspace)
    assert (first.reused, second.reused, second.ingest_id) == (False, True, first.ingest_id)
