"""OpenLineage RunEvents for every flow run and task run.

Each run emits START, then COMPLETE or FAIL, with its input and output datasets (files and folders in
the workspace, namespace `file`) carrying a schema facet (from the data contract) and row counts
(`dataQualityMetrics` on inputs, `outputStatistics` on outputs); task runs and sub-flow runs carry the
`parent` run facet pointing at the Prefect flow run that ran them, and the run ids are Prefect's.

Where events go is decided by openlineage-python's own configuration (an `openlineage.yml` found
through `OPENLINEAGE_CONFIG`, the working directory or `~/.openlineage`; `OPENLINEAGE__TRANSPORT__*`
or `OPENLINEAGE_URL` variables; `OPENLINEAGE_DISABLED=true`). Only when none of those is set do events
go to the workspace's JSONL file, `<ws>/lineage/events.jsonl`, one event per line.

Task events come from Prefect state hooks (so a cached task run, whose body never runs, still has its
START and COMPLETE); flow events from `flow_run_events`, a context manager around the flow body.
"""

from __future__ import annotations

import datetime
import os
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    data_quality_metrics_input_dataset,
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    processing_engine_run,
    schema_dataset,
    set_producer,
)
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.noop import NoopConfig, NoopTransport

from pipeline.contracts import load_contract
from pipeline.workspace import Workspace

PRODUCER = "https://github.com/dpop-project/dpop/tree/main/flows"
DATASET_NAMESPACE = "file"
set_producer(PRODUCER)


def job_namespace() -> str:
    return os.environ.get("OPENLINEAGE_NAMESPACE", "dpop")


@dataclass(frozen=True)
class DatasetRef:
    """A file or folder an event names, with what we know about it."""

    path: str
    rows: int | None = None
    contract: str | None = None  # data contract name, for the schema facet
    size: int | None = None


# --- client: the standard configuration, else the workspace's JSONL file -----------------------------


def _standard_config_present() -> bool:
    """True when openlineage-python's own config sources name a transport (or disable it)."""
    if os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true" or os.environ.get(
        "OPENLINEAGE_URL"
    ):
        return True
    probe = OpenLineageClient(transport=NoopTransport(NoopConfig()))  # loads yaml + env, sends nothing
    transport = probe.config.transport or {}
    return bool(transport.get("type"))


_clients: dict[str, OpenLineageClient] = {}
_clients_lock = threading.Lock()


def lineage_client(ws: Workspace) -> OpenLineageClient:
    key = str(ws.root)
    with _clients_lock:
        if key not in _clients:
            if _standard_config_present():
                _clients[key] = OpenLineageClient()
            else:
                ws.lineage_events_path.parent.mkdir(parents=True, exist_ok=True)
                transport = FileTransport(FileConfig(log_file_path=str(ws.lineage_events_path), append=True))
                _clients[key] = OpenLineageClient(transport=transport)
        return _clients[key]


def reset_clients() -> None:
    """Forget cached clients (after the OpenLineage environment changed, e.g. in tests)."""
    with _clients_lock:
        _clients.clear()


# --- events ----------------------------------------------------------------------------------------


@cache
def _schema_fields(contract: str) -> tuple[schema_dataset.SchemaDatasetFacetFields, ...]:
    spec = load_contract(contract)
    return tuple(
        schema_dataset.SchemaDatasetFacetFields(name=c.name, type=str(c.type), description=c.meaning or None)
        for c in spec.columns.values()
    )


def _facets(ref: DatasetRef) -> dict[str, Any]:
    return (
        {"schema": schema_dataset.SchemaDatasetFacet(fields=list(_schema_fields(ref.contract)))}
        if ref.contract
        else {}
    )


def _input(ref: DatasetRef) -> InputDataset:
    input_facets = {}
    if ref.rows is not None:
        input_facets["dataQualityMetrics"] = (
            data_quality_metrics_input_dataset.DataQualityMetricsInputDatasetFacet(
                columnMetrics={}, rowCount=ref.rows, bytes=ref.size
            )
        )
    return InputDataset(
        namespace=DATASET_NAMESPACE, name=ref.path, facets=_facets(ref), inputFacets=input_facets
    )


def _output(ref: DatasetRef) -> OutputDataset:
    output_facets = {}
    if ref.rows is not None:
        output_facets["outputStatistics"] = (
            output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                rowCount=ref.rows, size=ref.size
            )
        )
    return OutputDataset(
        namespace=DATASET_NAMESPACE, name=ref.path, facets=_facets(ref), outputFacets=output_facets
    )


def emit(
    ws: Workspace,
    state: str,
    run_id: str,
    job_name: str,
    job_type: str,
    parent: tuple[str, str] | None = None,
    inputs: list[DatasetRef] = (),
    outputs: list[DatasetRef] = (),
    error: BaseException | None = None,
) -> None:
    """Emit one RunEvent. `parent` is (parent run id, parent job name)."""
    import prefect

    run_facets: dict[str, Any] = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=prefect.__version__, name="prefect", openlineageAdapterVersion=None
        )
    }
    if parent is not None:
        run_facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=parent[0]), job=parent_run.Job(namespace=job_namespace(), name=parent[1])
        )
    if error is not None:
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=f"{type(error).__name__}: {error}",
            programmingLanguage="python",
            stackTrace="".join(traceback.format_exception(error))[-8000:],
        )
    event = RunEvent(
        eventType=RunState[state],
        eventTime=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        run=Run(runId=run_id, facets=run_facets),
        job=Job(
            namespace=job_namespace(),
            name=job_name,
            facets={
                "jobType": job_type_job.JobTypeJobFacet(
                    processingType="BATCH", integration="PREFECT", jobType=job_type
                )
            },
        ),
        inputs=[_input(r) for r in inputs],
        outputs=[_output(r) for r in outputs],
        producer=PRODUCER,
    )
    lineage_client(ws).emit(event)


