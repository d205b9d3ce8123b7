"""The Prefect executor runs the same stages as the inline one, with the same ids and bytes: each stage a
task, a partitioned stage's parts on the flow's task runner (worker processes with Dask), and no Prefect
cache (the stage records are the only one)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.executors import PrefectExecutor, task_runner_for
from pipeline.identity import file_sha256
from pipeline.stage import INLINE, Artifact, Input, Stage, StageContext, StageOutput
from pipeline.workspace import Workspace


def square_part(value: int) -> dict:
    """A part of the partitioned stage: its result and the process that computed it."""
    return {"value": value * value, "pid": os.getpid()}


@dataclass(frozen=True)
class Squares(Stage):
    name = "squares"
    id_prefix = "sq"
    placement = "data"
    partitioned = True
    source: Path

    def inputs(self) -> list[Input]:
        return [Input(Artifact(file_sha256(self.source), "source_file", str(self.source)), "read_from")]

    def config(self) -> dict:
        return {}

    def folder(self, ws: Workspace) -> Path:
        return ws.root / "squares" / self.id

    def run(self, ctx: StageContext) -> StageOutput:
        numbers = [int(line) for line in self.source.read_text().split()]
        parts = ctx.map("square", square_part, numbers)
        (ctx.out / "squares.json").write_text(json.dumps([p["value"] for p in parts]))
        return StageOutput(
            outputs=[Artifact(f"squares-{self.id}", "numbers", ctx.path("squares.json"), rows=len(parts))],
            summary={"pids": sorted({p["pid"] for p in parts})},
        )


@dataclass(frozen=True)
class Total(Stage):
    name = "total"
    id_prefix = "tot"
    placement = "data"
    squares_id: str
    squares_path: str

    def inputs(self) -> list[Input]:
        return [Input(Artifact(self.squares_id, "numbers", self.squares_path), "summed_from")]

    def config(self) -> dict:
        return {}

    def folder(self, ws: Workspace) -> Path:
        return ws.root / "totals" / self.id

    def run(self, ctx: StageContext) -> StageOutput:
        values = json.loads((ctx.ws.root / self.squares_path).read_text())
        (ctx.out / "total.txt").write_text(str(sum(values)))
        return StageOutput(outputs=[Artifact(f"total-{self.id}", "number", ctx.path("total.txt"))])


def chain(ws: Workspace, source: Path, executor) -> tuple:
    squares = executor.run(ws, Squares(source))
    out = squares.output("numbers")
    total = executor.run(ws, Total(out.id, out.path))
    return squares, total


def _flow(task_runner):
    from prefect import flow

    @flow(name="executor-test")
    def run_chain(root: str, source: str) -> tuple:
        return chain(Workspace.open(root), Path(source), PrefectExecutor())

    return run_chain.with_options(task_runner=task_runner) if task_runner is not None else run_chain


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.txt"
    path.write_text("\n".join(str(n) for n in range(1, 9)))
    return path


def _bytes(ws: Workspace, record) -> dict[str, bytes]:
    folder = ws.root / record.folder
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "stage.json"}


def test_prefect_executor_matches_inline(prefect_server, source, tmp_path):
    inline_ws, prefect_ws = Workspace.open(tmp_path / "inline"), Workspace.open(tmp_path / "prefect")
    expected = chain(inline_ws, source, INLINE)
    got = _flow(None)(str(prefect_ws.root), str(source))
    assert [r.id for r in got] == [r.id for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert _bytes(prefect_ws, a) == _bytes(inline_ws, b)
    again = _flow(None)(str(prefect_ws.root), str(source))
    assert all(r.reused for r in again)


@pytest.mark.slow
def test_dask_parts_run_in_worker_processes(prefect_server, source, tmp_path, monkeypatch):
    from distributed import LocalCluster
    from prefect.settings import PREFECT_API_URL

    # Worker processes reach the test server through the environment, not a server of their own.
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    inline_ws, dask_ws = Workspace.open(tmp_path / "inline"), Workspace.open(tmp_path / "dask")
    expected = chain(inline_ws, source, INLINE)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        runner = task_runner_for("dask", cluster.scheduler_address)
        squares, total = _flow(runner)(str(dask_ws.root), str(source))
    assert os.getpid() not in squares.summary["pids"]
    assert [squares.id, total.id] == [r.id for r in expected]
    assert _bytes(dask_ws, total) == _bytes(inline_ws, expected[1])
