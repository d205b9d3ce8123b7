"""Cards: licence detection (real LICENSE files, reflowed texts, the nearest file wins), a dataset version's
lineage (also for a -ref- version that carries its parent's pairs), and the model card."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.cards import (
    dataset_lineage,
    find_license_file,
    license_id,
    model_card,
    source_license,
)
from tests.pipeline._export_data import APACHE, MIT, build_small_dataset

# The licence of each folder of ../shared/data, as its README's table states it.
SHARED_LICENSES = {
    "anthropics_hh-rlhf": "mit",
    "openai_grade-school-math": "mit",
    "hiyouga_LLaMA-Factory": "apache-2.0",
    "WeOpenML_PandaLM": "apache-2.0",
}

CC_BY_SA = "Attribution-ShareAlike 4.0 International\n\n=======\n\nCreative Commons Corporation"
CC_BY_NC_SA = "Attribution-NonCommercial-ShareAlike 4.0 International\n\nCreative Commons"
GPL3 = "GNU GENERAL PUBLIC LICENSE\n   Version 3, 29 June 2007"


def test_real_license_files_of_the_shared_data(shared_data):
    for folder, expected in SHARED_LICENSES.items():
        data_file = next(p for p in sorted((shared_data / folder).rglob("*.json*")) if p.is_file())
        found = find_license_file(data_file)
        assert found == shared_data / folder / "LICENSE"
        assert license_id(found.read_text()) == expected, folder


@given(
    text=st.sampled_from(
        [
            (MIT, "mit"),
            (APACHE, "apache-2.0"),
            (CC_BY_SA, "cc-by-sa-4.0"),
            (CC_BY_NC_SA, "cc-by-nc-sa-4.0"),
            (GPL3, "gpl-3.0"),
        ]
    ),
    separators=st.lists(st.sampled_from([" ", "\n", "\n\n", "\t", "   ", " \n  "]), min_size=1, max_size=8),
    case=st.sampled_from([str, str.upper, str.lower]),
)
def test_license_id_ignores_line_breaks_indentation_and_case(text, separators, case):
    body, expected = text
    words = body.split()
    reflowed = "".join(word + separators[i % len(separators)] for i, word in enumerate(words))
    assert license_id(case(reflowed)) == expected


@given(st.text(max_size=300))
def test_text_without_a_known_licence_is_other(text):
    lowered = " ".join(text.lower().split())
    if "license" in lowered or "granted" in lowered or "attribution" in lowered or "cc0" in lowered:
        return  # could be one: not this property's business
    assert license_id(text) == "other"


def test_the_nearest_licence_file_wins_and_none_is_unknown(tmp_path):
    deep = tmp_path / "corpus" / "part" / "2024"
    deep.mkdir(parents=True)
    data = deep / "pairs.jsonl"
    data.write_text("{}\n")
    assert source_license(data.as_uri()) == ("unknown", None)
    (tmp_path / "corpus" / "COPYING").write_text(GPL3)
    assert source_license(data.as_uri()) == ("gpl-3.0", str(tmp_path / "corpus" / "COPYING"))
    (deep / "License.md").write_text(MIT)  # any case, any of the usual extensions
    assert source_license(data.as_uri()) == ("mit", str(deep / "License.md"))
    assert source_license("hf://someone/prefs/train") == ("unknown", None)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return build_small_dataset(tmp_path_factory.mktemp("cards"))


def test_lineage_of_a_built_version_counts_every_row_per_source(small):
    lineage = dataset_lineage(small.workspace, small.dataset_id)
    assert list(lineage.splits) == ["train", "eval"] and lineage.licenses == ["apache-2.0", "mit"]
    sources = {source.name: source for source in lineage.sources}
    chat, math = sources["chat"], sources["math"]
    assert (chat.records_read, chat.rejected_at_ingest, chat.pairs) == (14, 1, 13)
    assert (chat.rejected_in_build, chat.kept) == (1, 12)
    assert chat.rejected_by_reason == {"duplicate_pair": 1, "missing_field": 1}
    assert (math.records_read, math.kept, math.license) == (40, 40, "mit")
    for source in lineage.sources:  # conservation, per file: pairs made = kept + rejected in the build
        assert source.pairs == source.kept + source.rejected_in_build
    assert sum(s.kept for s in lineage.sources) == lineage.rows
    json.dumps(lineage.to_json())  # what trackers receive must be JSON


def test_lineage_of_a_ref_version_and_of_a_source_without_its_licence(small, tmp_path):
    """A -ref- version carries its parent's pairs and manifest inputs; a source whose licence file is gone
    has an unknown licence, and its counts stay."""
    ws, parent = small.workspace, small.dataset_id
    ref_id = f"{parent}-ref-0123456789abcdef"
    shutil.copytree(ws.dataset_dir(parent), ws.dataset_dir(ref_id))
    manifest_path = ws.dataset_dir(ref_id) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(dataset_id=ref_id, reference_model={"id": "model-abc", "path": "/m", "dtype": "bfloat16"})
    manifest_path.write_text(json.dumps(manifest))
    lineage = dataset_lineage(ws, ref_id)
    assert lineage.pairs_dataset_id == parent and lineage.reference_model["dtype"] == "bfloat16"
    assert lineage.rows == dataset_lineage(ws, parent).rows

    licence = small.chat_file.parents[2] / "LICENSE.txt"
    moved = tmp_path / "LICENSE.txt"
    shutil.move(licence, moved)
    try:
        chat = next(s for s in dataset_lineage(ws, parent).sources if s.name == "chat")
        assert chat.license == "unknown" and chat.kept == 12
    finally:
        shutil.move(moved, licence)


RUN = {
    "run_id": "run-0123abcd",
    "dataset_id": "ds-feedface",
    "base_model": {"id": "model-1234", "path": "/models/base"},
    "reference_model": {"id": "model-1234", "path": "/models/base", "source": "frozen copy of the base"},
    "loss": {"name": "dpop", "beta": 0.1, "penalty_lambda": 50.0},
    "finetuning": "full",
    "config": {"learning_rate": 5e-06, "max_steps": 100, "seed": 42, "lora_r": 0, "report_to": ["none"]},
    "final_metrics": {"loss": 0.61, "eval_rewards/margins": 0.25, "dpop/penalty": 0.0, "train_runtime": 12.5},
}


def test_model_card_has_front_matter_settings_metrics_sources_and_loading(small):
    from huggingface_hub import ModelCard

    lineage = dataset_lineage(small.workspace, small.dataset_id)
    card = ModelCard(model_card({**RUN, "dataset_id": small.dataset_id}, None, lineage))
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.license == ["apache-2.0", "mit"] and "dpop" in card.data.tags
    text = card.text
    assert f"on dataset version `{small.dataset_id}`, full fine-tuning" in text
    assert "| penalty_lambda | 50.0 |" in text and "| loss | dpop |" in text
    assert "| reference | model-1234 (frozen copy of the base) |" in text
    assert "| eval_rewards/margins | 0.25 |" in text and "| train_runtime | 12.5 |" in text
    assert "| chat | flat | apache-2.0 | 14 | 1 | 1 | 12 |" in text
    assert "AutoModelForCausalLM.from_pretrained" in text


def test_model_card_of_a_lora_run_without_lineage():
    lora = {**RUN, "finetuning": "lora", "config": {**RUN["config"], "lora_r": 16}}
    text = model_card(lora, {"loss": 0.5}, None)
    assert "library_name: peft" in text and "AutoPeftModelForCausalLM" in text
    assert "| lora_r | 16 |" in text and "| loss | 0.5 |" in text and "## Sources" not in text
