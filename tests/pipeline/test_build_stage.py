"""BuildStage as a partitioned stage: the same dataset from the inline executor and from parts run in
spawned processes, funnel and conservation across partitions, identity, records, a failed part."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline import manifest as manifest_io
from pipeline.build import SHARD_PHASE, BuildStage, build_dataset
from pipeline.build_parts import PartTask
from pipeline.catalog import Catalog
from pipeline.curate.config import load_curation_config
from pipeline.shards import open_split
from pipeline.stage import InlineExecutor, read_record, run_stage
from pipeline.workspace import Workspace
from tests.pipeline._pairs import tiny_tokenizer
from tests.pipeline.test_build import CONFIG, make_ingests


@dataclass(frozen=True)
class FailAfter:
    """Runs a part, then fails on one partition (after its files are written): a crashed worker."""

    fn: Callable[[PartTask], Any]
    index: int

    def __call__(self, task: PartTask) -> Any:
        result = self.fn(task)
        if task.partition.index == self.index:
            raise RuntimeError(f"part {self.index} crashed")
        return result


class SpawnPoolExecutor(InlineExecutor):
    """Stages in this process, their parts in a pool of spawned processes (nothing inherited from the
    driver's memory: a part sees only its pickled arguments and the files). Like a Dask executor must,
    it waits for every part before raising the first error, so no part writes into a folder the runner
    is removing."""

    def __init__(self, pool: ProcessPoolExecutor, fail: tuple[str, int] | None = None):
        self.pool, self.fail = pool, fail
        self.labels: list[tuple[str, int]] = []

    def map(self, label: str, fn: Callable, items: Sequence) -> list:
        self.labels.append((label, len(items)))
        if self.fail is not None and self.fail[0] == label:
            fn = FailAfter(fn, self.fail[1])
        futures = [self.pool.submit(fn, item) for item in items]
        wait(futures)
        return [future.result() for future in futures]


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


def stage_for(ws: Workspace, tok_path: Path, **options: Any) -> BuildStage:
    return BuildStage(tuple(make_ingests(ws.root)), load_curation_config(CONFIG), tok_path, **options)


def data_files(folder: Path) -> dict[str, bytes]:
    """Every file of a dataset folder but the runner's record (which holds the run's times)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "stage.json"}


@pytest.mark.slow  # spawned workers import the tokenizer stack (a few seconds each)
def test_inline_and_spawned_parts_give_the_same_bytes(tmp_path: Path, tok_path: Path, pool) -> None:
    inline_ws, pool_ws = Workspace.open(tmp_path / "inline"), Workspace.open(tmp_path / "pool")
    inline = run_stage(inline_ws, stage_for(inline_ws, tok_path, partition_rows=8))
    executor = SpawnPoolExecutor(pool)
    # another batch size too: it bounds a part's memory and changes nothing in the output
    spawned = run_stage(pool_ws, stage_for(pool_ws, tok_path, partition_rows=8, batch_rows=3), executor)
    assert executor.labels == [("build.score", 8), ("build.shard", 8)]  # 37 + 20 rows in 5 + 3 partitions
    assert spawned.id == inline.id and not spawned.reused
    inline_files, pool_files = (
        data_files(inline_ws.dataset_dir(inline.id)),
        data_files(pool_ws.dataset_dir(inline.id)),
    )
    assert inline_files.keys() == pool_files.keys()
    for name, data in inline_files.items():
        assert pool_files[name] == data, name
    assert spawned.counts == inline.counts and spawned.summary == inline.summary
    manifest = manifest_io.load(pool_ws, spawned.id)
    assert manifest == manifest_io.load(inline_ws, inline.id)
    assert len(manifest.splits["train"].shards) > 2  # each partition writes its own shards
    assert [s.file for s in manifest.splits["train"].shards][:2] == ["train-00000.arrow", "train-00001.arrow"]
    assert not (pool_ws.dataset_dir(spawned.id) / "parts").exists()


def test_partitions_change_only_the_shard_files(tmp_path: Path, tok_path: Path) -> None:
    """Funnel, kept pairs and rejections are the same whatever the partitioning; the shards hold the
    same rows in the same order, cut at partition ends (so `partition_rows` is part of the id)."""
    whole_ws, parts_ws = Workspace.open(tmp_path / "whole"), Workspace.open(tmp_path / "parts")
    whole = build_dataset(whole_ws, CONFIG, tok_path, make_ingests(whole_ws.root))
    parts = build_dataset(parts_ws, CONFIG, tok_path, make_ingests(parts_ws.root), partition_rows=4)
    assert parts.dataset_id != whole.dataset_id
    assert parts.funnel == whole.funnel and parts.rejected_by_reason == whole.rejected_by_reason
    whole_files, parts_files = data_files(whole.dataset_dir), data_files(parts.dataset_dir)
    for name in ("pairs.parquet", "rejections.parquet"):
        assert parts_files[name] == whole_files[name], name
    for split in ("train", "eval"):
        assert open_split(parts_ws, parts.dataset_id, split).equals(
            open_split(whole_ws, whole.dataset_id, split)
        )
    assert len(parts_files) > len(whole_files)


