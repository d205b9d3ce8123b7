"""Gather what a run's report shows from the workspace: run record, metrics, dataset, pairs, lineage.

Every piece is optional on disk (a run still training has no final metrics; an older dataset may lack
pairs.parquet), so each loader returns an empty value rather than failing, and the page says what is
missing. Only a run folder that does not exist at all is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.compute as pc

from pipeline.catalog import Catalog
from pipeline.funnel import read_funnel
from pipeline.shards import ShardError, load_manifest, open_split
from pipeline.workspace import Workspace


@dataclass
class ReportData:
    run_id: str
    run_dir: Path
    run: dict[str, Any]
    metrics: list[dict[str, Any]]
    dataset_id: str | None
    manifest: dict[str, Any]
    funnel: list[dict[str, Any]]
    pairs: pl.DataFrame | None  # kept pairs (source, edit_ratio, split, ...) of the dataset
    ingested: pl.DataFrame | None  # all ingested pairs of the dataset's sources, scored (source, edit_ratio)
    token_lengths: dict[str, list[int]]  # prompt / chosen / rejected token counts over both splits
    reference_chosen_logps: float | None  # mean reference log p(chosen) on the eval split (else train)
    lineage: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl events; a torn last line (a run still writing) is skipped."""
    events = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def normalise_funnel(funnel: Any) -> list[dict[str, Any]]:
    """The manifest funnel as dicts {step, rows_in, dropped, reason} (read by `pipeline.funnel`)."""
    return [step.as_dict() for step in read_funnel(funnel)]


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


def _ingested_pairs(ws: Workspace, manifest: dict[str, Any], parents_of: str) -> pl.DataFrame | None:
    """All pairs read from the dataset's sources (before curation), with their edit ratios."""
    from pipeline.score import score_pairs

    ingest_ids = [
        p["id"].removeprefix("pairs-")
        for p in manifest.get("parents", [])
        if isinstance(p, dict) and str(p.get("id", "")).startswith("pairs-")
    ]
    if not ingest_ids:
        ingest_ids = [
            p.removeprefix("pairs-") for p, _ in Catalog(ws).parents(parents_of) if p.startswith("pairs-")
        ]
    frames = []
    for ingest_id in ingest_ids:
        path = ws.sources_dir / ingest_id / "pairs.parquet"
        if not path.is_file():
            continue
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "edit_ratio" not in table.column_names:
            if table.num_rows > 200_000:  # a report should not rescore a huge file; kept pairs suffice
                continue
            table = score_pairs(table)
        frames.append(pl.from_arrow(table.select(["source", "edit_ratio"])))
    return pl.concat(frames) if frames else None


def _token_lengths(ws: Workspace, dataset_id: str) -> tuple[dict[str, list[int]], float | None]:
    lengths: dict[str, list[int]] = {"prompt": [], "chosen": [], "rejected": []}
    reference: dict[str, float | None] = {}
    for split in ("train", "eval"):
        try:
            table = open_split(ws, dataset_id, split)
        except (ShardError, KeyError):
            continue
        for name in lengths:
            column = f"{name}_ids"
            if column in table.column_names:
                lengths[name] += pc.list_value_length(table.column(column)).to_pylist()
        if "ref_chosen_logps" in table.column_names and table.num_rows:
            reference[split] = pc.mean(table.column("ref_chosen_logps")).as_py()
    ref = reference.get("eval") if reference.get("eval") is not None else reference.get("train")
    return lengths, ref


def gather(ws: Workspace, run_id: str) -> ReportData:
    run_dir = ws.run_dir(run_id)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run {run_id!r} not found (no folder {run_dir})")
    run = _read_json(run_dir / "run.json")
    chain = _read_json(run_dir / "chain.json")  # written by the chain that ran it (flows/chain.py)
    notes = [f"SMOKE TEST: {chain['smoke_test']}"] if chain.get("smoke_test") else []
    if chain.get("comparison_id"):
        notes.append(f"comparison {chain['comparison_id']} of runs {', '.join(chain.get('runs', []))}")
    metrics = read_metrics(run_dir / "metrics.jsonl")
    if not metrics:
        notes.append(f"no metrics yet in {run_dir / 'metrics.jsonl'}")
    dataset_id = _run_dataset_id(ws, run_id, run)
    manifest: dict[str, Any] = {}
    pairs = ingested = None
    lengths: dict[str, list[int]] = {"prompt": [], "chosen": [], "rejected": []}
    reference = None
    if dataset_id:
        try:
            manifest = load_manifest(ws, dataset_id)
        except ShardError as error:
            notes.append(str(error))
        tokenized = _tokenized_dataset(ws, dataset_id)
        pairs_manifest = _read_json(ws.dataset_dir(tokenized) / "manifest.json") or manifest
        pairs_path = next(
            (
                ws.dataset_dir(d) / "pairs.parquet"
                for d in (dataset_id, tokenized)
                if (ws.dataset_dir(d) / "pairs.parquet").is_file()
            ),
            None,
        )
        if pairs_path is not None:
            pairs = pl.read_parquet(pairs_path)
        ingested = _ingested_pairs(ws, pairs_manifest, tokenized)
        lengths, reference = _token_lengths(ws, dataset_id)
        try:
            funnel = normalise_funnel(manifest.get("funnel") or pairs_manifest.get("funnel"))
        except ValueError as error:
            notes.append(f"the funnel of {dataset_id} is unreadable: {error}")
            funnel = []
    else:
        notes.append("the run names no dataset version (run.json or catalog)")
        funnel = []
    lineage = None
    try:
        from pipeline.lineage import ancestry

        lineage = ancestry(ws, run_id)
    except (KeyError, ImportError) as error:
        notes.append(f"no lineage: {error}")
    return ReportData(
        run_id,
        run_dir,
        run,
        metrics,
        dataset_id,
        manifest,
        funnel,
        pairs,
        ingested,
        lengths,
        reference,
        lineage,
        notes,
    )
