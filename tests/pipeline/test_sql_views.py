"""`pairs` and `rejections` tell the truth without knowing the version scheme: they hold the current
dataset version only, a derived version (reference log-probs: a copy of its parent's pairs) never
counts its pairs twice, and every version stays reachable through `pairs_history` /
`rejections_history`. Real ingest and build on small JSONL files; the derived version is made the way
`dpop refs` makes it (same files copied, a manifest with the dataset as parent), without a model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from pipeline.build import build_dataset
from pipeline.catalog import Catalog
from pipeline.ingest import ingest_source
from pipeline.lineage import training_rows
from pipeline.sql import VIEWS, query
from pipeline.workspace import Workspace
from tests.pipeline._pairs import tiny_tokenizer

CONFIG = {"split": {"eval_fraction": 0.25}, "tokenize": {"max_length": 64, "max_prompt_length": 32}}


def _jsonl(path: Path, offset: int, count: int, extra: list[str] = ()) -> Path:
    rows = [
        json.dumps(
            {"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
        )
        for i in range(offset, offset + count)
    ]
    path.write_text("\n".join(rows + list(extra)) + "\n", encoding="utf-8")
    return path


def _by_source(ws: Workspace, view: str = "pairs") -> dict[str, int]:
    return dict(query(ws, f"SELECT source_uri, count(*) FROM {view} GROUP BY ALL").iter_rows())


def _kept_by_source(ws: Workspace, dataset_id: str) -> dict[str, int]:
    """What the build kept, read straight from its pairs.parquet."""
    frame = pl.read_parquet(ws.dataset_dir(dataset_id) / "pairs.parquet")
    return dict(frame.group_by("source_uri").len().iter_rows())


def _derive(ws: Workspace, dataset_id: str) -> str:
    """A version made from `dataset_id` the way `dpop refs` makes one: its pairs and rejections copied."""
    new_id = f"{dataset_id}-ref-000000000000"
    shutil.copytree(ws.dataset_dir(dataset_id), ws.dataset_dir(new_id))
    (ws.dataset_dir(new_id) / "stage.json").unlink(missing_ok=True)
    manifest_path = ws.dataset_dir(new_id) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(
        dataset_id=new_id,
        parents=[
            {"id": dataset_id, "kind": "dataset", "relation": "reference_logps_from"},
            {"id": "model-ref", "kind": "model", "relation": "reference_model"},
        ],
        reference_model={"id": "model-ref", "path": "/models/ref"},
    )
    manifest_path.write_text(json.dumps(manifest))
    Catalog(ws).record_artifact(
        new_id,
        "dataset",
        str(ws.dataset_dir(new_id)),
        parents={dataset_id: "reference_logps_from", "model-ref": "reference_model"},
    )
    return new_id


def _train(ws: Workspace, dataset_id: str, run_id: str) -> None:
    catalog = Catalog(ws)
    catalog.record_artifact(run_id, "run", str(ws.run_dir(run_id)), parents={dataset_id: "trained_on"})
    catalog.record_artifact(f"model-{run_id}", "model", "/models/x", parents={run_id: "produced"})


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    return tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


def test_counts_stay_true_through_refs_training_and_refresh(tmp_path, tokenizer):
    ws = Workspace.open(tmp_path / "ws")
    first = _jsonl(tmp_path / "first.jsonl", 0, 12, extra=["{not json", json.dumps({"prompt": "p"})])
    [a] = ingest_source(first, ws)
    assert query(ws, "SELECT count(*) FROM rejections").item() == a.rows_rejected == 2  # before any build

    built = build_dataset(ws, CONFIG, tokenizer, ingests=[a])
    assert _by_source(ws) == _kept_by_source(ws, built.dataset_id)
    assert sum(_by_source(ws).values()) == built.rows_kept

    derived = _derive(ws, built.dataset_id)
    _train(ws, derived, "run-1")
    assert _by_source(ws) == _kept_by_source(ws, built.dataset_id)  # not doubled by the copy
    assert _by_source(ws, "pairs_history") == _kept_by_source(ws, built.dataset_id)
    current = query(ws, "SELECT dataset_id, pairs_dataset_id FROM datasets WHERE is_current").row(0)
    assert current == (derived, built.dataset_id)

    # refresh: a second file, a new version over both; the old one leaves `pairs` but stays in history
    second = _jsonl(tmp_path / "second.jsonl", 100, 8, extra=[json.dumps({"prompt": "p", "chosen": "a"})])
    [b] = ingest_source(second, ws)
    refreshed = build_dataset(ws, CONFIG, tokenizer, ingests=[a, b])
    assert _by_source(ws) == _kept_by_source(ws, refreshed.dataset_id)
    assert sum(_by_source(ws).values()) == refreshed.rows_kept
    assert query(ws, "SELECT DISTINCT dataset_id FROM pairs").item() == refreshed.dataset_id
    history = dict(query(ws, "SELECT dataset_id, count(*) FROM pairs_history GROUP BY ALL").iter_rows())
    assert history == {built.dataset_id: built.rows_kept, refreshed.dataset_id: refreshed.rows_kept}

    ingest_dropped = a.rows_rejected + b.rows_rejected
    by_stage = dict(query(ws, "SELECT stage, count(*) FROM rejections GROUP BY ALL").iter_rows())
    assert by_stage.get("ingest", 0) == ingest_dropped
    assert by_stage.get("curate", 0) + by_stage.get("tokenize", 0) == refreshed.rows_in - refreshed.rows_kept
    everything = query(ws, "SELECT count(*) FROM rejections_history").item()
    assert everything == ingest_dropped + (built.rows_in - built.rows_kept) + (
        refreshed.rows_in - refreshed.rows_kept
    )

    # the old run's rows still reach their source rows, through the history
    rows = training_rows(ws, "model-run-1")
    assert rows.height == built.train_rows + built.eval_rows
    assert set(rows["source_uri"].to_list()) == {a.source_uri}


def test_without_catalog_records_the_newest_manifest_is_current(tmp_path, tokenizer):
    ws = Workspace.open(tmp_path / "ws")
    [a] = ingest_source(_jsonl(tmp_path / "a.jsonl", 0, 10), ws)
    [b] = ingest_source(_jsonl(tmp_path / "b.jsonl", 50, 10), ws)
    only_a = build_dataset(ws, CONFIG, tokenizer, ingests=[a])
    both = build_dataset(ws, CONFIG, tokenizer, ingests=[a, b])
    ws.catalog_path.unlink()
    os.utime(ws.dataset_dir(only_a.dataset_id) / "manifest.json", (2e9, 2e9))  # made "newest"
    assert query(ws, "SELECT DISTINCT dataset_id FROM pairs").item() == only_a.dataset_id
    assert query(ws, "SELECT count(*) FROM pairs_history").item() == only_a.rows_kept + both.rows_kept


def test_every_view_is_typed_on_an_empty_workspace(workspace):
    for view in VIEWS:
        assert query(workspace, f"SELECT * FROM {view}").width > 0, view
    assert {"dataset_id", "is_current", "pairs_dataset_id"} <= set(query(workspace, "FROM datasets").columns)
