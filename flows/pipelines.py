"""The stage flows: ingest, build, reference log-probs and training, each usable on its own.

Each flow runs its tasks with results stored in the workspace (flows/caching.py), checks that a cache
hit's outputs still exist (else re-runs that task with a fresh cache entry), and emits OpenLineage
events for itself. `flows/data_to_model.py` chains them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import wait

from flows.caching import outputs_present, result_storage
from flows.openlineage_events import DatasetRef, file_ref, flow_run_events
from flows.tasks import build_dataset_task, ingest_file, reference_logps_task, train_task
from pipeline.workspace import Workspace

# The ephemeral Prefect server started for a run inherits this: its telemetry heartbeat otherwise races
# the flow's own writes on the server's SQLite file and prints "database is locked" tracebacks.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def expand_sources(sources: list[str]) -> list[tuple[str, bool]]:
    """(source, found_in_a_folder) per file to ingest: a folder maps to one task per data file inside
    it (a `save_to_disk` folder or a hub dataset name stays one source)."""
    from pipeline.ingest.readers import expand_folder

    items: list[tuple[str, bool]] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir() and not (path / "state.json").is_file():
            files, _skipped = expand_folder(path.resolve())
            items.extend((str(f), True) for f in files)
        else:
            items.append((str(path.resolve()) if path.exists() else str(source), False))
    return items


def run_cached(task_: Any, ws: Workspace, **parameters: Any) -> tuple[Any, bool]:
    """Run a task with workspace result storage; (result, was it a cache hit). A cache hit whose outputs
    are gone (a deleted folder) is recomputed."""
    configured = task_.with_options(result_storage=result_storage(ws))
    state = configured(**parameters, return_state=True)
    result = state.result()
    cached = state.name == "Cached"
    if cached and not outputs_present(result):
        get_run_logger().warning(f"{task_.name}: cached result points at missing files; recomputing")
        state = configured.with_options(refresh_cache=True)(**parameters, return_state=True)
        result, cached = state.result(), False
    return result, cached


@flow(name="ingest", log_prints=True)
def ingest_flow(
    workspace: str, sources: list[str], fmt: str | None = None, options: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Ingest every source file (one task per file, in parallel on the flow's task runner)."""
    ws = Workspace.open(workspace)
    items = expand_sources(sources)
    inputs = [file_ref(s) if Path(s).exists() else DatasetRef(s) for s, _ in items]
    with flow_run_events(ws, inputs) as lineage:
        configured = ingest_file.with_options(result_storage=result_storage(ws))
        futures = [
            configured.submit(
                workspace=str(ws.root), source=source, fmt=fmt, options=options, skip_non_preference=in_folder
            )
            for source, in_folder in items
        ]
        wait(futures)
        results: list[dict[str, Any]] = []
        for (source, in_folder), future in zip(items, futures, strict=True):
            state = future.state
            result = state.result()
            cached = state.name == "Cached"
            if cached and not outputs_present(result):
                result = configured.with_options(refresh_cache=True)(
                    workspace=str(ws.root),
                    source=source,
                    fmt=fmt,
                    options=options,
                    skip_non_preference=in_folder,
                )
                cached = False
            for item in result:  # "cached": not recomputed, by Prefect's cache or by the stage's own reuse
                results.append({**item, "cached": cached or bool(item.get("reused"))})
        if not results:
            raise ValueError(f"no preference data found in {', '.join(sources)}")
        fresh = sum(not r["cached"] for r in results)
        print(
            f"ingest: {len(results)} source files, {fresh} ingested, {len(results) - fresh} unchanged (cached)"
        )
        lineage.outputs = [
            file_ref(r["pairs_path"], r.get("pairs_written") or r["rows_kept"], "preference_pair")
            for r in results
        ]
    return results


@flow(name="build", log_prints=True)
def build_flow(
    workspace: str, ingests: list[dict[str, Any]], curate_config: dict[str, Any] | None, tokenizer: str
) -> dict[str, Any]:
    """Score, curate, tokenise and shard the ingests into a dataset version."""
    ws = Workspace.open(workspace)
    clean = [{k: v for k, v in i.items() if k != "cached"} for i in ingests]
    inputs = [
        file_ref(i["pairs_path"], i.get("pairs_written") or i["rows_kept"], "preference_pair") for i in clean
    ]
    with flow_run_events(ws, inputs) as lineage:
        result, cached = run_cached(
            build_dataset_task,
            ws,
            workspace=str(ws.root),
            ingests=clean,
            curate_config=curate_config,
            tokenizer=tokenizer,
        )
        result = {**result, "cached": cached or bool(result.get("reused"))}
        print(
            f"build: dataset {result['dataset_id']}: {result['rows_in']} pairs in, {result['rows_kept']} kept "
            f"({result['train_rows']} train / {result['eval_rows']} eval)" + (" (cached)" if cached else "")
        )
        lineage.outputs = [file_ref(result["dataset_dir"], result["rows_kept"], "dpop_shard")]
    return result


@flow(name="reference-logps", log_prints=True)
def refs_flow(
    workspace: str, dataset_id: str, reference_model: str, dtype: str = "float32"
) -> dict[str, Any]:
    """Store a reference model's log-probs beside the tokens (computed in precision `dtype`, the label of
    the policy's `dpop.model_io.Precision`): a new dataset version."""
    ws = Workspace.open(workspace)
    with flow_run_events(ws, [file_ref(ws.dataset_dir(dataset_id)), file_ref(reference_model)]) as lineage:
        result, cached = run_cached(
            reference_logps_task,
            ws,
            workspace=str(ws.root),
            dataset_id=dataset_id,
            model_path=str(reference_model),
            dtype=dtype,
        )
        result = {**result, "cached": cached}
        print(f"reference log-probs: dataset {result['dataset_id']}" + (" (cached)" if cached else ""))
        lineage.outputs = [file_ref(result["dataset_dir"])]
    return result


@flow(name="train", log_prints=True)
def train_flow(
    workspace: str,
    dataset_id: str,
    model_path: str,
    train_config: dict[str, Any],
    start_key: str | None = None,
) -> dict[str, Any]:
    """Train a model on a dataset version; a finished identical run is reused ("up to date")."""
    from flows.caching import start_key as default_start_key

    ws = Workspace.open(workspace)
    start = start_key or default_start_key(model_path, False, model_path)
    with flow_run_events(ws, [file_ref(ws.dataset_dir(dataset_id)), file_ref(model_path)]) as lineage:
        result, cached = run_cached(
            train_task,
            ws,
            workspace=str(ws.root),
            dataset_id=dataset_id,
            model_path=str(model_path),
            config=train_config,
            start_key=start,
        )
        result = {**result, "cached": cached or bool(result.get("reused"))}
        if result["cached"]:
            print(f"train: up to date (run {result['run_id']} already trained on dataset {dataset_id})")
        else:
            print(
                f"train: run {result['run_id']} -> {result['model_dir']}"
                + (" (resumed)" if result.get("resumed") else "")
            )
        lineage.outputs = [file_ref(result["model_dir"])]
    return result
