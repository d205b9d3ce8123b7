"""Prefect tasks around the stage functions. They take and return paths and ids (small JSON dicts), never
data frames: the data stays in the workspace, so a task runs the same on a thread, a Dask worker or
another machine that mounts the workspace.

Every task is cached on its content key (flows/caching.py), persists its result in `<ws>/cache`,
retries transient I/O failures, and emits OpenLineage START/COMPLETE/FAIL through its state hooks.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from prefect import task

from flows.caching import (
    build_cache_key,
    ingest_cache_key,
    refs_cache_key,
    train_cache_key,
    train_key,
)
from flows.openlineage_events import DatasetRef, file_ref, task_hooks
from pipeline.workspace import Workspace

# Errors worth another try: a flaky network filesystem, a file briefly locked or being replaced.
# A missing file or bad data fails at once.
_PERMANENT_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


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


def _common(name: str, cache_key_fn: Any, describe: Any) -> dict[str, Any]:
    return {
        "name": name,
        "cache_key_fn": cache_key_fn,
        "persist_result": True,
        "result_serializer": "json",
        "retries": 2,
        "retry_delay_seconds": [1, 5],
        "retry_condition_fn": is_transient,
        **task_hooks(describe),
    }


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --- ingest: one task per source file --------------------------------------------------------------


def _describe_ingest(ws: Workspace, parameters: dict[str, Any], result: Any) -> tuple[list, list]:
    source = Path(parameters["source"])
    inputs = [file_ref(source)] if source.exists() else [DatasetRef(str(parameters["source"]))]
    if not result:
        return inputs, []
    inputs = [file_ref(source, rows=sum(r["rows_read"] for r in result))] if source.exists() else inputs
    outputs = []
    for item in result:
        outputs.append(
            file_ref(item["pairs_path"], item.get("pairs_written") or item["rows_kept"], "preference_pair")
        )
        outputs.append(file_ref(item["rejections_path"], item["rows_rejected"], "rejection"))
    return inputs, outputs


@task(**_common("ingest-file", ingest_cache_key, _describe_ingest))
def ingest_file(
    workspace: str,
    source: str,
    fmt: str | None = None,
    name: str | None = None,
    options: dict[str, Any] | None = None,
    skip_non_preference: bool = False,
) -> list[dict[str, Any]]:
    """Ingest one source (a file, a save_to_disk folder or a hub name); a file found inside a folder
    that holds no preference data is skipped (empty list) rather than failing the run."""
    from pipeline.ingest import IngestOptions, NotPreferenceData, ingest_source

    try:
        results = ingest_source(
            source, Workspace.open(workspace), fmt=fmt, name=name, options=IngestOptions(**(options or {}))
        )
    except NotPreferenceData:
        if skip_non_preference:
            return []
        raise
    return [_jsonable(r) for r in results]


def ingest_result(item: dict[str, Any]) -> Any:
    """An IngestResult back from its task dict (unknown keys from a newer version are ignored)."""
    from pipeline.ingest import IngestResult

    known = {f.name for f in dataclasses.fields(IngestResult)}
    values = {k: v for k, v in item.items() if k in known}
    values["pairs_path"] = Path(values["pairs_path"])
    values["rejections_path"] = Path(values["rejections_path"])
    return IngestResult(**values)


# --- build: score, curate, tokenise, shard ----------------------------------------------------------


def _describe_build(ws: Workspace, parameters: dict[str, Any], result: Any) -> tuple[list, list]:
    inputs = [
        file_ref(i["pairs_path"], i.get("pairs_written") or i["rows_kept"], "preference_pair")
        for i in parameters["ingests"]
    ]
    inputs.append(file_ref(parameters["tokenizer"]))
    if not result:
        return inputs, []
    folder = Path(result["dataset_dir"])
    outputs = [
        file_ref(folder, result["rows_kept"], "dpop_shard"),
        file_ref(folder / "pairs.parquet", result["rows_kept"], "preference_pair"),
    ]
    if (folder / "rejections.parquet").is_file():
        outputs.append(
            file_ref(folder / "rejections.parquet", result["rows_in"] - result["rows_kept"], "rejection")
        )
    return inputs, outputs


@task(**_common("build-dataset", build_cache_key, _describe_build))
def build_dataset_task(
    workspace: str, ingests: list[dict[str, Any]], curate_config: dict[str, Any] | None, tokenizer: str
) -> dict[str, Any]:
    """Score, curate, tokenise and shard the given ingests into a dataset version."""
    from pipeline.build import build_dataset
    from pipeline.curate import load_curation_config

    result = build_dataset(
        Workspace.open(workspace),
        load_curation_config(curate_config or {}),
        tokenizer,
        ingests=[ingest_result(i) for i in ingests],
    )
    return _jsonable(result)


# --- reference log-probs -----------------------------------------------------------------------------


def _dataset_ref(ws: Workspace, dataset_id: str) -> DatasetRef:
    manifest_path = ws.dataset_dir(dataset_id) / "manifest.json"
    rows = None
    if manifest_path.is_file():
        splits = json.loads(manifest_path.read_text(encoding="utf-8")).get("splits", {})
        rows = sum(s.get("rows", 0) for s in splits.values())
    return file_ref(ws.dataset_dir(dataset_id), rows, "dpop_shard")


def _describe_refs(ws: Workspace, parameters: dict[str, Any], result: Any) -> tuple[list, list]:
    inputs = [_dataset_ref(ws, parameters["dataset_id"]), file_ref(parameters["model_path"])]
    return inputs, ([_dataset_ref(ws, result["dataset_id"])] if result else [])


@task(**_common("reference-logps", refs_cache_key, _describe_refs))
def reference_logps_task(
    workspace: str, dataset_id: str, model_path: str, dtype: str = "float32"
) -> dict[str, Any]:
    """Store the reference model's log-probs, computed in precision `dtype`, in a new dataset version."""
    from dpop.refs import compute_reference_logps

    ws = Workspace.open(workspace)
    new_id = compute_reference_logps(ws, dataset_id, model_path, progress=False, dtype=dtype)
    return {"dataset_id": new_id, "dataset_dir": str(ws.dataset_dir(new_id))}


