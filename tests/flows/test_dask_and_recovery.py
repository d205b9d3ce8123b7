"""Scale-out and recovery: with the Dask task runner (worker processes) the ingests and the build's parts
run on the workers and give byte-identical outputs to the inline engine; a transient I/O error is
retried; a training run that lost its final model resumes from its last checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows.chain import TRAINED, data_to_model, summary
from pipeline.shards import load_manifest
from pipeline.stage import INLINE
from pipeline.workspace import Workspace
from tests.flows.real_slice import TRAINING, chain_spec, hh_slice, pandalm_slice, run_flow, tiny_base_model

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


@pytest.fixture
def small_data(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    hh = hh_slice(shared_data, data, 30)
    pandalm = pandalm_slice(shared_data, data, 30)
    base = tiny_base_model(Workspace.open(tmp_path / "base-ws"), [hh, pandalm])
    return data, base


def _run(ws: Workspace, data: Path, base: Path, warm_start: bool = False, **options) -> dict:
    return run_flow(ws, chain_spec(data, base, warm_start=warm_start), **options)


def _shards(ws: Workspace, dataset_id: str) -> dict[str, list[str]]:
    splits = load_manifest(ws, dataset_id)["splits"]
    return {split: [s["sha256"] for s in info["shards"]] for split, info in splits.items()}


def test_dask_runner_matches_inline_engine(prefect_server, small_data, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster, get_task_stream
    from prefect.settings import PREFECT_API_URL

    # Worker processes reach the test server through the environment (as under `dpop run`).
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    data, base = small_data
    inline_ws, dask_ws = Workspace.open(tmp_path / "inline"), Workspace.open(tmp_path / "dask")
    expected = summary(data_to_model(inline_ws, chain_spec(data, base), INLINE))
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
        get_task_stream(client) as stream,
    ):
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
        "run_id",
    ):
        assert got[key] == expected[key], key
    assert _shards(dask_ws, got["dataset_id"]) == _shards(inline_ws, expected["dataset_id"])
    for name in ("pairs.parquet", "rejections.parquet"):
        folder = expected["tokenized_dataset_id"]
        assert (dask_ws.dataset_dir(folder) / name).read_bytes() == (
            inline_ws.dataset_dir(folder) / name
        ).read_bytes()
    # the 2 ingests and the build's 2 x 2 parts (score, shard; one partition per file) ran in the workers
    ran = [task["key"].split("-")[0] for task in stream.data]
    assert ran.count("_run_stage_in_task") == 2 and ran.count("_call") == 4, ran
    jobs = [json.loads(line)["job"]["name"] for line in dask_ws.lineage_events_path.read_text().splitlines()]
    assert jobs.count("ingest") == 2 * 2  # the ingests emitted their events from the workers


def test_transient_error_is_retried_and_killed_training_resumes(
    prefect_server, small_data, tmp_path, monkeypatch
):
    from pipeline.ingest.stage import IngestStage

    data, base = small_data
    ws = Workspace.open(tmp_path / "ws")
    real_run = IngestStage.run
    calls: list[str] = []

    def flaky_run(stage, ctx):
        calls.append(stage.label())
        if len(calls) == 1:
            raise OSError("NFS server not responding")  # transient: the task is retried
        return real_run(stage, ctx)

    monkeypatch.setattr(IngestStage, "run", flaky_run)
    first = _run(ws, data, base)
    assert first["status"] == TRAINED and first["files"] == 2
    assert len(calls) == 3 and calls[0] in calls[1:]

    # A run killed after its first checkpoint: the final model and the records never got written.
    run_dir = Path(first["run_dir"])
    shutil.rmtree(run_dir / "model")
    (run_dir / "run.json").unlink()
    (run_dir / "stage.json").unlink()
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
