"""Every preference format on small inline records: detection, the canonical pair, rejections."""

from __future__ import annotations

import json

import pytest

from pipeline.identity import pair_id
from pipeline.ingest import FORMATS, NotPreferenceData, ingest_source
from pipeline.ingest.detect import detect_record
from pipeline.ingest.fields import Limits, Reject
from tests.pipeline._ingest_util import assert_conserved, pairs_of, reasons_by_row, write_jsonl

LIMITS = Limits(max_field_chars=100_000)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def ingest_one(tmp_path, workspace, records, name="data.jsonl", **kwargs):
    (result,) = ingest_source(write_jsonl(tmp_path / name, records), workspace, **kwargs)
    assert_conserved(result)
    return result


def test_flat_pairs_keep_text_and_provenance(tmp_path, workspace):
    records = [
        {"prompt": "2+2?", "chosen": " 4\n", "rejected": "5", "id": 7},
        {
            "prompt": "Hi",
            "chosen": "Hello",
            "rejected": "Go away",
            "system": "Be kind",
            "score_chosen": 9,
            "score_rejected": 2,
        },
    ]
    result = ingest_one(tmp_path, workspace, records)
    assert (result.format, result.rows_read, result.rows_kept, result.rows_rejected) == ("flat", 2, 2, 0)
    first, second = pairs_of(result)
    assert first["prompt"] == user("2+2?")
    assert first["chosen"] == " 4\n"  # exactly as given
    assert first["pair_id"] == pair_id(user("2+2?"), "4", "5")  # the hash normalises whitespace
    assert first["source"] == "data:flat"
    assert first["source_uri"] == (tmp_path / "data.jsonl").resolve().as_uri()
    assert first["source_row"] == 0
    assert first["chosen_score"] is None
    assert second["prompt"] == [{"role": "system", "content": "Be kind"}, *user("Hi")]
    assert (second["chosen_score"], second["rejected_score"]) == (9.0, 2.0)


def test_column_map_renames_fields(tmp_path, workspace):
    from pipeline.ingest import IngestOptions

    records = [{"question": "Q", "good": "A", "bad": "B"}]
    options = IngestOptions(column_map={"prompt": "question", "chosen": "good", "rejected": "bad"})
    result = ingest_one(tmp_path, workspace, records, options=options)
    assert result.format == "flat"
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs_of(result)] == [(user("Q"), "A", "B")]


def test_trl_conversational_explicit_and_implicit_prompt(tmp_path, workspace):
    explicit = {
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    implicit = {
        "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}],
    }
    mismatch = {
        "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "Other"}, {"role": "assistant", "content": "bad"}],
    }
    no_assistant = {
        "chosen": [{"role": "user", "content": "Q"}],
        "rejected": [{"role": "user", "content": "Q"}],
    }
    text_prompt = {
        "prompt": "Q",
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    result = ingest_one(tmp_path, workspace, [explicit, implicit, mismatch, no_assistant, text_prompt])
    assert result.format == "trl_conversational"
    pairs = pairs_of(result)
    assert [p["source_row"] for p in pairs] == [0, 1, 4]
    assert pairs[0]["prompt"] == [{"role": "system", "content": "S"}, *user("Q")]
    assert pairs[1]["prompt"] == user("Q") == pairs[2]["prompt"]
    assert (pairs[1]["chosen"], pairs[1]["rejected"]) == ("good", "bad")
    assert pairs[1]["pair_id"] == pairs[2]["pair_id"]  # same pair, two spellings
    assert reasons_by_row(result) == {2: "prompt_mismatch", 3: "no_assistant_turn"}


HH_GOOD = {
    "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Fine, thanks.",
    "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Go away.",
}


def test_hh_rlhf_transcripts(tmp_path, workspace):
    empty_chosen = {"chosen": "\n\nHuman: Hi\n\nAssistant:", "rejected": "\n\nHuman: Hi\n\nAssistant: No."}
    extra_turn = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: more\n\nAssistant: ok",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Bye",
    }
    no_assistant = {"chosen": "\n\nHuman: Hi there", "rejected": "\n\nHuman: Hi\n\nAssistant: x"}
    result = ingest_one(tmp_path, workspace, [HH_GOOD, empty_chosen, extra_turn, no_assistant])
    assert result.format == "hh_rlhf"
    (pair,) = pairs_of(result)
    assert pair["prompt"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    assert (pair["chosen"], pair["rejected"]) == ("Fine, thanks.", "Go away.")
    assert reasons_by_row(result) == {1: "empty_response", 2: "prompt_mismatch", 3: "no_assistant_turn"}


def test_sharegpt_keeps_system_messages_and_maps_roles(tmp_path, workspace):
    record = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Q1"},
            {"from": "gpt", "value": "A1"},
            {"from": "human", "value": "Q2"},
        ],
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    }
    unknown_role = dict(record, conversations=[{"from": "narrator", "value": "Once"}])
    json_path = tmp_path / "sharegpt.json"
    json_path.write_text(json.dumps([record, unknown_role]), encoding="utf-8")
    (result,) = ingest_source(json_path, workspace)
    assert_conserved(result)
    assert result.format == "sharegpt"
    (pair,) = pairs_of(result)
    assert [m["role"] for m in pair["prompt"]] == ["system", "user", "assistant", "user"]
    assert (pair["chosen"], pair["rejected"]) == ("good", "bad")
    assert reasons_by_row(result) == {1: "unknown_role"}