# --- training ---------------------------------------------------------------------------------------


def _describe_train(ws: Workspace, parameters: dict[str, Any], result: Any) -> tuple[list, list]:
    inputs = [_dataset_ref(ws, parameters["dataset_id"]), file_ref(parameters["model_path"])]
    return inputs, ([file_ref(result["model_dir"])] if result else [])


@task(**_common("train", train_cache_key, _describe_train))
def train_task(
    workspace: str, dataset_id: str, model_path: str, config: dict[str, Any], start_key: str
) -> dict[str, Any]:
    """Train `model_path` on `dataset_id`. The run id comes from the cache key, so a run killed midway
    is resumed from its last checkpoint when the flow runs again, and a finished run is not redone."""
    from dpop.config import TrainConfig
    from dpop.train import train

    ws = Workspace.open(workspace)
    run_id = "run-" + train_key(workspace, dataset_id, start_key, config).rsplit("-", 1)[-1][:16]
    run_dir = ws.run_dir(run_id)
    finished = _finished_run(run_dir)
    if finished is not None:
        return finished
    _drop_unfinished_checkpoints(run_dir)
    resume = any(run_dir.glob("checkpoint-*"))
    result = train(ws, dataset_id, model_path, TrainConfig.from_dict(config), run_id=run_id, resume=resume)
    return {
        "run_id": result.run_id,
        "run_dir": str(result.run_dir),
        "model_dir": str(result.model_dir),
        "model_id": f"model-{result.run_id}",
        "final_metrics": _jsonable(result.final_metrics),
        "resumed": resume,
    }


def _drop_unfinished_checkpoints(run_dir: Path) -> None:
    """Remove checkpoint folders a killed run left half-written. The Trainer writes a checkpoint in place
    and its trainer_state.json last, so a checkpoint without a readable one is not resumable."""
    import shutil

    for checkpoint in run_dir.glob("checkpoint-*"):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            shutil.rmtree(checkpoint, ignore_errors=True)


def _finished_run(run_dir: Path) -> dict[str, Any] | None:
    """The result of a run that already finished (run.json and model present), e.g. after the cache was
    cleared; None otherwise."""
    record = run_dir / "run.json"
    if not (record.is_file() and (run_dir / "model").is_dir()):
        return None
    data = json.loads(record.read_text(encoding="utf-8"))
    return {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "model_dir": str(run_dir / "model"),
        "model_id": f"model-{run_dir.name}",
        "final_metrics": data.get("final_metrics") or data.get("metrics") or {},
        "resumed": False,
        "reused": True,
    }
