"""The workspace folder: where every artefact of a project lives, and its layout.

<root>/catalog.duckdb           artefacts and lineage edges (pipeline.catalog)
<root>/sources/<ingest_id>/     per source file version and ingest options: pairs.parquet, rejections.parquet, ingest.json
<root>/datasets/<dataset_id>/   manifest.json, pairs.parquet, rejections.parquet, {train,eval}-NNNNN.arrow
<root>/models/<name>/           base / reference models made here (tiny demo model, SFT warm-up)
<root>/runs/<run_id>/           training runs: model/, checkpoints, metrics.jsonl, run.json
<root>/evals/<eval_id>/         preference evaluations of a model against its reference: pairs.parquet, metrics.parquet
<root>/lineage/events.jsonl     OpenLineage run events
<root>/cache/                   Prefect task results (kept inside the workspace)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKSPACE = "dpop-workspace"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None) -> Workspace:
        """Open (creating if needed) a workspace; default: $DPOP_WORKSPACE or ./dpop-workspace."""
        path = Path(root or os.environ.get("DPOP_WORKSPACE", DEFAULT_WORKSPACE)).expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"workspace {path} exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def sources_dir(self) -> Path:
        return self.root / "sources"

    def source_dir(self, sha256: str) -> Path:
        return self.sources_dir / sha256

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.datasets_dir / dataset_id

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    @property
    def evals_dir(self) -> Path:
        return self.root / "evals"

    def eval_dir(self, eval_id: str) -> Path:
        return self.evals_dir / eval_id

    @property
    def lineage_events_path(self) -> Path:
        return self.root / "lineage" / "events.jsonl"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"
