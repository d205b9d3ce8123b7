"""build_dataset: funnel and conservation, determinism and reuse, atomicity, catalog, real data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline import shards as shards_module
from pipeline.build import build_dataset
from pipeline.catalog import Catalog
from pipeline.shards import ShardError, load_manifest, open_split, shard_paths
from pipeline.workspace import Workspace
from tests.pipeline._pairs import tiny_tokenizer, write_ingest

CONFIG = {
    "filters": {
        "edit_ratio": {"max": 0.8},
        "max_pairs_per_prompt": 2,
        "user": [{"name": "no_x", "drop_where": "contains(chosen, 'XXX')"}],
    },
    "split": {"eval_fraction": 0.25},
    "tokenize": {"max_length": 64, "max_prompt_length": 24},
    "shards": {"rows_per_shard": 7},
}


def math_rows(offset: int, count: int) -> list[dict]:
    return [
        {"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
        for i in range(offset, offset + count)
    ]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


def make_ingests(root: Path) -> list:
    first = math_rows(0, 30) + [
        {"prompt": "What is 1 + 1?", "chosen": "It is 2.", "rejected": "I have no idea at all, sorry"},
        {"prompt": "What is 1 + 1?", "chosen": "It is 2!", "rejected": "It is 3!"},
        {"prompt": "What is 1 + 1?", "chosen": "It is 2?", "rejected": "It is 3?"},  # third pair kept for it
        {"prompt": "p", "chosen": "XXX yes", "rejected": "XXX no"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": "p", "chosen": "abc", "rejected": "zzzzzzzzzzzz"},  # edit ratio 1
        {
            "prompt": "long",
            "chosen": "It is 72. " * 20,
            "rejected": "It is 72. " * 19 + "It is 73.",
        },  # tokens
    ]
    second = math_rows(25, 20)  # rows 25..29 repeat pairs of the first file: duplicates
    return [write_ingest(root, first, "first"), write_ingest(root, second, "second")]


def test_funnel_conservation_and_files(workspace: Workspace, tok_path: Path) -> None:
    ingests = make_ingests(workspace.root)
    result = build_dataset(workspace, CONFIG, tok_path, ingests)
    assert not result.reused and result.dataset_id.startswith("ds-")
    steps = {step: (rows_in, dropped, reason) for step, rows_in, dropped, reason in result.funnel}
    assert result.rows_in == 57 == steps["input"][0]
    assert steps["identical_responses"][1:] == (1, "identical_responses")
    assert steps["edit_ratio"][1:] == (2, "edit_ratio")  # "abc" vs "zzz..." and the "no idea" answer
    assert steps["user.no_x"][1:] == (1, "user_filter")
    assert steps["duplicate_pair"][1:] == (5, "duplicate_pair")
    assert steps["max_pairs_per_prompt"][1:] == (1, "max_pairs_per_prompt")
    assert steps["tokenize.max_length"][1:] == (1, "too_long")
    dropped = sum(d for _, _, d, _ in result.funnel)
    assert result.rows_kept == 57 - dropped == result.train_rows + result.eval_rows == 46
    assert 0 < result.eval_rows < result.train_rows

    folder = result.dataset_dir
    pairs = pl.read_parquet(folder / "pairs.parquet")
    rejections = pl.read_parquet(folder / "rejections.parquet")
    # conservation per source file: ingest-kept = curate-kept + rejected (curate or tokenize)
    for item in ingests:
        rows_in = pq.read_metadata(item.pairs_path).num_rows
        kept = pairs.filter(pl.col("source_uri") == item.source_uri).height
        lost = rejections.filter(pl.col("source_uri") == item.source_uri).height
        assert rows_in == kept + lost, item.source_uri
    assert set(rejections["stage"]) == {"curate", "tokenize"}
    assert rejections.filter(pl.col("stage") == "tokenize")["reason"].to_list() == ["too_long"]
    assert rejections["pair_id"].null_count() == 0
    # the duplicates rejected are the second file's copies
    duplicates = rejections.filter(pl.col("reason") == "duplicate_pair")
    assert set(duplicates["source_uri"]) == {ingests[1].source_uri}

    # shards: every kept pair once, on the side its pairs.parquet row says, prompts never on both sides
    train, evaluation = (
        open_split(workspace, result.dataset_id, "train"),
        open_split(workspace, result.dataset_id, "eval"),
    )
    assert train.num_rows == result.train_rows and evaluation.num_rows == result.eval_rows
    split_of = dict(zip(pairs["pair_id"], pairs["split"], strict=True))
    assert all(split_of[p] == "train" for p in train["pair_id"].to_pylist())
    assert all(split_of[p] == "eval" for p in evaluation["pair_id"].to_pylist())
    sides = pairs.group_by(pl.col("prompt").list.first().struct.field("content")).agg(
        pl.col("split").n_unique()
    )
    assert sides["split"].max() == 1
    manifest = load_manifest(workspace, result.dataset_id)
    assert [s["rows"] for s in manifest["splits"]["train"]["shards"]][0] == 7  # bounded shard size
    assert manifest["truncation"] == "keep_prompt_end_reject_long_response"
    assert manifest["max_length"] == 64 and manifest["reference_model"] is None
    assert manifest["tokenizer"]["sha256"] and manifest["tokenizer"]["chat_template_sha256"]
    assert "created" not in json.dumps(manifest) and "time" not in json.dumps(manifest)
    assert sorted(p["id"] for p in manifest["parents"]) == sorted(f"pairs-{i.ingest_id}" for i in ingests)
    for split in ("train", "eval"):
        shard_paths(workspace, result.dataset_id, split, verify=True)
    # the edit ratio in the shards is the scored one
    ratio = dict(zip(pairs["pair_id"], pairs["edit_ratio"], strict=True))
    for pid, value in zip(train["pair_id"].to_pylist(), train["edit_ratio"].to_pylist(), strict=True):
        assert value == pytest.approx(ratio[pid], rel=1e-6)

    catalog = Catalog(workspace)
    record = catalog.get(result.dataset_id)
    assert record.kind == "dataset" and record.rows == 46
    assert sorted(catalog.parents(result.dataset_id)) == sorted(
        (f"pairs-{i.ingest_id}", "curated_from") for i in ingests
    )
    shard_records = catalog.find("shard")
    assert len(shard_records) == len(manifest["splits"]["train"]["shards"]) + len(
        manifest["splits"]["eval"]["shards"]
    )
    assert all(catalog.parents(s.id) == [(result.dataset_id, "part_of")] for s in shard_records)


def test_same_inputs_same_id_and_bytes_and_reuse(tmp_path: Path, tok_path: Path) -> None:
    first_ws, second_ws = Workspace.open(tmp_path / "a"), Workspace.open(tmp_path / "b")
    first = build_dataset(first_ws, CONFIG, tok_path, make_ingests(first_ws.root))
    second = build_dataset(second_ws, CONFIG, tok_path, make_ingests(second_ws.root))
    assert first.dataset_id == second.dataset_id
    names = sorted(p.name for p in first.dataset_dir.iterdir())
    assert names == sorted(p.name for p in second.dataset_dir.iterdir())
    assert "manifest.json" in names and "train-00000.arrow" in names
    for name in names:
        if name == "stage.json":  # the runner's record: it holds the run's times, by design
            continue
        assert (first.dataset_dir / name).read_bytes() == (second.dataset_dir / name).read_bytes(), name
    again = build_dataset(first_ws, CONFIG, tok_path, make_ingests(first_ws.root))
    assert again.reused and again.dataset_id == first.dataset_id and again.funnel == first.funnel
    other = build_dataset(
        first_ws, {**CONFIG, "split": {"eval_fraction": 0.5}}, tok_path, make_ingests(first_ws.root)
    )
    assert other.dataset_id != first.dataset_id


def test_killed_build_leaves_no_dataset(workspace: Workspace, tok_path: Path, monkeypatch) -> None:
    finish = shards_module.SplitWriter._finish_shard
    calls = []

    def finish_then_die(self) -> None:
        finish(self)
        calls.append(self.infos[-1].file)
        raise KeyboardInterrupt("killed after the first shard")

    monkeypatch.setattr(shards_module.SplitWriter, "_finish_shard", finish_then_die)
    ingests = make_ingests(workspace.root)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(workspace, CONFIG, tok_path, ingests)
    assert calls == ["train-00000.arrow"]
    assert not workspace.datasets_dir.exists() or not any(workspace.datasets_dir.iterdir())
    monkeypatch.undo()
    result = build_dataset(workspace, CONFIG, tok_path, ingests)  # a rerun completes normally
    assert not result.reused
    shutil.rmtree(result.dataset_dir)
    with pytest.raises(ShardError):
        shard_paths(workspace, result.dataset_id, "train")


def test_bad_inputs_are_reported(workspace: Workspace, tok_path: Path) -> None:
    with pytest.raises(ValueError, match="no ingested pairs"):
        build_dataset(workspace, CONFIG, tok_path, [])
    ingests = make_ingests(workspace.root)
    bad = {"filters": {"user": [{"name": "oops", "keep_where": "no_such_column > 1"}]}}
    with pytest.raises(ValueError, match="oops"):
        build_dataset(workspace, bad, tok_path, ingests)
    assert not any(workspace.datasets_dir.iterdir())


@pytest.mark.slow
def test_real_data_ingest_then_build(workspace: Workspace, shared_data: Path, tok_path: Path) -> None:
    from pipeline.ingest import ingest_source, latest_ingests

    files = [
        "openai_grade-school-math/example_model_solutions.jsonl",
        "anthropics_hh-rlhf/harmless-base/test.jsonl.gz",
        "hiyouga_LLaMA-Factory/dpo_en_demo.json",
        "hiyouga_LLaMA-Factory/dpo_zh_demo.json",
        "WeOpenML_PandaLM/testset-v1.json",
    ]
    for name in files:
        ingest_source(shared_data / name, workspace)
    config = {
        "filters": {
            "decontaminate": {"file": str(shared_data / "openai_grade-school-math" / "test.jsonl"), "n": 13},
            "max_pairs_per_prompt": 3,
        },
        "tokenize": {"max_length": 1024, "max_prompt_length": 512},
    }
    result = build_dataset(workspace, config, tok_path)
    steps = {step: dropped for step, _, dropped, _ in result.funnel}
    ingests = latest_ingests(workspace)
    assert result.rows_in == sum(pq.read_metadata(i.pairs_path).num_rows for i in ingests)
    # every GSM8K model-solution pair is built on the test questions: decontamination removes them all
    gsm = next(i for i in ingests if "example_model_solutions" in i.source_uri)
    pairs = pl.read_parquet(result.dataset_dir / "pairs.parquet")
    assert pairs.filter(pl.col("source_uri") == gsm.source_uri).height == 0
    assert steps["decontaminate"] >= pq.read_metadata(gsm.pairs_path).num_rows * 0.95
    rejections = pl.read_parquet(result.dataset_dir / "rejections.parquet")
    for item in ingests:
        rows_in = pq.read_metadata(item.pairs_path).num_rows
        kept = pairs.filter(pl.col("source_uri") == item.source_uri).height
        assert rows_in == kept + rejections.filter(pl.col("source_uri") == item.source_uri).height
    assert result.rows_kept > 2000 and result.eval_rows > 0


def test_word_edit_distance_only_when_a_filter_reads_it(tmp_path: Path, tok_path: Path) -> None:
    from pipeline.build_parts import needs_word_distance
    from pipeline.curate.config import load_curation_config
    from pipeline.score import word_edit_distances

    reads = {
        **CONFIG["filters"],
        "user": [{"name": "words", "drop_where": "WORD_EDIT_DISTANCE = 1 AND len_chosen_words > 50"}],
    }
    config = {**CONFIG, "filters": reads}
    assert needs_word_distance(load_curation_config(config))
    assert not needs_word_distance(load_curation_config(CONFIG))
    plain_ws, words_ws = Workspace.open(tmp_path / "plain"), Workspace.open(tmp_path / "words")
    plain = build_dataset(plain_ws, CONFIG, tok_path, make_ingests(plain_ws.root))
    words = build_dataset(words_ws, config, tok_path, make_ingests(words_ws.root))
    plain_pairs = pl.read_parquet(plain.dataset_dir / "pairs.parquet")
    words_pairs = pl.read_parquet(words.dataset_dir / "pairs.parquet")
    assert "word_edit_distance" not in plain_pairs.columns  # not scored: no filter reads it
    # scored and used: the long answer one word apart is dropped by the filter
    assert dict((s, d) for s, _, d, _ in words.funnel)["user.words"] == 1
    expected = word_edit_distances(words_pairs["chosen"].to_arrow(), words_pairs["rejected"].to_arrow())
    assert words_pairs["word_edit_distance"].to_list() == expected.tolist()
    assert plain_pairs.drop("split").columns == [
        c for c in words_pairs.drop("split").columns if c != "word_edit_distance"
    ]
