"""Gather what a report shows from the workspace: the runs (record, metrics, evaluation, base model) and
the dataset they share (manifest, funnel, pairs, shards, lineage).

Every piece is optional on disk (a run still training has no final metrics; a run trained before the
evaluation stage has no evaluation; an older dataset may lack pairs.parquet), so each loader returns an
empty value rather than failing, and the page says what is missing. A run folder that does not exist is
an error, and so are runs that share no dataset (their numbers would not compare).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.catalog import Catalog
from pipeline.funnel import read_funnel
from pipeline.identity import stable_hash
from pipeline.report.evals import Evaluation, find_evaluation
from pipeline.shards import ShardError, load_manifest, open_split
from pipeline.stage import read_record
from pipeline.workspace import Workspace

PAIR_COLUMNS = ("pair_id", "source", "edit_ratio", "split")  # what the figures need of pairs.parquet


class ComparisonError(ValueError):
    """Runs that cannot be shown side by side (no shared dataset)."""


@dataclass
class BaseModel:
    """What the run started from, as far as the records say."""

    id: str
    path: str | None
    tiny: bool = False  # the demo's tiny Llama, random weights (a stage of this workspace made it)
    parameters: int | None = None
    sft_steps: int | None = None  # SFT warm-up steps on top of it (None: no warm-up)
    sft_final_loss: float | None = None


@dataclass
class RunData:
    run_id: str
    run_dir: Path
    run: dict[str, Any]  # run.json
    chain: dict[str, Any]  # chain.json: the comparison it is part of, the smoke-test flag
    metrics: list[dict[str, Any]]
    dataset_id: str | None
    loss: dict[str, Any]  # {name, beta, penalty_lambda, ...}
    base: BaseModel | None
    evaluation: Evaluation | None
    label: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        config = self.run.get("config") or {}
        return config if isinstance(config, dict) else {}

    @property
    def penalty_lambda(self) -> float:
        value = self.loss.get("penalty_lambda", self.config.get("penalty_lambda", 0.0))
        return float(value or 0.0) if self.loss.get("name", "dpop") == "dpop" else 0.0


@dataclass
class DatasetData:
    dataset_id: str | None  # the version the runs trained on (with reference log-probs)
    tokenized_id: str | None  # the build that made its pairs and funnel
    manifest: dict[str, Any]
    funnel: list[dict[str, Any]]
    pairs: pl.DataFrame | None  # kept pairs: pair_id, source, edit_ratio, split
    pairs_path: Path | None  # pairs.parquet (texts: the inspector reads the rows it shows)
    ingested: pl.DataFrame | None  # every ingested pair of the dataset's sources: source, edit_ratio
    ingest_ids: list[str]
    splits: dict[str, pa.Table]  # shard rows per split (memory-mapped)
    token_lengths: dict[str, np.ndarray]  # prompt / chosen / rejected token counts over both splits
    reference_chosen_logps: float | None  # mean reference log p(chosen) on the eval split (else train)
    max_prompt_length: int | None
    tokenizer_path: Path | None
    notes: list[str] = field(default_factory=list)

    @property
    def prompts_at_limit(self) -> int:
        """Prompts of exactly `max_prompt_length` tokens: the build keeps a longer prompt's last tokens."""
        lengths = self.token_lengths.get("prompt")
        if self.max_prompt_length is None or lengths is None or not len(lengths):
            return 0
        return int((lengths == self.max_prompt_length).sum())


@dataclass
class ReportData:
    runs: list[RunData]
    dataset: DatasetData
    lineage: list[dict[str, Any]]  # the runs' ancestry trees (pipeline.lineage)
    comparison_id: str | None
    notes: list[str] = field(default_factory=list)
    selections: list[Any] = field(default_factory=list)  # pipeline.report.selection.SelectionView, once each

    @property
    def run(self) -> RunData:
        return self.runs[0]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl events; a torn last line (a run still writing) is skipped."""
    events = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events


def normalise_funnel(funnel: Any) -> list[dict[str, Any]]:
    """The manifest funnel as dicts {step, rows_in, dropped, reason} (read by `pipeline.funnel`)."""
    return [step.as_dict() for step in read_funnel(funnel)]


def comparison_id(run_ids: list[str]) -> str:
    """The chain's name for a comparison of these runs (`flows.chain.ChainResult.comparison_id`)."""
    return f"cmp-{stable_hash(sorted(run_ids), 16)}"


