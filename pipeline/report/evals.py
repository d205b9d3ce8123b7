"""A run's preference evaluation as the report reads it: `<ws>/evals/<eval_id>/{pairs,metrics}.parquet`.

The evaluation stage (`dpop/evaluate.py`, contracts `pair_eval` and `eval_metric`) records the model it
evaluated as an input with relation `evaluated_model`; a run's model is `model-<run id>`. When a model
was evaluated more than once, the evaluation of the eval split finished last is the one shown.
Only the files are read here (no torch): the report works on any workspace that holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.stage import StageRecord, read_record
from pipeline.workspace import Workspace

# What the report reads of the per-pair table; the per-token column only for the inspector's pairs.
PAIR_COLUMNS = (
    "pair_id",
    "source",
    "source_row",
    "edit_ratio",
    "edit_bucket",
    "chosen_tokens",
    "common_prefix_len",
    "delta_chosen_logps",
    "reward_margin",
    "correct",
    "delta_pre_edit",
    "delta_post_edit",
)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run's model: its id, folder, record and aggregated metrics (contract
    eval_metric); `pairs` reads the per-pair table lazily (it can hold a million rows)."""

    eval_id: str
    folder: Path
    record: StageRecord | None
    metrics: pl.DataFrame

    @property
    def pairs_path(self) -> Path:
        return self.folder / "pairs.parquet"

    def pairs(self, columns: tuple[str, ...] = PAIR_COLUMNS) -> pl.LazyFrame:
        """The per-pair table (the columns the file has of `columns`)."""
        frame = pl.scan_parquet(self.pairs_path)
        present = set(frame.collect_schema().names())
        return frame.select([c for c in columns if c in present])

    def overall(self, metric: str) -> tuple[float | None, int]:
        """(value, pairs) of a metric over the whole eval set; (None, 0) when absent."""
        return self.group_value(metric, "all", "all")

    def group_value(self, metric: str, group_kind: str, group: str) -> tuple[float | None, int]:
        rows = self.metrics.filter(
            (pl.col("metric") == metric) & (pl.col("group_kind") == group_kind) & (pl.col("group") == group)
        )
        if rows.is_empty():
            return None, 0
        value, n = rows.row(0, named=True)["value"], rows.row(0, named=True)["n"]
        return (None if value is None else float(value)), int(n or 0)

    def groups(self, group_kind: str) -> list[str]:
        """The groups of a kind, in a stable order (buckets q1..q4 sort by their label)."""
        rows = self.metrics.filter(pl.col("group_kind") == group_kind)
        return sorted(rows.get_column("group").unique().to_list())


def _evaluates(record: StageRecord, model_id: str) -> bool:
    """A preference evaluation (per-pair table, contract pair_eval) of this model; other evaluations of
    it (generation, exact match) share the folder layout but not the per-pair table."""
    preference = any(a.kind == "pair_eval" for a in record.outputs) or record.stage == "eval"
    return preference and any(
        i.relation == "evaluated_model" and i.artifact.id == model_id for i in record.inputs
    )


def _model_in_files(folder: Path, model_id: str) -> bool:
    """For a folder without a readable record: the model id every row of metrics.parquet carries."""
    try:
        models = pl.scan_parquet(folder / "metrics.parquet").select("model_id").unique().collect()
    except (OSError, pl.exceptions.PolarsError):
        return False
    return models.get_column("model_id").to_list() == [model_id]


def find_evaluation(ws: Workspace, run_id: str) -> Evaluation | None:
    """The evaluation of the model run `run_id` trained, or None when it has none (yet)."""
    evals_dir = ws.root / "evals"
    model_id = f"model-{run_id}"
    found: list[tuple[str, Path, StageRecord | None]] = []
    for folder in sorted(evals_dir.glob("*")) if evals_dir.is_dir() else []:
        if not (folder / "pairs.parquet").is_file() or folder.name.startswith(".tmp-"):
            continue
        record = read_record(folder)
        if (record is not None and _evaluates(record, model_id)) or (
            record is None and _model_in_files(folder, model_id)
        ):
            split = (record.summary.get("split") or record.config.get("split") if record else None) or "eval"
            found.append((f"{int(split == 'eval')}{record.finished_at if record else ''}", folder, record))
    if not found:
        return None
    _, folder, record = max(found, key=lambda item: item[0])
    metrics = pl.read_parquet(folder / "metrics.parquet")
    if "kind" in metrics.columns:
        metrics = metrics.filter(pl.col("kind") == "preference")
    return Evaluation(record.id if record else folder.name, folder, record, metrics)