def test_funnel_and_conservation_across_partitions(workspace: Workspace, tok_path: Path) -> None:
    ingests = make_ingests(workspace.root)
    # 3-row partitions: the duplicates (second file) and the pairs of one prompt sit in other partitions
    result = build_dataset(workspace, CONFIG, tok_path, ingests, partition_rows=3)
    steps = {step.step: step for step in result.funnel}
    assert result.rows_in == 57
    assert (steps["duplicate_pair"].rows_in, steps["duplicate_pair"].dropped) == (53, 5)
    assert steps["max_pairs_per_prompt"].dropped == 1 and steps["tokenize.max_length"].dropped == 1
    assert result.rows_kept == 46 == result.train_rows + result.eval_rows
    assert result.rejected_by_reason == {
        "identical_responses": 1,
        "edit_ratio": 2,
        "user_filter": 1,
        "duplicate_pair": 5,
        "max_pairs_per_prompt": 1,
        "too_long": 1,
    }
    pairs = pl.read_parquet(result.dataset_dir / "pairs.parquet")
    rejections = pl.read_parquet(result.dataset_dir / "rejections.parquet")
    for item in ingests:
        rows_in = pq.read_metadata(item.pairs_path).num_rows
        kept = pairs.filter(pl.col("source_uri") == item.source_uri)
        lost = rejections.filter(pl.col("source_uri") == item.source_uri)
        assert rows_in == kept.height + lost.height, item.source_uri
        # every source row exactly once, kept or rejected
        assert sorted(kept["source_row"].to_list() + lost["source_row"].to_list()) == list(range(rows_in))
    # kept pairs and rejections are both in input order (files in the build's order, then rows)
    order = {item.source_uri: n for n, item in enumerate(sorted(ingests, key=lambda i: i.source_uri))}
    for frame in (pairs, rejections):
        keys = [(order[u], r) for u, r in zip(frame["source_uri"], frame["source_row"], strict=True)]
        assert keys == sorted(keys)
    duplicates = rejections.filter(pl.col("reason") == "duplicate_pair")
    assert set(duplicates["source_uri"]) == {ingests[1].source_uri}
    assert pq.ParquetFile(result.dataset_dir / "pairs.parquet").metadata.num_row_groups == 1


@pytest.mark.slow  # spawned workers import the tokenizer stack (a few seconds each)
def test_failed_part_leaves_no_dataset_and_a_rerun_builds(tmp_path: Path, tok_path: Path, pool) -> None:
    ws = Workspace.open(tmp_path / "ws")
    stage = stage_for(ws, tok_path, partition_rows=8)
    with pytest.raises(RuntimeError, match="part 1 crashed"):
        run_stage(ws, stage, SpawnPoolExecutor(pool, fail=(SHARD_PHASE, 1)))
    assert not ws.datasets_dir.exists() or not any(ws.datasets_dir.iterdir())
    events = [json.loads(line) for line in ws.lineage_events_path.read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    record = run_stage(ws, stage)
    assert not record.reused and (ws.dataset_dir(record.id) / "manifest.json").is_file()


def test_identity_record_and_catalog(tmp_path: Path, tok_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    eval_file = tmp_path / "a" / "eval.jsonl"
    eval_file.parent.mkdir()
    eval_file.write_text(json.dumps({"question": "What is 9 + 9?", "answer": "18"}) + "\n")
    config = {**CONFIG, "filters": {**CONFIG["filters"], "decontaminate": {"file": str(eval_file), "n": 3}}}
    stage = BuildStage(tuple(make_ingests(ws.root)), load_curation_config(config), tok_path)
    # the eval file counts by content: the same bytes elsewhere give the same id; no path in the config
    moved = tmp_path / "b" / "eval.jsonl"
    moved.parent.mkdir()
    moved.write_bytes(eval_file.read_bytes())
    moved_config = {**config, "filters": {**config["filters"], "decontaminate": {"file": str(moved), "n": 3}}}
    assert BuildStage(stage.ingests, load_curation_config(moved_config), tok_path).id == stage.id
    assert str(tmp_path) not in json.dumps(stage.config())
    assert BuildStage(stage.ingests, stage.curation, tok_path, partition_rows=10).id != stage.id
    assert BuildStage(stage.ingests, stage.curation, tok_path, batch_rows=10).id == stage.id
    assert BuildStage(tuple(reversed(stage.ingests)), stage.curation, tok_path).id == stage.id

    record = run_stage(ws, stage)
    assert record.id == stage.id == manifest_io.load(ws, stage.id).dataset_id
    assert record.counts["rows_in"] == 57 and record.rejected_by_reason["contaminated"] == 1
    relations = sorted(i.relation for i in record.inputs)
    assert relations == ["curated_from", "curated_from", "tokenized_with"]
    assert read_record(stage.folder(ws)).to_json() == record.to_json()
    catalog = Catalog(ws)
    tokenizer = stage.tokenizer_artifact.id
    assert catalog.get(tokenizer).kind == "tokenizer"
    assert (tokenizer, "tokenized_with") in catalog.parents(f"pairs-{stage.id}")
    assert catalog.get(f"rejections-{stage.id}").rows == 57 - record.counts["rows_out"]
    assert catalog.get(stage.id).meta["train_rows"] == record.counts["train_rows"]
    assert run_stage(ws, stage).reused
