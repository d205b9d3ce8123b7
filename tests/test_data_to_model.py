"""End to end (issue 5's "done when"): data_to_model_flow on real data, refreshed.

Run 1 trains; run 2 with nothing changed recomputes nothing and does not retrain; a file added to the
source folder is the only one ingested, makes a new dataset version and a retrain; `dpop lineage` on
the new model reaches the added file and its rows; the SQL views give the counts the stages reported;
every OpenLineage event validates and every run has START then COMPLETE (a stage emits events when it
runs; a reused one is found done and emits none)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from flows.chain import TRAINED, UP_TO_DATE
from pipeline.lineage import training_rows
from pipeline.sql import query
from pipeline.workspace import Workspace
from tests.flows.openlineage_check import check_events, read_events
from tests.flows.real_slice import (
    TRAINING,
    chain_spec,
    hh_slice,
    llamafactory_slice,
    pandalm_slice,
    run_flow,
    tiny_base_model,
)

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


def _snapshot(ws: Workspace) -> dict[str, int]:
    """mtime of every file the stages write: unchanged means nothing was recomputed or rewritten."""
    files = {}
    for folder in (ws.sources_dir, ws.datasets_dir, ws.runs_dir, ws.models_dir):
        for path in folder.rglob("*"):
            if path.is_file() and "latest" not in path.parts:  # ingest's "latest" pointers are refreshed
                files[str(path)] = path.stat().st_mtime_ns
    return files


def _check_counts(ws: Workspace, summary: dict) -> None:
    """The SQL views answer the counts the flow reported."""
    ids = ", ".join(f"'{i}'" for i in summary["ingest_ids"])
    rows_read, rows_rejected = query(
        ws, f"SELECT sum(rows_read), sum(rows_rejected) FROM ingests WHERE ingest_id IN ({ids})"
    ).row(0)
    assert (rows_read, rows_rejected) == (summary["rows_read"], summary["rows_rejected_ingest"])
    ingest_rejections = query(
        ws, f"SELECT count(*) FROM rejections WHERE stage = 'ingest' AND ingest_id IN ({ids})"
    ).item()
    assert ingest_rejections == summary["rows_rejected_ingest"]
    assert (
        query(ws, f"SELECT count(*) FROM ingested_pairs WHERE ingest_id IN ({ids})").item()
        == summary["pairs_written"]
    )
    tokenized = summary["tokenized_dataset_id"]
    assert (
        query(ws, f"SELECT count(*) FROM pairs WHERE dataset_id = '{tokenized}'").item()
        == summary["pairs_kept"]
    )
    dropped = query(ws, f"SELECT count(*) FROM rejections WHERE dataset_id = '{tokenized}'").item()
    assert dropped == summary["pairs_in"] - summary["pairs_kept"]
    splits = dict(
        query(
            ws,
            f"SELECT split, count(*) FROM shards WHERE dataset_id = '{summary['dataset_id']}' GROUP BY split",
        ).iter_rows()
    )
    assert splits.get("train", 0) == summary["train_rows"] and splits.get("eval", 0) == summary["eval_rows"]
    run = query(ws, f"SELECT dataset_id, model_id FROM runs WHERE run_id = '{summary['run_id']}'")
    assert run.row(0) == (summary["dataset_id"], summary["model_id"])
    steps = query(
        ws, f"SELECT max(step) FROM metrics WHERE run_id = '{summary['run_id']}' AND split = 'train'"
    ).item()
    assert steps == TRAINING["max_steps"]


def test_refresh_retrains_only_on_new_data(prefect_server, shared_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    hh = hh_slice(shared_data, data, 60)
    pandalm = pandalm_slice(shared_data, data, 60)
    ws = Workspace.open(tmp_path / "ws")
    base = tiny_base_model(ws, [hh, pandalm])

    def run() -> dict:
        return run_flow(ws, chain_spec(data, base))

    first = run()
    assert first["status"] == TRAINED
    assert (first["files"], first["files_ingested"], first["files_cached"]) == (2, 2, 0)
    assert first["rows_read"] == 120 and first["train_rows"] > 0
    _check_counts(ws, first)

    before = _snapshot(ws)
    leftover = ws.datasets_dir / ".tmp-killed-build"  # what a run killed mid-write leaves behind
    leftover.mkdir()
    (leftover / "train-00000.arrow").write_bytes(b"half")
    second = run()
    assert second["status"] == UP_TO_DATE
    assert (second["files_ingested"], second["files_cached"]) == (0, 2)
    assert second["cached"] == {"build": True, "refs": True, "train": True}
    assert (second["dataset_id"], second["run_id"]) == (first["dataset_id"], first["run_id"])
    assert not leftover.exists()
    assert _snapshot(ws) == before  # nothing recomputed, nothing rewritten
    assert query(ws, "SELECT count(*) FROM runs").item() == 1

    # Without the workspace's cache folder (e.g. a fresh machine sharing the workspace) the stages still
    # find their finished outputs: nothing is rebuilt or retrained.
    shutil.rmtree(ws.cache_dir)
    without_cache = run()
    assert without_cache["status"] == UP_TO_DATE and without_cache["run_id"] == first["run_id"]
    assert without_cache["files_cached"] == 2
    assert _snapshot(ws) == before

    added = llamafactory_slice(shared_data, data, 40)
    third = run()
    assert third["status"] == TRAINED
    assert third["ingested_files"] == [added.resolve().as_uri()]
    assert (third["files_ingested"], third["files_cached"]) == (1, 2)
    assert third["dataset_id"] != first["dataset_id"] and third["run_id"] != first["run_id"]
    _check_counts(ws, third)
    assert query(ws, "SELECT count(*) FROM runs").item() == 2

    # dpop lineage on the new model reaches the added file; row level reaches its rows.
    result = CliRunner().invoke(app, ["lineage", third["model_id"], "-w", str(ws.root), "--format", "json"])
    assert result.exit_code == 0, result.output
    reached = json.loads(result.output)["source_files"]  # source files by path (their URI is in the meta)
    assert str(added.resolve()) in reached and len(reached) == 3
    rows = training_rows(ws, third["model_id"])
    assert rows.height == third["train_rows"] + third["eval_rows"]
    from_added = rows.filter(rows["source_uri"] == added.resolve().as_uri())
    kept_from_added = query(
        ws,
        f"SELECT count(*) FROM pairs WHERE dataset_id = '{third['tokenized_dataset_id']}' "
        f"AND source_uri = '{added.resolve().as_uri()}'",
    ).item()
    assert from_added.height == kept_from_added
    tree = CliRunner().invoke(app, ["lineage", third["model_id"], "-w", str(ws.root)])
    assert tree.exit_code == 0 and "llamafactory-en.json" in tree.output

    # OpenLineage: all events valid, START then COMPLETE per run, parents set for tasks and sub-flows.
    runs = check_events(read_events(ws.lineage_events_path))
    jobs = [events[0]["job"]["name"] for events in runs.values()]
    assert jobs.count("data-to-model") == 4
    assert jobs.count("ingest") == 2 + 0 + 0 + 1  # the refreshes ran (and so emitted) only the new file
    assert jobs.count("train") == 2
    for events in runs.values():
        if events[0]["job"]["name"] != "data-to-model":
            assert "parent" in events[0]["run"]["facets"]
    completes = [e for events in runs.values() for e in events if e["eventType"] == "COMPLETE"]
    train_outputs = [o for e in completes if e["job"]["name"] == "ingest" for o in e["outputs"]]
    assert all("outputStatistics" in o["outputFacets"] and "schema" in o["facets"] for o in train_outputs)

    # Prefect artifacts of the last run: the funnel table and the markdown summary, under stable keys.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[third["flow_run_id"]]))
        )
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) == {"dpop-funnel", "dpop-summary", "dpop-gate"}  # the new model met the gate
    gate = by_key["dpop-gate"].data
    gate = json.loads(gate) if isinstance(gate, str) else gate
    assert gate and {row["outcome"] for row in gate} <= {"promoted", "refused", "kept", "disabled"}
    funnel = (
        json.loads(by_key["dpop-funnel"].data)
        if isinstance(by_key["dpop-funnel"].data, str)
        else by_key["dpop-funnel"].data
    )
    ingest_rows = [row for row in funnel if row["stage"] == "ingest"]
    assert sum(row["rows_in"] for row in ingest_rows) == third["rows_read"]
    assert "Edit ratio" in by_key["dpop-summary"].data and third["run_id"] in by_key["dpop-summary"].data
