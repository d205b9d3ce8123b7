"""OpenLineage RunEvents: where they go and how one is made.

Where events go is decided by openlineage-python's own configuration (an `openlineage.yml` found
through `OPENLINEAGE_CONFIG`, the working directory or `~/.openlineage`; `OPENLINEAGE__TRANSPORT__*`
or `OPENLINEAGE_URL` variables; `OPENLINEAGE_DISABLED=true`). Only when none of those is set do events
go to the workspace's JSONL file, `<ws>/lineage/events.jsonl`, one event per line. An event the configured
transport fails to deliver (an HTTP endpoint down, after its retries) does not fail the stage: it is kept
in `<ws>/lineage/undelivered.jsonl` with a warning (docs/ecosystem.md: sending them again).

Datasets are files and folders (namespace `file`) with a schema facet from their data contract and
row counts (`dataQualityMetrics` on inputs, `outputStatistics` on outputs); a run's `parent` facet
names the flow run that ran it (a Prefect flow run when there is one).
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import traceback
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

PRODUCER = "https://github.com/dpop-project/dpop"
UNDELIVERED = "undelivered.jsonl"
log = logging.getLogger(__name__)
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


def file_ref(path: str | Path, rows: int | None = None, contract: str | None = None) -> DatasetRef:
    """A DatasetRef for a local path (or a non-path name such as a hub dataset), with its byte size."""
    local = Path(path)
    if not local.exists():
        return DatasetRef(str(path), rows, contract)
    size = local.stat().st_size if local.is_file() else None
    return DatasetRef(str(local.resolve()), rows, contract, size)


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
    if not ref.contract:
        return {}
    return {"schema": schema_dataset.SchemaDatasetFacet(fields=list(_schema_fields(ref.contract)))}


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


def _run_facets(
    engine: tuple[str, str], parent: tuple[str, str] | None, error: BaseException | None
) -> dict[str, Any]:
    facets: dict[str, Any] = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=engine[1], name=engine[0], openlineageAdapterVersion=None
        )
    }
    if parent is not None:
        facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=parent[0]), job=parent_run.Job(namespace=job_namespace(), name=parent[1])
        )
    if error is not None:
        facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=f"{type(error).__name__}: {error}",
            programmingLanguage="python",
            stackTrace="".join(traceback.format_exception(error))[-8000:],
        )
    return facets


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
    engine: tuple[str, str] | None = None,
) -> None:
    """Emit one RunEvent. `parent` is (parent run id, parent job name); `engine` (name, version) is the
    processing engine facet (default: dpop and its code version)."""
    from pipeline.version import code_version

    event = RunEvent(
        eventType=RunState[state],
        eventTime=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        run=Run(runId=run_id, facets=_run_facets(engine or ("dpop", code_version()), parent, error)),
        job=Job(
            namespace=job_namespace(),
            name=job_name,
            facets={
                "jobType": job_type_job.JobTypeJobFacet(
                    processingType="BATCH", integration="DPOP", jobType=job_type
                )
            },
        ),
        inputs=[_input(r) for r in inputs],
        outputs=[_output(r) for r in outputs],
        producer=PRODUCER,
    )
    try:
        lineage_client(ws).emit(event)
    except Exception as error:  # an endpoint that is down or refuses must not stop the data work
        _keep_undelivered(ws, event, error)


def _keep_undelivered(ws: Workspace, event: RunEvent, error: Exception) -> None:
    """Append an event the configured transport could not deliver to `<ws>/lineage/undelivered.jsonl`
    (one JSON event a line, ready to POST again: docs/ecosystem.md) and say so in one warning line.
    The catalog, written before COMPLETE is emitted, holds the same facts either way."""
    from filelock import FileLock
    from openlineage.client.serde import Serde

    path = ws.root / "lineage" / UNDELIVERED
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"), path.open("a", encoding="utf-8") as handle:
        handle.write(Serde.to_json(event) + "\n")
    reason = " ".join(str(error).split())[:300]
    log.warning(
        "OpenLineage event %s %s not delivered (%s); kept in %s",
        event.eventType.value,
        event.job.name,
        reason,
        path,
    )
