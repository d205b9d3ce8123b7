"""A damaged catalog fails in one clear error naming the file, and `rebuild_catalog` recreates it from
the workspace files so that every view answers as before. The workspace is made by the real ingest and
build stages (tests/flows/test_sql_stages.py adds reference log-probs, training and `dpop lineage`)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from pipeline.build import build_dataset
from pipeline.catalog import Catalog, CatalogError
from pipeline.catalog_rebuild import rebuild_catalog
from pipeline.ingest import ingest_source
from pipeline.lineage import ancestry
from pipeline.sql import VIEWS, query
from pipeline.workspace import Workspace
from tests.pipeline._pairs import tiny_tokenizer

CONFIG = {"split": {"eval_fraction": 0.25}, "tokenize": {"max_length": 64, "max_prompt_length": 32}}


def views_snapshot(ws: Workspace) -> dict[str, list[tuple]]:
    """Every view's rows, sorted, without `created_at` (a rebuild dates a record by its file)."""
    snapshot = {}
    for view in VIEWS:
        frame = query(
            ws, f"SELECT * EXCLUDE (created_at) FROM {view}" if _dated(ws, view) else f"FROM {view}"
        )
        rows = [tuple(json.dumps(v, sort_keys=True, default=str) for v in row) for row in frame.iter_rows()]
        snapshot[view] = sorted(rows)
    return snapshot


def _dated(ws: Workspace, view: str) -> bool:
    return "created_at" in query(ws, f"DESCRIBE {view}")["column_name"].to_list()


def created_at(ws: Workspace) -> dict[str, object]:
    return dict(query(ws, "SELECT id, created_at FROM artifacts").iter_rows())


def _jsonl(path: Path, offset: int, count: int, extra: list[str] = ()) -> Path:
    rows = [
        json.dumps(
            {"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
        )
        for i in range(offset, offset + count)
    ]
    path.write_text("\n".join(rows + list(extra)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Workspace:
    """Two ingests (with rejections) and two dataset versions, by the real stages."""
    root = tmp_path_factory.mktemp("staged")
    ws = Workspace.open(root / "ws")
    tokenizer = tiny_tokenizer(root / "tok")
    [a] = ingest_source(_jsonl(root / "a.jsonl", 0, 12, extra=["{broken", json.dumps({"chosen": "x"})]), ws)
    build_dataset(ws, CONFIG, tokenizer, ingests=[a])
    [b] = ingest_source(_jsonl(root / "b.jsonl", 5, 10), ws)  # 5 pairs repeat a's: curate drops them
    build_dataset(ws, CONFIG, tokenizer, ingests=[a, b])
    return ws


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":  # (the last blocks may be free space: a quarter surely cuts used ones)
        path.write_bytes(data[: len(data) // 4])
    elif how == "header only":
        path.write_bytes(data[:100])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not duckdb":
        path.write_bytes(b"hello, not a database\n" * 500)
    elif how == "bad block":  # checksums fail in the first data block
        path.write_bytes(data[:12288] + b"\xab" * 4096 + data[16384:])


@pytest.mark.parametrize("how", ["truncated", "header only", "empty", "not duckdb", "bad block"])
def test_a_damaged_catalog_fails_in_one_line_naming_the_file(staged, tmp_path, how):
    ws = Workspace.open(tmp_path / "ws")
    ws.catalog_path.write_bytes(staged.catalog_path.read_bytes())
    _damage(ws.catalog_path, how)
    catalog = Catalog(ws)
    calls = {
        "get": lambda: catalog.get("x"),
        "find": lambda: catalog.find("dataset"),
        "record": lambda: catalog.record_artifact("x", "run"),
        "sql": lambda: query(ws, "SELECT count(*) FROM artifacts"),
        "lineage": lambda: ancestry(ws, "x"),
    }
    failed = set()
    for name, call in calls.items():
        started = time.perf_counter()
        try:
            call()  # DuckDB reads lazily: a lookup may not touch the damaged part, and then it answers
        except CatalogError as error:
            failed.add(name)
            message = str(error)
            assert str(ws.catalog_path) in message and "dpop catalog rebuild" in message, (name, message)
            assert "\n" not in message
        assert time.perf_counter() - started < 3, f"{name}: a damaged file is not retried like a lock"
    assert {"find", "sql", "lineage"} <= failed  # whatever reads the whole catalog


def test_rebuild_answers_every_view_as_before(staged, tmp_path):
    before, dates = views_snapshot(staged), created_at(staged)
    assert len(before["pairs_history"]) > len(before["pairs"]) > 0 and before["rejections"]
    _damage(staged.catalog_path, "truncated")
    damaged = staged.catalog_path.read_bytes()
    wal = staged.catalog_path.with_name("catalog.duckdb.wal")
    wal.write_bytes(b"a log that belongs to the old file")

    result = rebuild_catalog(staged)

    assert views_snapshot(staged) == before
    rebuilt = created_at(staged)
    assert rebuilt.keys() == dates.keys()
    # dated by the records (written just before the catalog rows), so the order of events holds
    assert all(abs(rebuilt[key] - dates[key]) < timedelta(seconds=30) for key in dates)
    assert result.moved_aside is not None and result.moved_aside.read_bytes() == damaged
    assert not wal.exists() and Path(f"{result.moved_aside}.wal").is_file()
    assert result.skipped == [] and result.records >= 4 and result.artifacts == len(dates)
    assert not list(staged.root.glob(".tmp-*"))


def test_an_unreadable_record_is_skipped_and_named(staged, tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    [ingested] = ingest_source(_jsonl(tmp_path / "c.jsonl", 0, 3), ws)
    broken = ws.sources_dir / "0123456789abcdef" / "ingest.json"
    broken.parent.mkdir()
    broken.write_text("{truncated")
    result = rebuild_catalog(ws)
    assert result.skipped == [
        f"{broken}: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    ]
    assert Catalog(ws).get(f"pairs-{ingested.ingest_id}").rows == 3
    assert result.moved_aside is not None  # the healthy old file is kept too


def test_rebuild_of_a_workspace_without_catalog(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    [ingested] = ingest_source(_jsonl(tmp_path / "d.jsonl", 0, 4), ws)
    ws.catalog_path.unlink()
    result = rebuild_catalog(ws)
    assert result.moved_aside is None
    sources = query(ws, "SELECT source_uri, rows FROM sources")
    assert sources.rows() == [(ingested.source_uri, 4)]
    assert pl.DataFrame(query(ws, "SELECT * FROM lineage")).height == 2
