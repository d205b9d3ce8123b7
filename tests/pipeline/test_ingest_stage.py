"""`IngestStage`: its id is the source's content, URI and options (the same in two workspaces), a second
run reuses the folder without reading the file, and the catalog rows and OpenLineage events are made
from the one record."""

from __future__ import annotations

import json

import pytest

from pipeline.catalog import Catalog
from pipeline.identity import file_sha256
from pipeline.ingest import IngestOptions, IngestStage
from pipeline.ingest.readers import file_source
from pipeline.openlineage import reset_clients
from pipeline.stage import read_record, run_stage
from pipeline.workspace import Workspace
from tests.pipeline._ingest_util import write_jsonl

RECORDS = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(4)] + ["oops"]


@pytest.fixture(autouse=True)
def _events_in_the_workspace(monkeypatch):
    for name in ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG", "OPENLINEAGE_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENLINEAGE_CONFIG", "/nonexistent/openlineage.yml")
    reset_clients()
    yield
    reset_clients()


def test_the_id_is_content_uri_and_options(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    stage = IngestStage(path)
    assert stage.id.startswith("ing-") and stage.id == IngestStage(file_source(path)).id
    assert stage.folder(Workspace.open(tmp_path / "ws1")).name == stage.id
    assert IngestStage(path, "flat").id != stage.id  # the format asked for
    assert IngestStage(path, options=IngestOptions(max_field_chars=10)).id != stage.id
    assert IngestStage(path, options=IngestOptions(batch_rows=2)).id == stage.id  # memory, not output
    (tmp_path / "elsewhere").mkdir()
    copy = write_jsonl(tmp_path / "elsewhere" / "a.jsonl", RECORDS)
    assert IngestStage(copy).id != stage.id  # rows name their file: another ingest
    [source] = stage.inputs()
    assert (source.artifact.id, source.relation) == (file_sha256(path), "ingested_from")


def test_two_workspaces_one_id_and_a_second_run_reuses(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    first = run_stage(Workspace.open(tmp_path / "ws1"), IngestStage(path, source_name="demo"))
    second = run_stage(Workspace.open(tmp_path / "ws2"), IngestStage(path, source_name="demo"))
    assert first.id == second.id and not second.reused
    assert first.counts == {"rows_read": 5, "rows_kept": 4, "rows_rejected": 1, "pairs_written": 4}
    assert first.rejected_by_reason == {"not_an_object": 1}
    assert first.summary == {"format": "flat", "source_uri": path.resolve().as_uri(), "source_name": "demo"}
    again = run_stage(Workspace.open(tmp_path / "ws1"), IngestStage(path, source_name="demo"))
    assert again.reused and again.to_json() == first.to_json()


def test_catalog_and_events_come_from_the_record(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    record = run_stage(ws, IngestStage(write_jsonl(tmp_path / "a.jsonl", RECORDS)))
    assert read_record(ws.sources_dir / record.id).to_json() == record.to_json()
    catalog = Catalog(ws)
    for output in record.outputs:
        row = catalog.get(output.id)
        assert (row.kind, row.rows, row.meta["stage_id"]) == (output.kind, output.rows, record.id)
        assert catalog.parents(output.id) == [(record.inputs[0].artifact.id, "ingested_from")]
    events = [json.loads(line) for line in ws.lineage_events_path.read_text().splitlines()]
    assert [(e["job"]["name"], e["eventType"]) for e in events] == [
        ("ingest", "START"),
        ("ingest", "COMPLETE"),
    ]
    rows = {o["name"]: o["outputFacets"]["outputStatistics"]["rowCount"] for o in events[1]["outputs"]}
    assert rows == {str(o.location(ws)): o.rows for o in record.outputs}
