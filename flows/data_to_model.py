"""`data_to_model_flow`: source files to a trained model, recomputing only what changed.

    ingest (one task per file) -> build (score, curate, tokenise, shard) -> reference log-probs -> train

Every step is cached on its content (flows/caching.py), so a refresh with nothing changed recomputes
nothing and says "up to date"; a changed or new file re-ingests only that file, which makes a new
dataset version, which trains a new model (from the base model, or the last model with `warm_start`).
One run at a time per workspace (flows/lock.py); leftovers of a killed run (`.tmp-*`) are swept first,
and finished stages are cache hits, so a restarted run resumes where the killed one stopped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import prefect.runtime.flow_run
from prefect import flow

from dpop.model_io import precision_for_training
from flows.artifacts import publish
from flows.caching import start_key
from flows.lock import workspace_lock
from flows.openlineage_events import DatasetRef, file_ref, flow_run_events
from flows.pipelines import build_flow, expand_sources, ingest_flow, refs_flow, train_flow
from pipeline.atomic import sweep_temporaries
from pipeline.catalog import Catalog
from pipeline.workspace import Workspace

UP_TO_DATE = "up to date"
TRAINED = "trained"


def _curation_dict(config: Any) -> dict[str, Any] | None:
    from pipeline.curate import load_curation_config

    if config is None:
        return None
    return load_curation_config(config if not isinstance(config, Path) else str(config)).as_dict()


def _train_dict(config: Any) -> dict[str, Any]:
    from dpop.config import TrainConfig

    if config is None:
        return TrainConfig().as_dict()
    if isinstance(config, TrainConfig):
        return config.as_dict()
    if isinstance(config, dict):
        return TrainConfig.from_dict(config).as_dict()
    return TrainConfig.from_yaml(config).as_dict()


def latest_model(ws: Workspace) -> Path | None:
    """The model folder of the most recent finished training run in the workspace, if any."""
    catalog = Catalog(ws)
    for run in reversed(catalog.find("run")):
        for child_id, relation in catalog.children(run.id):
            model = catalog.get(child_id) if relation == "produced" else None
            if model is not None and model.uri and Path(model.uri).is_dir():
                return Path(model.uri)
    return None


def task_runner_for(kind: str, dask_address: str | None) -> Any:
    """The task runner of the data flows: Prefect's thread pool, or Dask (a cluster at `dask_address`,
    else a local one) through prefect-dask."""
    if kind == "default":
        return None
    if kind != "dask":
        raise ValueError(f"task runner must be 'default' or 'dask', got {kind!r}")
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": min(4, os.cpu_count() or 1), "processes": True})


@flow(name="data-to-model", log_prints=True)
def data_to_model_flow(
    workspace: Any,
    sources: list[str],
    curate_config: Any = None,
    base_model: Any = None,
    reference_model: Any = None,
    train_config: Any = None,
    tokenizer: Any = None,
    warm_start: bool = False,
    task_runner: str = "default",
    dask_address: str | None = None,
    lock_timeout: float = 0,
) -> dict[str, Any]:
    """Ingest `sources`, build a dataset version, compute reference log-probs and train; returns a summary
    (dataset id, run id, model dir, counts, status "trained" or "up to date").

    `base_model`: the model folder to train (its tokenizer is used unless `tokenizer` is given);
    `reference_model`: the DPO reference (default: the base model); `warm_start`: continue from the
    last trained model instead of the base model when a new dataset version arrives."""
    if base_model is None:
        raise ValueError("base_model is required: a model folder (save_pretrained layout with its tokenizer)")
    ws = Workspace.open(workspace)
    base = Path(base_model).expanduser().resolve()
    if not base.is_dir():
        raise FileNotFoundError(f"base model folder {base} not found")
    reference = Path(reference_model).expanduser().resolve() if reference_model else base
    tokenizer_path = Path(tokenizer).expanduser().resolve() if tokenizer else base
    sources = [str(s) for s in sources]
    curation = _curation_dict(curate_config)
    training = _train_dict(train_config)

    with workspace_lock(ws, lock_timeout, what="data-to-model flow"):
        swept = sweep_temporaries(ws.root)
        if swept:
            print(f"removed {swept} unfinished file(s) left by an interrupted run")
        inputs = [file_ref(s) if Path(s).exists() else DatasetRef(s) for s, _ in expand_sources(sources)]
        with flow_run_events(ws, inputs) as lineage:
            runner = task_runner_for(task_runner, dask_address)
            data_options = {"task_runner": runner} if runner is not None else {}
            ingests = ingest_flow.with_options(**data_options)(workspace=str(ws.root), sources=sources)
            build = build_flow.with_options(**data_options)(
                workspace=str(ws.root), ingests=ingests, curate_config=curation, tokenizer=str(tokenizer_path)
            )
            refs = refs_flow(
                workspace=str(ws.root),
                dataset_id=build["dataset_id"],
                reference_model=str(reference),
                dtype=precision_for_training(training).label,  # the policy's: log-ratio 0 at step 0
            )
            start = latest_model(ws) if warm_start else None
            if warm_start and start is None:
                print("warm start: no earlier model in the workspace; starting from the base model")
            trained = train_flow(
                workspace=str(ws.root),
                dataset_id=refs["dataset_id"],
                model_path=str(start or base),
                train_config=training,
                start_key=start_key(start or base, warm_start, base),
            )
            summary = _summary(ws, ingests, build, refs, trained)
            summary["flow_run_id"] = str(prefect.runtime.flow_run.id)
            lineage.outputs = [file_ref(trained["model_dir"])]
            publish(ws, ingests, build, summary)
        print(f"data-to-model: {summary['status']}: run {summary['run_id']}, model {summary['model_dir']}")
    return summary


def _summary(
    ws: Workspace,
    ingests: list[dict[str, Any]],
    build: dict[str, Any],
    refs: dict[str, Any],
    trained: dict[str, Any],
) -> dict[str, Any]:
    files_cached = sum(1 for i in ingests if i["cached"])
    return {
        "workspace": str(ws.root),
        "status": UP_TO_DATE if trained["cached"] else TRAINED,
        "files": len(ingests),
        "files_ingested": len(ingests) - files_cached,
        "files_cached": files_cached,
        "ingested_files": [i["source_uri"] for i in ingests if not i["cached"]],
        "ingest_ids": [i["ingest_id"] for i in ingests],
        "rows_read": sum(i["rows_read"] for i in ingests),
        "rows_kept_ingest": sum(i["rows_kept"] for i in ingests),
        "rows_rejected_ingest": sum(i["rows_rejected"] for i in ingests),
        "pairs_written": sum(i.get("pairs_written") or i["rows_kept"] for i in ingests),
        "tokenized_dataset_id": build["dataset_id"],
        "dataset_id": refs["dataset_id"],
        "pairs_in": build["rows_in"],
        "pairs_kept": build["rows_kept"],
        "train_rows": build["train_rows"],
        "eval_rows": build["eval_rows"],
        "funnel": [list(step) if not isinstance(step, dict) else step for step in build.get("funnel") or []],
        "run_id": trained["run_id"],
        "run_dir": trained["run_dir"],
        "resumed": bool(trained.get("resumed")),
        "model_id": trained["model_id"],
        "model_dir": trained["model_dir"],
        "final_metrics": trained.get("final_metrics") or {},
        "cached": {"build": build["cached"], "refs": refs["cached"], "train": trained["cached"]},
    }
