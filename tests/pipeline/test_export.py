"""`export_dataset`: a real dataset version (two licensed source files, ingested and built) exported in each
format reads back with `datasets` as it is, row for row equal to the version's kept pairs; the card; errors."""

from __future__ import annotations

import socket

import polars as pl
import pytest
from datasets import load_dataset, load_from_disk

from pipeline.export import ExportError, PushError, export_dataset, push_export
from tests.pipeline._export_data import build_small_dataset

EXTRA = ["pair_id", "source", "chosen_score", "rejected_score", "score_margin", "edit_distance", "edit_ratio"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return build_small_dataset(tmp_path_factory.mktemp("export"))


def kept_pairs(small) -> dict[str, pl.DataFrame]:
    pairs = pl.read_parquet(small.workspace.dataset_dir(small.dataset_id) / "pairs.parquet")
    return {"train": pairs.filter(split="train"), "test": pairs.filter(split="eval")}


def assert_conversational_rows_match(dataset, expected: pl.DataFrame) -> None:
    assert dataset.column_names == ["prompt", "chosen", "rejected", *EXTRA]
    assert dataset["pair_id"] == expected["pair_id"].to_list()  # same rows, same order
    assert dataset["prompt"] == expected["prompt"].to_list()
    assert dataset["chosen"] == [[{"role": "assistant", "content": text}] for text in expected["chosen"]]
    assert dataset["rejected"] == [[{"role": "assistant", "content": text}] for text in expected["rejected"]]
    assert dataset["chosen_score"] == expected["chosen_score"].to_list()
    assert dataset["edit_ratio"] == expected["edit_ratio"].to_list()


def test_trl_format_is_what_load_dataset_reads_with_its_splits(small, tmp_path):
    result = export_dataset(small.workspace, small.dataset_id, tmp_path / "out")
    expected = kept_pairs(small)
    assert result.rows == {"train": expected["train"].height, "test": expected["test"].height}
    assert expected["test"].height > 0 and result.licenses == ("apache-2.0", "mit")
    loaded = load_dataset(str(result.out_dir))
    assert set(loaded) == {"train", "test"}
    for split in ("train", "test"):
        assert_conversational_rows_match(loaded[split], expected[split])
    names = sorted(p.relative_to(result.out_dir).as_posix() for p in result.files)
    assert names == ["README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]
    # a system message stays in the prompt, before the user's
    with_system = [p for p in loaded["train"]["prompt"] if p[0]["role"] == "system"]
    assert with_system and with_system[0][0]["content"] == "You are terse."


def test_trl_format_cuts_big_splits_into_hub_sized_files(small, tmp_path):
    result = export_dataset(
        small.workspace, small.dataset_id, tmp_path / "out", rows_per_file=10, batch_rows=7
    )
    train_files = sorted(p.name for p in (result.out_dir / "data").glob("train-*"))
    total = -(-result.rows["train"] // 10)
    assert train_files == [f"train-{i:05d}-of-{total:05d}.parquet" for i in range(total)]
    loaded = load_dataset(str(result.out_dir))
    assert loaded["train"]["pair_id"] == kept_pairs(small)["train"]["pair_id"].to_list()


def test_parquet_format_is_one_file_per_split(small, tmp_path):
    result = export_dataset(small.workspace, small.dataset_id, tmp_path / "out", fmt="parquet")
    out = result.out_dir
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "test.parquet", "train.parquet"]
    explicit = load_dataset(
        "parquet", data_files={"train": str(out / "train.parquet"), "test": str(out / "test.parquet")}
    )
    by_folder = load_dataset(str(out))  # through the card's configs
    for split, expected in kept_pairs(small).items():
        assert_conversational_rows_match(explicit[split], expected)
        assert by_folder[split]["pair_id"] == explicit[split]["pair_id"]


def test_hf_format_is_a_save_to_disk_folder(small, tmp_path):
    result = export_dataset(small.workspace, small.dataset_id, tmp_path / "out", fmt="hf")
    loaded = load_from_disk(str(result.out_dir))
    for split, expected in kept_pairs(small).items():
        assert_conversational_rows_match(loaded[split], expected)
    assert (result.out_dir / "README.md").is_file() and not (result.out_dir / ".scratch").exists()


def test_standard_style_renders_the_prompt_as_the_shards_saw_it(small, tmp_path):
    from pipeline.tokenize import PairTokenizer

    result = export_dataset(small.workspace, small.dataset_id, tmp_path / "out", style="standard")
    loaded = load_dataset(str(result.out_dir))["train"]
    expected = kept_pairs(small)["train"]
    rendered = PairTokenizer(small.tokenizer, 10, 10).prompt_texts(expected["prompt"])
    assert loaded["prompt"] == rendered and loaded["chosen"] == expected["chosen"].to_list()
    assert rendered[0].startswith("<|im_start|>") and rendered[0].endswith("assistant\n")


def test_a_new_export_under_a_used_folder_name_loads_its_own_rows(small, tmp_path):
    """`datasets` caches a local folder's load under the folder's name: the card must not pin that cache
    (a README `configs` section did), or the second load returns the first export's rows."""
    cache = tmp_path / "hf-cache"
    first = export_dataset(small.workspace, small.dataset_id, tmp_path / "a" / "out")
    assert isinstance(load_dataset(str(first.out_dir), cache_dir=str(cache))["train"][0]["prompt"], list)
    second = export_dataset(small.workspace, small.dataset_id, tmp_path / "b" / "out", style="standard")
    assert isinstance(load_dataset(str(second.out_dir), cache_dir=str(cache))["train"][0]["prompt"], str)


def test_export_twice_gives_the_same_bytes(small, tmp_path):
    first = export_dataset(small.workspace, small.dataset_id, tmp_path / "out")
    snapshot = {p: p.read_bytes() for p in first.files}
    second = export_dataset(small.workspace, small.dataset_id[:8], tmp_path / "out", overwrite=True)
    assert second.dataset_id == small.dataset_id  # a unique prefix is enough
    assert {p: p.read_bytes() for p in second.files} == snapshot


def test_dataset_card_front_matter_and_sections(small, tmp_path):
    from huggingface_hub import DatasetCard

    result = export_dataset(small.workspace, small.dataset_id, tmp_path / "out")
    card = DatasetCard.load(result.card)
    data = card.data.to_dict()
    assert data["license"] == ["apache-2.0", "mit"]
    assert data["task_categories"] == ["text-generation"] and data["size_categories"] == ["n<1K"]
    splits = data["dataset_info"]["splits"]
    assert [(s["name"], s["num_examples"]) for s in splits] == list(result.rows.items())
    assert all(s["num_bytes"] > 0 for s in splits)
    text = card.text
    for section in ("## The funnel", "## Sources", "## Lineage", "## How to load it"):
        assert section in text
    assert "Ingest read 54 records from 2 file(s) and rejected 1" in text
    assert "| duplicate_pair | 53 | 1 | duplicate_pair |" in text
    # file, format, licence, records, rejected at ingest, rejected in curation, kept, reasons
    assert "| chat | flat | apache-2.0 | 14 | 1 | 1 | 12 | duplicate_pair 1, missing_field 1 |" in text
    assert "| math | flat | mit | 40 | 0 | 0 | 40 |  |" in text
    assert small.math_file.as_uri() in text and f"dpop lineage {small.dataset_id}" in text


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (dict(dataset_id="ds-nope"), "no dataset version 'ds-nope' in "),
        (dict(fmt="csv"), "unknown format 'csv': choose one of trl, parquet, hf"),
        (dict(style="chatml"), "unknown style 'chatml': choose one of conversational, standard"),
    ],
)
def test_bad_requests_fail_with_one_line(small, tmp_path, call, message):
    arguments = dict(workspace=small.workspace, dataset_id=small.dataset_id, out=tmp_path / "out") | call
    with pytest.raises(ExportError, match="^" + message.replace("(", r"\(")):
        export_dataset(**arguments)
    assert not (tmp_path / "out").exists()


