"""A failing run: the stage and the flow around it emit FAIL (with the error), and the lock is released."""

from __future__ import annotations

import pytest

from flows.chain import ChainSpec
from tests.flows.openlineage_check import check_events, read_events
from tests.flows.real_slice import run_flow


def test_failed_ingest_emits_fail_events_and_releases_the_lock(prefect_server, workspace, tmp_path):
    from pipeline.ingest import NotPreferenceData

    notes = tmp_path / "notes.jsonl"  # named explicitly: not preference data is an error, not a skip
    notes.write_text('{"question": "2+2?", "answer": "4"}\n', encoding="utf-8")
    base = tmp_path / "base"
    base.mkdir()
    for _ in range(2):  # the second attempt is not refused as "busy": the failed run released the lock
        with pytest.raises(NotPreferenceData):
            run_flow(workspace, ChainSpec(sources=(str(notes),), base_model=str(base)))
    runs = check_events(read_events(workspace.lineage_events_path))
    outcomes = sorted((events[0]["job"]["name"], events[-1]["eventType"]) for events in runs.values())
    assert outcomes == sorted([("data-to-model", "FAIL"), ("ingest", "FAIL")] * 2)
    task_fail = next(e[-1] for e in runs.values() if e[0]["job"]["name"] == "ingest")
    assert task_fail["run"]["facets"]["parent"]["job"]["name"] == "data-to-model"
    assert "NotPreferenceData" in task_fail["run"]["facets"]["errorMessage"]["message"]
    assert task_fail["inputs"][0]["name"] == str(notes.resolve())