# --- Prefect task hooks -----------------------------------------------------------------------------

# (workspace, parameters, result or None) -> (inputs, outputs)
Describe = Callable[[Workspace, dict[str, Any], Any], tuple[list[DatasetRef], list[DatasetRef]]]

_started: set[str] = set()  # task run ids whose START went out from this process (retries re-enter Running)


def _task_context(task: Any, task_run: Any) -> tuple[Workspace, dict[str, Any], str, tuple[str, str] | None]:
    from prefect.context import FlowRunContext, TaskRunContext

    context = TaskRunContext.get()
    parameters = dict(context.parameters) if context else {}
    ws = Workspace.open(parameters["workspace"])
    flow_context = FlowRunContext.get()
    if flow_context is not None and flow_context.flow is not None:
        flow_name = flow_context.flow.name
    elif task_run.flow_run_id:  # e.g. on a Dask worker process, where only the task's context travels
        flow_name = _flow_name(str(task_run.flow_run_id))
    else:
        flow_name = "flow"
    parent = (str(task_run.flow_run_id), flow_name) if task_run.flow_run_id else None
    return ws, parameters, f"{flow_name}.{task.name}", parent


@cache
def _flow_name(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow(client.read_flow_run(flow_run_id).flow_id).name


def task_hooks(describe: Describe) -> dict[str, list[Callable[..., None]]]:
    """on_running / on_completion / on_failure hooks that emit a task run's START, COMPLETE and FAIL."""

    def on_running(task: Any, task_run: Any, state: Any) -> None:
        run_id = str(task_run.id)
        if run_id in _started:
            return
        _started.add(run_id)
        ws, parameters, job, parent = _task_context(task, task_run)
        inputs, _ = describe(ws, parameters, None)
        emit(ws, "START", run_id, job, "TASK", parent, inputs)

    def on_completion(task: Any, task_run: Any, state: Any) -> None:
        run_id = str(task_run.id)
        ws, parameters, job, parent = _task_context(task, task_run)
        inputs, outputs = describe(ws, parameters, state.result())
        if run_id not in _started:  # e.g. a task run that went straight to Cached
            emit(ws, "START", run_id, job, "TASK", parent, inputs)
        _started.discard(run_id)
        emit(ws, "COMPLETE", run_id, job, "TASK", parent, inputs, outputs)

    def on_failure(task: Any, task_run: Any, state: Any) -> None:
        run_id = str(task_run.id)
        ws, parameters, job, parent = _task_context(task, task_run)
        inputs, _ = describe(ws, parameters, None)
        if run_id not in _started:
            emit(ws, "START", run_id, job, "TASK", parent, inputs)
        _started.discard(run_id)
        try:
            state.result()
            error = None
        except BaseException as raised:  # the task's own exception, re-raised by result()
            error = raised
        emit(ws, "FAIL", run_id, job, "TASK", parent, inputs, error=error)

    return {"on_running": [on_running], "on_completion": [on_completion], "on_failure": [on_failure]}


# --- flows ------------------------------------------------------------------------------------------


def _parent_flow_run(flow_run: Any) -> tuple[str, str] | None:
    """(run id, flow name) of the flow that started this sub-flow, from the Prefect API."""
    if not getattr(flow_run, "parent_task_run_id", None):
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        parent_task_run = client.read_task_run(flow_run.parent_task_run_id)
        if not parent_task_run.flow_run_id:
            return None
        parent_flow_run = client.read_flow_run(parent_task_run.flow_run_id)
        parent_flow = client.read_flow(parent_flow_run.flow_id)
    return str(parent_flow_run.id), parent_flow.name


@dataclass
class FlowLineage:
    """What a flow body reports for its COMPLETE event."""

    inputs: list[DatasetRef]
    outputs: list[DatasetRef]


@contextmanager
def flow_run_events(ws: Workspace, inputs: list[DatasetRef] = ()) -> Iterator[FlowLineage]:
    """Emit START now and COMPLETE (with `.outputs` as set by the body) or FAIL at the end of a flow run."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    flow_run, flow = context.flow_run, context.flow
    run_id, job = str(flow_run.id), flow.name
    parent = _parent_flow_run(flow_run)
    lineage = FlowLineage(list(inputs), [])
    emit(ws, "START", run_id, job, "FLOW", parent, lineage.inputs)
    try:
        yield lineage
    except BaseException as error:
        emit(ws, "FAIL", run_id, job, "FLOW", parent, lineage.inputs, error=error)
        raise
    emit(ws, "COMPLETE", run_id, job, "FLOW", parent, lineage.inputs, lineage.outputs)


def file_ref(path: str | Path, rows: int | None = None, contract: str | None = None) -> DatasetRef:
    """A DatasetRef for a local path, with its byte size when it is a file."""
    path = Path(path)
    size = path.stat().st_size if path.is_file() else None
    return DatasetRef(str(path.resolve()), rows, contract, size)
