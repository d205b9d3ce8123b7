"""`data_to_model_flow`: the chain of `flows/chain.py` as one Prefect flow (what `dpop run` runs by
default and `dpop serve` deploys): it holds the workspace lock, emits the flow's OpenLineage events
(the parent of every stage's), runs `data_to_model` through `PrefectExecutor` (each stage a task, data
stages and the build's parts on the task runner: Dask with `task_runner="dask"`), publishes the
Prefect artifacts and returns the chain's JSON summary."""

from __future__ import annotations

import contextlib
from typing import Any

import prefect.runtime.flow_run
from prefect import flow

from flows.artifacts import publish
from flows.chain import ChainSpec, run_chain, summary
from flows.executors import PrefectExecutor, task_runner_for
from pipeline.workspace import Workspace

FLOW_NAME = "data-to-model"


@flow(name=FLOW_NAME, log_prints=True)
def data_to_model_flow(
    workspace: str,
    spec: dict[str, Any],
    task_runner: str = "default",
    dask_address: str | None = None,
    lock_timeout: float = 0,
) -> dict[str, Any]:
    """Run the chain of `spec` (`ChainSpec.to_json()`) on `workspace`; returns its summary, status
    "trained" or "up to date". `lock_timeout`: seconds to wait for another run on the workspace."""
    ws, chain = Workspace.open(workspace), ChainSpec.from_json(spec)
    run = (str(prefect.runtime.flow_run.id), FLOW_NAME)
    runner = task_runner_for(task_runner, dask_address)
    with runner or contextlib.nullcontext():
        result = run_chain(ws, chain, PrefectExecutor(run, runner), run, lock_timeout)
    out = {**summary(result), "flow_run_id": run[0]}
    publish(result, out)
    print(f"{FLOW_NAME}: {out['status']}: run {out['run_id']}, model {out['model_dir']}")
    return out