def loss_label(loss: dict[str, Any]) -> str:
    """ "DPOP λ=50", "DPO", "IPO" …: how a reader names a loss."""
    name = str(loss.get("name", "dpop"))
    penalty = loss.get("penalty_lambda")
    if name == "dpop" and penalty is not None:
        return "DPO" if float(penalty) == 0 else f"DPOP λ={float(penalty):g}"
    return name.upper()


# --- one run ----------------------------------------------------------------------------------------


def _run_dataset_id(ws: Workspace, run_id: str, run: dict[str, Any]) -> str | None:
    for key in ("dataset_id", "dataset"):
        value = run.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return value["id"]
    for parent_id, relation in Catalog(ws).parents(run_id):
        if relation == "trained_on":
            return parent_id
    return None


def _model_record(ws: Workspace, model_id: str, path: str | None) -> Any:
    """The record of the stage that made a model: in its folder, else in models/<id without model->."""
    for folder in filter(None, [path, str(ws.models_dir / model_id.removeprefix("model-"))]):
        record = read_record(Path(folder))
        if record is not None:
            return record
    return None


def base_model(ws: Workspace, run: dict[str, Any]) -> BaseModel | None:
    """The run's start model; `tiny` when it is (an SFT warm-up of) the demo's random tiny Llama."""
    base = run.get("base_model")
    if not isinstance(base, dict) or not base.get("id"):
        return None
    info = BaseModel(str(base["id"]), base.get("path"))
    record = _model_record(ws, info.id, info.path)
    if record is not None and record.stage == "sft":
        info.sft_steps = int((record.config.get("settings") or {}).get("steps") or 0)
        info.sft_final_loss = record.summary.get("final_loss")
        origin = next((i.artifact for i in record.inputs if i.relation == "sft_from"), None)
        record = _model_record(ws, origin.id, origin.path) if origin is not None else None
    if record is not None and record.stage == "tiny_model":
        info.tiny, info.parameters = True, record.summary.get("parameters")
    return info


def gather_run(ws: Workspace, run_id: str) -> RunData:
    run_dir = ws.run_dir(run_id)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run {run_id!r} not found (no folder {run_dir})")
    run = _read_json(run_dir / "run.json")
    record = read_record(run_dir)
    loss = run.get("loss") if isinstance(run.get("loss"), dict) else None
    if loss is None and record is not None:
        loss = record.summary.get("loss") or {"name": record.config.get("loss", "dpop")}
    loss = dict(loss or {"name": "dpop"})
    metrics = read_metrics(run_dir / "metrics.jsonl")
    notes = [] if metrics else [f"no metrics yet in {run_dir / 'metrics.jsonl'}"]
    data = RunData(
        run_id,
        run_dir,
        run,
        _read_json(run_dir / "chain.json"),  # written by the chain that ran it (flows/chain.py)
        metrics,
        _run_dataset_id(ws, run_id, run),
        loss,
        base_model(ws, run),
        find_evaluation(ws, run_id),
        loss_label(loss),
        notes,
    )
    if data.evaluation is None:
        notes.append(
            f"{run_id} has no evaluation in {ws.root / 'evals'} (`dpop eval --model {run_dir / 'model'} "
            f"--dataset {data.dataset_id or 'DATASET'}` writes one): the per-pair sections are empty"
        )
    return data


# --- the dataset ------------------------------------------------------------------------------------


def _tokenized_dataset(ws: Workspace, dataset_id: str) -> str:
    """The dataset version a reference-log-prob version was made from (itself when it is not one):
    its manifest names the ingested pair tables and holds the funnel."""
    seen = set()
    current = dataset_id
    while current not in seen:
        seen.add(current)
        manifest = _read_json(ws.dataset_dir(current) / "manifest.json")
        parents = [
            p.get("id") for p in manifest.get("parents", []) if p.get("relation") == "reference_logps_from"
        ]
        if not parents:
            parents = [
                p for p, relation in Catalog(ws).parents(current) if relation == "reference_logps_from"
            ]
        if not parents:
            return current
        current = parents[0]
    return current


