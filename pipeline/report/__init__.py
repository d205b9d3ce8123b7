"""A run's report: one HTML page with PNG figures in `<ws>/runs/<run_id>/report/`.

    build_report(workspace, run_id, out_dir=None) -> Path to index.html

The folder is self-contained (page + images, relative links, no scripts or network), written to a
temporary sibling and renamed, so it can be copied, zipped or served as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.atomic import atomic_dir
from pipeline.report import plots
from pipeline.report.data import ReportData, gather
from pipeline.report.page import render
from pipeline.workspace import Workspace

__all__ = ["ReportData", "build_report", "gather"]


def _by_source(frame, column: str = "edit_ratio") -> dict[str, list[float]]:
    if frame is None or column not in frame.columns or "source" not in frame.columns:
        return {}
    grouped: dict[str, list[float]] = {}
    for source, value in frame.select("source", column).drop_nulls().iter_rows():
        grouped.setdefault(source, []).append(value)
    return grouped


def build_report(
    workspace: Workspace | str | os.PathLike[str], run_id: str, out_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Write the report of `run_id` and return the path of its index.html."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    data = gather(ws, run_id)
    final = Path(out_dir) if out_dir else ws.run_dir(run_id) / "report"
    with atomic_dir(final) as tmp:
        images = {
            "training": plots.training_curves(
                data.metrics, data.reference_chosen_logps, tmp / "training.png"
            ),
            "funnel": plots.funnel(data.funnel, tmp / "funnel.png"),
            "edit_ratio": plots.edit_ratios(
                _by_source(data.pairs), _by_source(data.ingested), tmp / "edit_ratio.png"
            ),
            "token_lengths": plots.token_lengths(data.token_lengths, tmp / "token_lengths.png"),
        }
        (tmp / "index.html").write_text(render(data, images), encoding="utf-8")
    return final / "index.html"