def test_a_folder_in_the_way_is_kept_unless_overwrite(small, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(ExportError, match="is not empty; pass --overwrite"):
        export_dataset(small.workspace, small.dataset_id, out)
    assert (out / "mine.txt").read_text() == "keep me"
    export_dataset(small.workspace, small.dataset_id, out, overwrite=True)
    assert not (out / "mine.txt").exists()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # free once closed: nothing listens there


def test_push_without_a_reachable_hub_is_one_line_and_keeps_the_export(small, tmp_path):
    result = export_dataset(small.workspace, small.dataset_id, tmp_path / "out")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(PushError) as failure:
        push_export(result, "someone/prefs", token="hf_test", endpoint=endpoint)
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith(
        "could not push to the Hub dataset repo someone/prefs: the Hub cannot be reached"
    )
    assert f"hf upload someone/prefs {result.out_dir} --repo-type dataset" in message
    assert load_dataset(str(result.out_dir))["train"].num_rows == result.rows["train"]


def test_push_refuses_a_save_to_disk_folder(small, tmp_path):
    result = export_dataset(small.workspace, small.dataset_id, tmp_path / "out", fmt="hf")
    with pytest.raises(PushError, match="--push-to-hub takes --format trl or parquet"):
        push_export(result, "someone/prefs")
