"""SQL views, the read-only guard and catalog lineage over a small hand-built workspace.

The workspace is written with the foundation writers (contracts, shards, catalog) exactly as the
stages lay it out (docs/interfaces.md), so these tests need none of the stage implementations; the
end-to-end test runs the same views over a workspace the real stages made."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.catalog import Catalog
from pipeline.contracts import load_contract
from pipeline.identity import pair_id
from pipeline.lineage import LineageError, ancestry, source_files, training_rows
from pipeline.shards import write_manifest, write_split
from pipeline.sql import VIEWS, ReadOnlyError, check_read_only, query

SHA = "a" * 64


def _pairs(n: int, split: bool) -> pa.Table:
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"question {i}"}]
        row = {
            "pair_id": pair_id(prompt, f"good {i}", f"bad {i}"),
            "prompt": prompt,
            "chosen": f"good {i}",
            "rejected": f"bad {i}",
            "chosen_score": None,
            "rejected_score": None,
            "source": "toy:jsonl",
            "source_uri": "file:///data/toy.jsonl",
            "source_row": i + 1,  # row 0 was rejected at ingest
            "source_sha256": SHA,
        }
        if split:
            row |= {"edit_distance": 3, "edit_ratio": 0.5, "split": "eval" if i == 0 else "train"}
        rows.append(row)
    contract = load_contract("preference_pair")
    return contract.conform(pa.Table.from_pylist(rows, schema=contract.schema(list(rows[0]))))


def _rejections(stage: str, reason: str, rows: list[int]) -> pa.Table:
    contract = load_contract("rejection")
    records = [
        {
            "source_uri": "file:///data/toy.jsonl",
            "source_row": r,
            "source_sha256": SHA,
            "stage": stage,
            "reason": reason,
            "detail": "x",
            "pair_id": None,
            "raw": None,
        }
        for r in rows
    ]
    return contract.conform(pa.Table.from_pylist(records, schema=contract.schema(list(records[0]))))


@pytest.fixture
def toy(workspace):
    """source file (5 rows) -> ingest (1 rejected) -> dataset (1 curated away: 3 kept) -> run -> model."""
    ws = workspace
    ingest_id = "ing0001"
    source_dir = ws.sources_dir / ingest_id
    source_dir.mkdir(parents=True)
    ingested = _pairs(4, split=False)
    pq.write_table(ingested, source_dir / "pairs.parquet")
    pq.write_table(_rejections("ingest", "malformed_json", [0]), source_dir / "rejections.parquet")
    (source_dir / "ingest.json").write_text(
        json.dumps(
            {
                "ingest_id": ingest_id,
                "source_uri": "file:///data/toy.jsonl",
                "source_sha256": SHA,
                "source_name": "toy",
                "format": "jsonl",
                "rows_read": 5,
                "rows_kept": 4,
                "rows_rejected": 1,
                "rejected_by_reason": {"malformed_json": 1},
            }
        )
    )
    dataset_id = "ds0001"
    out = ws.dataset_dir(dataset_id)
    out.mkdir(parents=True)
    kept = _pairs(3, split=True)
    pq.write_table(kept, out / "pairs.parquet")
    pq.write_table(_rejections("curate", "duplicate_pair", [4]), out / "rejections.parquet")
    shard_rows = [
        {
            "pair_id": pid,
            "prompt_ids": [1, 2],
            "chosen_ids": [3, 4],
            "rejected_ids": [3, 5],
            "ref_chosen_logps": None,
            "ref_rejected_logps": None,
            "common_prefix_len": 1,
            "edit_ratio": 0.5,
        }
        for pid in kept.column("pair_id").to_pylist()
    ]
    schema = load_contract("dpop_shard").schema()
    splits = {}
    for split, rows in (("train", shard_rows[1:]), ("eval", shard_rows[:1])):
        infos = write_split(out, split, pa.Table.from_pylist(rows, schema=schema))
        splits[split] = {"rows": len(rows), "shards": [i.as_dict() for i in infos]}
    write_manifest(
        out,
        {
            "dataset_id": dataset_id,
            "parents": [{"id": f"pairs-{ingest_id}", "kind": "pairs", "relation": "curated_from"}],
            "splits": splits,
            "max_length": 64,
            "reference_model": None,
        },
    )
    run_id = "run0001"
    run_dir = ws.run_dir(run_id)
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "epoch": 0.5, "split": "train", "loss": 0.69, "rewards/margins": 0.01})
        + "\n"
        + json.dumps({"step": 2, "epoch": 1.0, "split": "eval", "loss": 0.6})
        + "\n"
    )
    catalog = Catalog(ws)
    catalog.record_artifact(
        SHA, "source_file", "file:///data/toy.jsonl", 5, {"format": "jsonl", "name": "toy"}
    )
    catalog.record_artifact(f"pairs-{ingest_id}", "pairs", str(source_dir), 4, parents={SHA: "ingested_from"})
    catalog.record_artifact(f"rejections-{ingest_id}", "rejections", None, 1, parents={SHA: "ingested_from"})
    catalog.record_artifact(
        dataset_id, "dataset", str(out), 3, parents={f"pairs-{ingest_id}": "curated_from"}
    )
    catalog.record_artifact("model-base", "model", "/models/base", None)
    catalog.record_artifact(
        run_id, "run", str(run_dir), None, parents={dataset_id: "trained_on", "model-base": "base_model"}
    )
    catalog.record_artifact(
        f"model-{run_id}", "model", str(run_dir / "model"), None, parents={run_id: "produced"}
    )
    return ws


def test_views_on_empty_workspace_have_columns(workspace):
    for view in VIEWS:
        frame = query(workspace, f"SELECT * FROM {view}")
        assert frame.height == 0 and frame.width > 0, view
    assert "dataset_id" in query(workspace, "SELECT * FROM pairs").columns
    assert {"dataset_id", "split", "prompt_ids"} <= set(query(workspace, "SELECT * FROM shards").columns)


def test_views_answer_counts(toy):
    assert query(toy, "SELECT count(*) AS n FROM pairs").item() == 3
    assert query(toy, "SELECT count(*) AS n FROM ingested_pairs WHERE ingest_id = 'ing0001'").item() == 4
    by_stage = dict(query(toy, "SELECT stage, count(*) FROM rejections GROUP BY stage").iter_rows())
    assert by_stage == {"ingest": 1, "curate": 1}
    assert query(toy, "SELECT dataset_id FROM rejections WHERE stage = 'curate'").item() == "ds0001"
    assert query(toy, "SELECT rows_read FROM ingests").item() == 5
    assert query(toy, "SELECT train_rows, eval_rows FROM datasets").row(0) == (2, 1)
    assert dict(query(toy, "SELECT split, count(*) FROM shards GROUP BY split").iter_rows()) == {
        "train": 2,
        "eval": 1,
    }
    assert query(toy, "SELECT dataset_id, base_model_id, model_id FROM runs").row(0) == (
        "ds0001",
        "model-base",
        "model-run0001",
    )
    assert query(toy, "SELECT run_id FROM models WHERE model_id = 'model-run0001'").item() == "run0001"
    assert query(toy, "SELECT value FROM metrics WHERE metric = 'rewards/margins'").item() == pytest.approx(
        0.01
    )
    assert query(toy, "SELECT count(*) FROM metrics").item() == 3
    assert query(toy, "SELECT parent_kind FROM lineage WHERE child_id = 'ds0001'").item() == "pairs"
    assert query(toy, "SELECT source_name FROM sources").item() == "toy"


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO pairs SELECT * FROM pairs",
        "UPDATE pairs SET chosen = 'x'",
        "DELETE FROM pairs",
        "DROP VIEW pairs",
        "ALTER VIEW pairs RENAME TO p",
        "ATTACH '/tmp/other.duckdb' AS other",
        "DETACH memory",
        "COPY (SELECT 1) TO '/tmp/out.csv'",
        "EXPORT DATABASE '/tmp/export'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET threads = 1",
        "RESET threads",
        "PRAGMA version",
        "CALL pragma_version()",
        "CHECKPOINT",
        "BEGIN TRANSACTION",
        "SELECT 1; DROP VIEW pairs",
    ],
)
def test_read_only_guard_refuses(workspace, sql):
    with pytest.raises(ReadOnlyError, match="refused|one statement"):
        query(workspace, sql)


def test_file_access_blocked_even_inside_select(toy):
    with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
        query(toy, "SELECT * FROM read_csv('/etc/hostname')")


def test_bad_sql_gives_duckdb_error(toy):
    with pytest.raises(duckdb.ParserException, match="syntax error"):
        check_read_only("SELEC 1")
    with pytest.raises(duckdb.CatalogException, match="nope"):
        query(toy, "SELECT * FROM nope")


def test_ancestry_reaches_source_with_rejections(toy):
    tree = ancestry(toy, "model-run0001")
    assert tree["kind"] == "model"
    run = tree["parents"][0]
    assert (run["kind"], run["relation"]) == ("run", "produced")
    dataset = next(p for p in run["parents"] if p["kind"] == "dataset")
    assert dataset["rejections"] == {"curate": {"duplicate_pair": 1}}
    assert (dataset["train_rows"], dataset["eval_rows"]) == (2, 1)
    pairs = dataset["parents"][0]
    assert pairs["rejections"] == {"ingest": {"malformed_json": 1}}
    assert pairs["rows_read"] == 5
    [source] = source_files(tree)
    assert (source["id"], source["uri"], source["rows"]) == (SHA, "file:///data/toy.jsonl", 5)
    assert ancestry(toy, "run0001")["id"] == "run0001"  # prefix and run ids work too


def test_unknown_id_is_a_clear_error(toy):
    with pytest.raises(LineageError, match="no artefact"):
        ancestry(toy, "zzz")


def test_training_rows_reach_source_rows(toy):
    rows = training_rows(toy, "model-run0001")
    assert rows.height == 3
    assert set(rows["source_row"].to_list()) == {1, 2, 3}
    assert set(rows["source_uri"].to_list()) == {"file:///data/toy.jsonl"}
