"""Where OpenLineage events go: the workspace JSONL by default, the standard configuration when set."""

from __future__ import annotations

import uuid

import pytest

from pipeline.openlineage import DatasetRef, emit, file_ref, reset_clients
from tests.flows.openlineage_check import check_events, read_events


@pytest.fixture
def clean_openlineage_env(monkeypatch, tmp_path):
    import os

    for name in list(os.environ):
        if name.startswith("OPENLINEAGE"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    reset_clients()
    yield monkeypatch
    reset_clients()


def _emit_run(ws, inputs, outputs):
    run_id, parent = str(uuid.uuid4()), (str(uuid.uuid4()), "data-to-model")
    emit(ws, "START", run_id, "build.build-dataset", "TASK", parent, inputs)
    emit(ws, "COMPLETE", run_id, "build.build-dataset", "TASK", parent, inputs, outputs)
    return run_id


def test_default_goes_to_workspace_jsonl(clean_openlineage_env, workspace):
    pairs = workspace.root / "pairs.parquet"
    pairs.write_bytes(b"x" * 10)
    run_id = _emit_run(
        workspace, [file_ref(pairs, 7, "preference_pair")], [DatasetRef("/ws/datasets/ds-1", 5, "dpop_shard")]
    )
    runs = check_events(read_events(workspace.lineage_events_path))
    start, complete = runs[run_id]
    assert start["inputs"][0]["inputFacets"]["dataQualityMetrics"]["rowCount"] == 7
    assert start["inputs"][0]["inputFacets"]["dataQualityMetrics"]["bytes"] == 10
    fields = [f["name"] for f in start["inputs"][0]["facets"]["schema"]["fields"]]
    assert fields[:4] == ["pair_id", "prompt", "chosen", "rejected"]
    assert complete["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 5
    assert complete["run"]["facets"]["parent"]["job"]["name"] == "data-to-model"


def test_failure_event_carries_the_error(clean_openlineage_env, workspace):
    run_id = str(uuid.uuid4())
    emit(workspace, "START", run_id, "train", "FLOW")
    emit(workspace, "FAIL", run_id, "train", "FLOW", error=OSError("disk full"))
    [start, fail] = check_events(read_events(workspace.lineage_events_path))[run_id]
    assert fail["eventType"] == "FAIL"
    assert fail["run"]["facets"]["errorMessage"]["message"] == "OSError: disk full"


def test_standard_environment_configuration_wins(clean_openlineage_env, workspace, tmp_path):
    target = tmp_path / "elsewhere.jsonl"
    clean_openlineage_env.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    clean_openlineage_env.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(target))
    clean_openlineage_env.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    _emit_run(workspace, [], [])
    assert len(read_events(target)) == 2
    assert not workspace.lineage_events_path.exists()


def test_openlineage_yml_in_working_directory_wins(clean_openlineage_env, workspace, tmp_path):
    target = tmp_path / "from-yaml.jsonl"
    (tmp_path / "openlineage.yml").write_text(
        f"transport:\n  type: file\n  log_file_path: {target}\n  append: true\n", encoding="utf-8"
    )
    _emit_run(workspace, [], [])
    assert len(read_events(target)) == 2
    assert not workspace.lineage_events_path.exists()


def test_disabled_sends_nothing(clean_openlineage_env, workspace):
    clean_openlineage_env.setenv("OPENLINEAGE_DISABLED", "true")
    _emit_run(workspace, [], [])
    assert not workspace.lineage_events_path.exists()