def _ingest_ids(ws: Workspace, manifest: dict[str, Any], parents_of: str) -> list[str]:
    ids = [
        p["id"].removeprefix("pairs-")
        for p in manifest.get("parents", [])
        if isinstance(p, dict) and str(p.get("id", "")).startswith("pairs-")
    ]
    return ids or [
        p.removeprefix("pairs-") for p, _ in Catalog(ws).parents(parents_of) if p.startswith("pairs-")
    ]


def _ingested_pairs(ws: Workspace, ingest_ids: list[str]) -> pl.DataFrame | None:
    """All pairs read from the dataset's sources (before curation), with their edit ratios."""
    import pyarrow.parquet as pq

    from pipeline.score import score_pairs

    frames = []
    for ingest_id in ingest_ids:
        path = ws.sources_dir / ingest_id / "pairs.parquet"
        if not path.is_file():
            continue
        if "edit_ratio" in pq.read_schema(path).names:
            frames.append(pl.read_parquet(path, columns=["source", "edit_ratio"]))
            continue
        if pq.read_metadata(path).num_rows > 200_000:  # a report should not rescore a huge file
            continue
        frames.append(pl.from_arrow(score_pairs(pq.read_table(path)).select(["source", "edit_ratio"])))
    return pl.concat(frames) if frames else None


def _splits(ws: Workspace, dataset_id: str) -> dict[str, pa.Table]:
    tables = {}
    for split in ("train", "eval"):
        try:
            tables[split] = open_split(ws, dataset_id, split)
        except (ShardError, KeyError):
            continue
    return tables


def _token_lengths(splits: dict[str, pa.Table]) -> tuple[dict[str, np.ndarray], float | None]:
    lengths: dict[str, list[np.ndarray]] = {"prompt": [], "chosen": [], "rejected": []}
    reference: dict[str, float | None] = {}
    for split, table in splits.items():
        for name in lengths:
            column = f"{name}_ids"
            if column in table.column_names:
                lengths[name].append(pc.list_value_length(table.column(column)).to_numpy())
        if "ref_chosen_logps" in table.column_names and table.num_rows:
            reference[split] = pc.mean(table.column("ref_chosen_logps")).as_py()
    ref = reference.get("eval") if reference.get("eval") is not None else reference.get("train")
    joined = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in lengths.items()}
    return joined, ref


def _max_prompt_length(manifest: dict[str, Any]) -> int | None:
    value = manifest.get("max_prompt_length")
    if value is None:
        value = ((manifest.get("config") or {}).get("tokenize") or {}).get("max_prompt_length")
    return int(value) if isinstance(value, int | float) else None


def _pairs_path(ws: Workspace, *dataset_ids: str) -> Path | None:
    return next(
        (
            ws.dataset_dir(d) / "pairs.parquet"
            for d in dataset_ids
            if (ws.dataset_dir(d) / "pairs.parquet").is_file()
        ),
        None,
    )


def _read_pairs(path: Path | None) -> pl.DataFrame | None:
    if path is None:
        return None
    frame = pl.scan_parquet(path)
    present = set(frame.collect_schema().names())
    return frame.select([c for c in PAIR_COLUMNS if c in present]).collect()


def gather_dataset(ws: Workspace, dataset_id: str | None) -> DatasetData:
    if not dataset_id:
        note = "the run names no dataset version (run.json or catalog)"
        return DatasetData(None, None, {}, [], None, None, None, [], {}, {}, None, None, None, [note])
    notes: list[str] = []
    manifest: dict[str, Any] = {}
    try:
        manifest = load_manifest(ws, dataset_id)
    except ShardError as error:
        notes.append(str(error))
    tokenized = _tokenized_dataset(ws, dataset_id)
    pairs_manifest = _read_json(ws.dataset_dir(tokenized) / "manifest.json") or manifest
    pairs_path = _pairs_path(ws, dataset_id, tokenized)
    ingest_ids = _ingest_ids(ws, pairs_manifest, tokenized)
    splits = _splits(ws, dataset_id)
    lengths, reference = _token_lengths(splits)
    try:
        funnel = normalise_funnel(manifest.get("funnel") or pairs_manifest.get("funnel"))
    except ValueError as error:
        notes.append(f"the funnel of {dataset_id} is unreadable: {error}")
        funnel = []
    tokenizer = (manifest.get("tokenizer") or pairs_manifest.get("tokenizer") or {}).get("path")
    return DatasetData(
        dataset_id,
        tokenized,
        manifest,
        funnel,
        _read_pairs(pairs_path),
        pairs_path,
        _ingested_pairs(ws, ingest_ids),
        ingest_ids,
        splits,
        lengths,
        reference,
        _max_prompt_length(manifest) or _max_prompt_length(pairs_manifest),
        Path(tokenizer) if tokenizer else None,
        notes,
    )


