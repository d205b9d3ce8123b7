"""The stage contract and runner (pipeline/stage.py) on a small real stage: identity, reuse, atomic
output, one record feeding both the catalog and the OpenLineage events."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.catalog import Catalog
from pipeline.identity import file_sha256
from pipeline.openlineage import reset_clients
from pipeline.stage import (
    Artifact,
    Input,
    NeedsWork,
    Stage,
    StageContext,
    StageOutput,
    iter_records,
    read_record,
    run_stage,
)
from pipeline.workspace import Workspace


@dataclass(frozen=True)
class UpperCase(Stage):
    """Upper-cases a text file; fails on request (to test atomicity)."""

    name = "upper"
    id_prefix = "up"
    source: Path
    repeat: int = 1
    fail: bool = False

    def inputs(self) -> list[Input]:
        sha = file_sha256(self.source)
        return [Input(Artifact(sha, "source_file", str(self.source)), "read_from")]

    def config(self) -> dict:
        return {"repeat": self.repeat}

    def folder(self, ws: Workspace) -> Path:
        return ws.root / "upper" / self.id

    def run(self, ctx: StageContext) -> StageOutput:
        text = self.source.read_text().upper() * self.repeat
        (ctx.out / "out.txt").write_text(text)
        if self.fail:
            raise RuntimeError("boom")
        lines = ctx.map("lines", len, text.splitlines())
        return StageOutput(
            outputs=[Artifact(f"text-{self.id}", "text", ctx.path("out.txt"), rows=len(lines))],
            counts={"rows_in": len(lines), "rows_out": len(lines)},
            summary={"chars": sum(lines)},
        )


@pytest.fixture(autouse=True)
def _isolated_lineage(monkeypatch):
    for name in ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG", "OPENLINEAGE_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENLINEAGE_CONFIG", "/nonexistent/openlineage.yml")
    reset_clients()
    yield
    reset_clients()


def _source(tmp_path: Path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("ab\ncde\n")
    return path


def test_identity_depends_on_inputs_and_config_not_on_workspace(tmp_path):
    source = _source(tmp_path)
    first = run_stage(Workspace.open(tmp_path / "ws1"), UpperCase(source))
    second = run_stage(Workspace.open(tmp_path / "ws2"), UpperCase(source))
    assert first.id == second.id
    assert UpperCase(source, repeat=2).id != first.id
    source.write_text("other\n")
    assert UpperCase(source).id != first.id


def test_second_run_reuses_and_record_is_complete(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    stage = UpperCase(_source(tmp_path))
    record = run_stage(ws, stage)
    assert not record.reused
    assert record.counts == {"rows_in": 2, "rows_out": 2}
    assert record.summary == {"chars": 5}
    out = ws.root / record.output("text").path
    assert out.read_text() == "AB\nCDE\n"
    mtime = out.stat().st_mtime_ns
    again = run_stage(ws, stage)
    assert again.reused and again.id == record.id
    assert out.stat().st_mtime_ns == mtime
    assert read_record(stage.folder(ws)).to_json() == record.to_json()
    assert [r.id for r in iter_records(ws)] == [record.id]


def test_reuse_only_probe_raises_needs_work(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    stage = UpperCase(_source(tmp_path))
    with pytest.raises(NeedsWork):
        run_stage(ws, stage, reuse_only=True)
    run_stage(ws, stage)
    assert run_stage(ws, stage, reuse_only=True).reused


def test_failed_stage_leaves_no_folder_and_a_fail_event(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    stage = UpperCase(_source(tmp_path), fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        run_stage(ws, stage)
    assert not stage.folder(ws).exists()
    assert not list((ws.root / "upper").glob(".tmp-*"))
    events = [json.loads(line) for line in ws.lineage_events_path.read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "FAIL"]


def test_catalog_and_openlineage_come_from_the_one_record(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    source = _source(tmp_path)
    record = run_stage(ws, UpperCase(source))
    catalog = Catalog(ws)
    output = catalog.get(f"text-{record.id}")
    assert output.rows == 2 and output.meta["stage_id"] == record.id
    assert catalog.parents(output.id) == [(file_sha256(source), "read_from")]
    assert catalog.get(file_sha256(source)).kind == "source_file"
    events = [json.loads(line) for line in ws.lineage_events_path.read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    complete = events[1]
    assert complete["job"]["name"] == "upper"
    assert complete["outputs"][0]["name"] == str(ws.root / record.output("text").path)
    assert complete["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 2


def test_deleted_output_is_recomputed(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    stage = UpperCase(_source(tmp_path))
    record = run_stage(ws, stage)
    (ws.root / record.output("text").path).unlink()
    assert not run_stage(ws, stage).reused
