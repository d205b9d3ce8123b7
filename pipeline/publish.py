"""Publish a stage record: the catalog rows and the OpenLineage events of a stage run, both made from
the one `StageRecord` the runner wrote (so the two can never disagree).

- START when the stage begins (inputs known), FAIL with the error if it raises, COMPLETE with the
  record's outputs and row counts when it finishes;
- catalog: every input artefact (recorded if the catalog does not know it yet), every output
  artefact, and an edge from each input to each output (or the output's own `parents`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.catalog import Catalog, CatalogBatch
from pipeline.openlineage import DatasetRef, emit
from pipeline.workspace import Workspace

if TYPE_CHECKING:
    from pipeline.stage import Artifact, Stage, StageRecord

JOB_TYPE = "STAGE"


def _dataset(ws: Workspace, artifact: Artifact) -> DatasetRef:
    location = artifact.location(ws)
    if location is None:
        return DatasetRef(artifact.id, artifact.rows, artifact.contract)
    size = location.stat().st_size if location.is_file() else None
    return DatasetRef(str(location), artifact.rows, artifact.contract, size)


def publish_start(ws: Workspace, stage: Stage, run_uuid: str, parent: tuple[str, str] | None) -> None:
    inputs = [_dataset(ws, i.artifact) for i in stage.inputs()]
    emit(ws, "START", run_uuid, stage.name, JOB_TYPE, parent, inputs)


def publish_failure(
    ws: Workspace, stage: Stage, run_uuid: str, parent: tuple[str, str] | None, error: BaseException
) -> None:
    inputs = [_dataset(ws, i.artifact) for i in stage.inputs()]
    emit(ws, "FAIL", run_uuid, stage.name, JOB_TYPE, parent, inputs, error=error)


def publish_record(ws: Workspace, record: StageRecord, run_uuid: str, parent: tuple[str, str] | None) -> None:
    """Catalog rows, then the COMPLETE event."""
    record_in_catalog(ws, record)
    inputs = [_dataset(ws, i.artifact) for i in record.inputs]
    outputs = [_dataset(ws, a) for a in record.outputs]
    emit(ws, "COMPLETE", run_uuid, record.stage, JOB_TYPE, parent, inputs, outputs)


def record_in_catalog(ws: Workspace, record: StageRecord, batch: CatalogBatch | None = None) -> None:
    """The catalog rows of one record (in `batch` when given, else in a transaction of its own)."""
    if batch is None:
        with Catalog(ws).batch() as own:
            _write(ws, record, own)
    else:
        _write(ws, record, batch)


def _write(ws: Workspace, record: StageRecord, batch: CatalogBatch) -> None:
    edges = tuple((i.artifact.id, i.relation) for i in record.inputs)
    for item in record.inputs:
        artifact = item.artifact
        batch.ensure_artifact(
            artifact.id, artifact.kind, _uri(ws, artifact), artifact.rows, dict(artifact.meta)
        )
    for artifact in record.outputs:
        meta = {"stage": record.stage, "stage_id": record.id, "code_version": record.code_version}
        meta.update(artifact.meta)
        parents = artifact.parents if artifact.parents is not None else edges
        batch.record_artifact(artifact.id, artifact.kind, _uri(ws, artifact), artifact.rows, meta)
        for parent_id, relation in parents:
            batch.record_edge(parent_id, artifact.id, relation)


def _uri(ws: Workspace, artifact: Artifact) -> str | None:
    location = artifact.location(ws)
    return str(location) if isinstance(location, Path) else None
