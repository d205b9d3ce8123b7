"""The Prefect executor: the chain's stages as Prefect tasks, their parts on a task runner.

Stages, their identities and their reuse live in `pipeline/stage.py`; this module only decides where
work runs, so the Prefect UI shows it: a stage already done returns its record (no task: nothing ran);
a stage runs as one task named after it, retried on transient I/O errors, data stages on the task
runner (Dask workers with `--task-runner dask`), model stages in this process; a partitioned stage (the
build) runs its body in the flow and its parts (`ctx.map`) as tasks on the task runner. Prefect's result
cache is off (`NO_CACHE`): the stage records are the only cache, a cleared Prefect database changes
nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline.stage import INLINE, Stage, StageRecord, completed, lineage_parent, notify, run_stage
from pipeline.workspace import Workspace

T = TypeVar("T")
R = TypeVar("R")

# Worth another try: a flaky network filesystem, a file briefly locked. A missing file or bad data: no.
_PERMANENT_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
RETRIES = 2


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except _PERMANENT_OS_ERRORS:
        return False
    except (OSError, TimeoutError, ConnectionError):
        return True
    except BaseException:
        return False
    return False


def _run_stage_in_task(
    root: str, stage: Stage, parent: tuple[str, str] | None, executor: Any = None
) -> StageRecord:
    """A stage task's body, wherever it runs: a Dask worker gets the workspace and the parent flow run
    explicitly (context variables do not travel)."""
    token = lineage_parent.set(parent)
    try:
        return run_stage(Workspace.open(root), stage, executor or INLINE)
    finally:
        lineage_parent.reset(token)


def _call(fn: Callable[[T], R], item: T) -> R:
    return fn(item)


def _task(name: str, fn: Callable[..., Any]) -> Any:
    return task(
        fn,
        name=name,
        cache_policy=NO_CACHE,
        persist_result=False,
        retries=RETRIES,
        retry_delay_seconds=[1, 5],
        retry_condition_fn=is_transient,
    )


class PrefectExecutor:
    """Runs a chain's stages inside the current Prefect flow run (see the module docstring).

    `parent`: (flow run id, flow name), the parent of the stages' OpenLineage events; `task_runner`: an
    entered task runner for data stages and parts (a deployment's flow cannot change its own, so the
    flow picks one per run), else the flow's."""

    def __init__(self, parent: tuple[str, str] | None = None, task_runner: Any = None):
        self.parent, self.task_runner = parent, task_runner

    def run(self, ws: Workspace, stage: Stage) -> StageRecord:
        done = completed(ws, stage)
        if done is not None:
            notify("reused", stage, done)
            return done
        if stage.partitioned:  # its body here, its parts on the task runner (`map`)
            return _run_stage_in_task(str(ws.root), stage, self.parent, self)
        if stage.placement == "data":
            return self._result(stage, self._submit_stage(ws, stage))
        return _task(stage.label(), _run_stage_in_task)(**self._arguments(ws, stage))

    def run_many(self, ws: Workspace, stages: Sequence[Stage]) -> list[StageRecord]:
        records: list[Any] = [completed(ws, stage) for stage in stages]
        for index, stage in enumerate(stages):  # data stages in parallel, then the others in order
            if records[index] is not None:
                notify("reused", stage, records[index])
            elif stage.placement == "data" and not stage.partitioned:
                records[index] = self._submit_stage(ws, stage)
        return [self._finish(ws, stage, record) for stage, record in zip(stages, records, strict=True)]

    def _finish(self, ws: Workspace, stage: Stage, record: Any) -> StageRecord:
        """A stage of `run_many`: found done, submitted (its future), or still to run here."""
        if isinstance(record, StageRecord):
            return record
        return self._result(stage, record) if record is not None else self.run(ws, stage)

    def map(self, label: str, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        from prefect.futures import wait

        futures = [self._submit(label, _call, fn=fn, item=item) for item in items]
        # Every part must have stopped before an error propagates: the runner then deletes the stage's
        # temporary folder, which a still-running part would otherwise keep writing into.
        wait(futures)
        return [future.result() for future in futures]

    def _submit_stage(self, ws: Workspace, stage: Stage) -> Any:
        """A data stage as a task on the task runner. On Dask it runs in another process, where the
        console's observer does not reach: the start and the end are reported from here."""
        if self.task_runner is not None:
            notify("start", stage)
        return self._submit(stage.label(), _run_stage_in_task, **self._arguments(ws, stage))

    def _result(self, stage: Stage, future: Any) -> StageRecord:
        try:
            record = future.result()
        except BaseException:
            if self.task_runner is not None:
                notify("failed", stage)
            raise
        if self.task_runner is not None:
            notify("reused" if record.reused else "done", stage, record)
        return record

    def _submit(self, name: str, body: Callable[..., Any], **parameters: Any) -> Any:
        if self.task_runner is None:
            return _task(name, body).submit(**parameters)
        return self.task_runner.submit(_task(name, body), parameters=parameters)

    def _arguments(self, ws: Workspace, stage: Stage) -> dict[str, Any]:
        return {"root": str(ws.root), "stage": stage, "parent": self.parent}


def task_runner_for(kind: str, dask_address: str | None) -> Any:
    """The flow's task runner: None (Prefect's thread pool), or Dask (a cluster at `dask_address`, else
    a local one of worker processes) through prefect-dask."""
    if kind == "default":
        return None
    if kind != "dask":
        raise ValueError(f"task runner must be 'default' or 'dask', got {kind!r}")
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    workers = max(1, min(4, os.cpu_count() or 1))
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