def test_chosen_rejected_messages_with_typed_parts(tmp_path, workspace):
    def conversation(answer):
        return [
            {"role": "system", "content": [{"type": "text", "value": "S"}], "loss_weight": 0.0},
            {"role": "user", "content": [{"type": "text", "value": "Q "}, {"type": "text", "text": "more"}]},
            {"role": "assistant", "content": [{"type": "text", "value": answer}], "loss_weight": 1.0},
        ]

    image = conversation("x")
    image[1]["content"].append({"type": "image", "url": "a.png"})
    records = [
        {"chosen_messages": conversation("good"), "rejected_messages": conversation("bad")},
        {"chosen_messages": image, "rejected_messages": conversation("bad")},
    ]
    result = ingest_one(tmp_path, workspace, records)
    assert result.format == "chosen_rejected_messages"
    (pair,) = pairs_of(result)
    assert pair["prompt"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q more"}]
    assert (pair["chosen"], pair["rejected"]) == ("good", "bad")
    assert reasons_by_row(result) == {1: "bad_messages"}


def judgement(labels, r1="first", r2="second", **extra):
    names = {f"annotator{i + 1}": label for i, label in enumerate(labels)}
    return {"instruction": "Do it", "input": "", "response1": r1, "response2": r2, **names, **extra}


def test_pairwise_judgement_majority_and_ties(tmp_path, workspace):
    records = [
        judgement([2, 2, 1]),  # second wins
        judgement([1, 0, 1], input="ctx"),  # first wins; input joins the prompt
        judgement([0, 0, 0]),  # unanimous tie
        judgement([1, 2, 0]),  # no majority
        judgement([1, 1, 1], r1=True),  # PandaLM's boolean response
        judgement([7, 1, 1]),  # unknown label
    ]
    result = ingest_one(tmp_path, workspace, records)
    assert result.format == "pairwise_judgement"
    first, second = pairs_of(result)
    assert (first["chosen"], first["rejected"], first["prompt"]) == ("second", "first", user("Do it"))
    assert (second["chosen"], second["rejected"], second["prompt"]) == (
        "first",
        "second",
        user("Do it\n\nctx"),
    )
    assert reasons_by_row(result) == {2: "tie", 3: "tie", 4: "wrong_type", 5: "invalid_label"}


def test_pairwise_single_label_field():
    record = {"instruction": "I", "response_a": "a", "response_b": "b", "winner": "model_b"}
    (candidate,) = FORMATS["pairwise_judgement"](record, LIMITS)
    assert (candidate.chosen, candidate.rejected) == ("b", "a")


def test_scored_completions_best_vs_lowest(tmp_path, workspace):
    records = [
        {
            "instruction": "Q",
            "completions": [
                {"response": "mid", "overall_score": 6},
                {"response": "best", "overall_score": 9},
                {"response": "also best", "overall_score": 9},
                {"response": "worst", "overall_score": 2.5},
            ],
        },
        {
            "instruction": "Q",
            "completions": [{"response": "a", "overall_score": 5}, {"response": "b", "overall_score": 5}],
        },
        {
            "instruction": "Q",
            "completions": [
                {"response": "a", "overall_score": "high"},
                {"response": "b", "overall_score": 1},
            ],
        },
    ]
    result = ingest_one(tmp_path, workspace, records)
    assert result.format == "scored_completions"
    (pair,) = pairs_of(result)
    assert (pair["chosen"], pair["rejected"], pair["chosen_score"], pair["rejected_score"]) == (
        "best",
        "worst",
        9.0,
        2.5,
    )
    assert reasons_by_row(result) == {1: "no_preference", 2: "wrong_type"}


def test_model_solutions_expand_one_record_into_pairs(tmp_path, workspace):
    records = [
        {
            "question": "1+1?",
            "ground_truth": "2",
            "6b": {"is_correct": False, "solution": "3"},
            "175b": {"is_correct": True, "solution": "2"},
            "verifier": {"is_correct": False, "solution": "11"},
        },
        {"question": "2+2?", "ground_truth": "4", "6b": {"is_correct": True, "solution": "4"}},
        {"question": "3+3?", "ground_truth": "6", "6b": {"is_correct": False, "solution": ""}},
    ]
    result = ingest_one(tmp_path, workspace, records)
    assert result.format == "model_solutions"
    assert (result.rows_read, result.rows_kept, result.pairs_written, result.rows_rejected) == (3, 1, 2, 2)
    pairs = pairs_of(result)
    assert [(p["source_row"], p["chosen"], p["rejected"]) for p in pairs] == [(0, "2", "3"), (0, "2", "11")]
    assert reasons_by_row(result) == {1: "no_preference", 2: "no_preference"}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, "flat"),
        ({"chosen": [{"role": "user", "content": "q"}], "rejected": []}, "trl_conversational"),
        ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "x"}, "hh_rlhf"),
        ({"conversations": [], "chosen": {}, "rejected": {}}, "sharegpt"),
        ({"chosen_messages": [], "rejected_messages": []}, "chosen_rejected_messages"),
        ({"instruction": "i", "response1": "a", "response2": "b", "annotator1": 1}, "pairwise_judgement"),
        ({"instruction": "i", "completions": []}, "scored_completions"),
        ({"question": "q", "ground_truth": "g", "m": {"is_correct": False}}, "model_solutions"),
        ({"question": "q", "answer": "a"}, None),
        ({"chosen": "c", "rejected": "r"}, None),
    ],
)
def test_detect_record(record, expected):
    assert detect_record(record) == expected


def test_question_answer_data_is_named_not_preference(tmp_path, workspace):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}] * 3)
    with pytest.raises(NotPreferenceData, match=r"qa\.jsonl.*question/answer pairs, not preference pairs"):
        ingest_source(path, workspace)


def test_explicit_format_overrides_detection(tmp_path, workspace):
    records = [{"prompt": "p", "chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "b"}]
    result = ingest_one(tmp_path, workspace, records, fmt="flat")
    assert result.format == "flat"
    with pytest.raises(ValueError, match="unknown format 'nope'"):
        ingest_source(tmp_path / "data.jsonl", workspace, fmt="nope")


def test_role_aliases_and_unknown_roles():
    parse = FORMATS["trl_conversational"]
    record = {
        "chosen": [{"role": "Human", "content": "q"}, {"role": "bot", "content": "a"}],
        "rejected": [{"role": "user", "content": "q"}, {"role": "model", "content": "b"}],
    }
    (candidate,) = parse(record, LIMITS)
    assert candidate.prompt == user("q")
    record["rejected"][1]["role"] = "wizard"
    with pytest.raises(Reject) as raised:
        parse(record, LIMITS)
    assert raised.value.reason == "unknown_role"
