"""Scale-out and recovery: the Dask task runner gives the same outputs as the default one; a transient
I/O error is retried; a training run that lost its final model resumes from its last checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows.data_to_model import TRAINED, data_to_model_flow
from pipeline.shards import load_manifest
from pipeline.workspace import Workspace
from tests.flows.real_slice import CURATION, TRAINING, hh_slice, pandalm_slice, tiny_base_model

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


@pytest.fixture
def small_data(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    hh = hh_slice(shared_data, data, 30)
    pandalm = pandalm_slice(shared_data, data, 30)
    base = tiny_base_model(Workspace.open(tmp_path / "base-ws"), [hh, pandalm])
    return data, base


def _run(ws: Workspace, data: Path, base: Path, **options) -> dict:
    return data_to_model_flow(
        workspace=str(ws.root),
        sources=[str(data)],
        curate_config=CURATION,
        base_model=str(base),
        train_config=TRAINING,
        **options,
    )


def _shards(ws: Workspace, dataset_id: str) -> dict[str, list[str]]:
    splits = load_manifest(ws, dataset_id)["splits"]
    return {split: [s["sha256"] for s in info["shards"]] for split, info in splits.items()}


def test_dask_runner_matches_default_runner(prefect_server, small_data, tmp_path):
    from distributed import LocalCluster

    data, base = small_data
    default_ws, dask_ws = Workspace.open(tmp_path / "default"), Workspace.open(tmp_path / "dask")
    expected = _run(default_ws, data, base)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        got = _run(dask_ws, data, base, task_runner="dask", dask_address=cluster.scheduler_address)
    assert got["status"] == expected["status"] == TRAINED
    for key in (
        "ingest_ids",
        "rows_read",
        "pairs_kept",
        "train_rows",
        "eval_rows",
        "tokenized_dataset_id",
        "dataset_id",
    ):
        assert got[key] == expected[key], key
    assert _shards(dask_ws, got["dataset_id"]) == _shards(default_ws, expected["dataset_id"])
    for ws in (default_ws, dask_ws):  # the ingest tasks ran (on the workers) and emitted their events
        jobs = [json.loads(line)["job"]["name"] for line in ws.lineage_events_path.read_text().splitlines()]
        assert jobs.count("ingest.ingest-file") == 2 * 2


def test_transient_error_is_retried_and_killed_training_resumes(
    prefect_server, small_data, tmp_path, monkeypatch
):
    import pipeline.ingest

    data, base = small_data
    ws = Workspace.open(tmp_path / "ws")
    real_ingest = pipeline.ingest.ingest_source
    calls: list[str] = []

    def flaky_ingest(source, *args, **kwargs):
        calls.append(str(source))
        if len(calls) == 1:
            raise OSError("NFS server not responding")  # transient: the task is retried
        return real_ingest(source, *args, **kwargs)

    monkeypatch.setattr(pipeline.ingest, "ingest_source", flaky_ingest)
    first = _run(ws, data, base)
    assert first["status"] == TRAINED and first["files"] == 2
    assert len(calls) == 3 and calls[0] in calls[1:]

    # A run killed after its first checkpoint: the final model and run record never got written.
    run_dir = Path(first["run_dir"])
    shutil.rmtree(run_dir / "model")
    (run_dir / "run.json").unlink()
    last = max(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    shutil.rmtree(last)
    resumed = _run(ws, data, base)
    assert resumed["status"] == TRAINED and resumed["run_id"] == first["run_id"]
    assert resumed["resumed"] is True
    assert (run_dir / "model").is_dir() and (run_dir / "run.json").is_file()
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == TRAINING["max_steps"]


def test_warm_start_trains_new_data_from_the_last_model(prefect_server, small_data, shared_data, tmp_path):
    from pipeline.catalog import Catalog
    from tests.flows.real_slice import llamafactory_slice

    data, base = small_data
    ws = Workspace.open(tmp_path / "ws")
    first = _run(ws, data, base, warm_start=True)  # nothing to continue from yet: starts from the base
    assert first["status"] == TRAINED
    llamafactory_slice(shared_data, data, 20)
    second = _run(ws, data, base, warm_start=True)
    assert second["status"] == TRAINED and second["run_id"] != first["run_id"]
    parents = dict((relation, parent) for parent, relation in Catalog(ws).parents(second["run_id"]))
    first_model = Catalog(ws).get(parents["base_model"])
    assert first_model.uri == first["model_dir"]  # trained on from the first run's model
    third = _run(ws, data, base, warm_start=True)
    assert third["status"] == "up to date" and third["run_id"] == second["run_id"]