# --- the report -------------------------------------------------------------------------------------


def comparison_of(run: RunData) -> list[str]:
    """The runs of the chain's comparison `run` is part of, in the chain's order (so the report of
    each of them is the same page); just `run` when it is part of none."""
    listed = [r for r in run.chain.get("runs") or [] if isinstance(r, str)]
    return listed if run.run_id in listed and len(listed) > 1 else [run.run_id]


def check_shared_dataset(ws: Workspace, runs: list[RunData]) -> None:
    """Runs side by side must have trained on the same pairs (one tokenised dataset version)."""
    missing = [r.run_id for r in runs if not r.dataset_id]
    if missing and len(runs) > 1:
        raise ComparisonError(f"run(s) {', '.join(missing)} name no dataset version: nothing to compare on")
    by_dataset: dict[str, list[str]] = {}
    for run in runs:
        if run.dataset_id:
            by_dataset.setdefault(_tokenized_dataset(ws, run.dataset_id), []).append(run.run_id)
    if len(by_dataset) > 1:
        groups = "; ".join(f"{', '.join(ids)} on {dataset}" for dataset, ids in by_dataset.items())
        raise ComparisonError(
            f"these runs share no dataset ({groups}): a comparison needs runs trained on the same pairs"
        )


def _lineage(ws: Workspace, run_id: str, notes: list[str]) -> dict[str, Any] | None:
    try:
        from pipeline.lineage import ancestry

        return ancestry(ws, run_id)
    except (KeyError, ImportError) as error:
        notes.append(f"no lineage of {run_id}: {error}")
        return None


def gather(ws: Workspace, run_ids: str | list[str], compare: bool = True) -> ReportData:
    """Everything the report of `run_ids` shows. One run that is part of a chain's comparison (`dpop run
    --losses`) brings the other runs of it along, unless `compare` is False."""
    ids = [run_ids] if isinstance(run_ids, str) else list(dict.fromkeys(run_ids))
    if not ids:
        raise ValueError("no run to report on")
    runs = [gather_run(ws, run_id) for run_id in ids]
    if compare and len(runs) == 1:
        found = {runs[0].run_id: runs[0]}
        listed = [r for r in comparison_of(runs[0]) if ws.run_dir(r).is_dir()]
        runs = [found.get(r) or gather_run(ws, r) for r in listed]
    check_shared_dataset(ws, runs)
    _name_runs(runs)
    notes: list[str] = []
    if any(r.chain.get("smoke_test") for r in runs):
        notes.append(f"SMOKE TEST: {next(r.chain['smoke_test'] for r in runs if r.chain.get('smoke_test'))}")
    lineage = [tree for r in runs if (tree := _lineage(ws, r.run_id, notes)) is not None]
    dataset = gather_dataset(ws, next((r.dataset_id for r in runs if r.dataset_id), None))
    cmp_id = comparison_id([r.run_id for r in runs]) if len(runs) > 1 else None
    from pipeline.report.selection import selections  # here: it imports modules that import this one

    return ReportData(runs, dataset, lineage, cmp_id, notes, selections(ws, runs))


def _name_runs(runs: list[RunData]) -> None:
    """Labels that tell the runs apart: the loss, and the run id where two runs share a loss."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.label] = counts.get(run.label, 0) + 1
    for run in runs:
        if counts[run.label] > 1:
            run.label = f"{run.label} ({run.run_id[:12]})"
