"""The report of one run or of several side by side: an HTML page, PNG figures and the pair inspector.

    build_report(workspace, run_ids, out_dir=None, compare=True) -> Path to index.html

One run that is part of a chain's comparison (`dpop run --losses dpop:50,dpo`) is reported with the other
runs of that comparison, so each of their reports is the same comparison; `compare=False` shows it
alone. Runs must share a dataset (the same pairs), else `ComparisonError`. The default folder is the
run's `<ws>/runs/<run_id>/report/` for one run given, `<ws>/reports/<comparison id>/` for several.

Modules: `data` (what is read), `evals` (a run's evaluation), `compare` (the numbers), `text` (the
sentences, computed), `plots` (PNG), `lineage_graph` (SVG), `inspector` (the pair page), `page` (HTML).
The folder is self-contained (relative links, no network; the only script is the inspector's filter),
written to a temporary sibling and renamed, so it can be copied, zipped or served as it is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pipeline.atomic import atomic_dir
from pipeline.report import inspector, lineage_graph, plots, selection
from pipeline.report.compare import RunSummary, group_rows, summarise
from pipeline.report.data import ComparisonError, ReportData, comparison_id, gather
from pipeline.report.page import render
from pipeline.report.text import findings, run_story
from pipeline.workspace import Workspace

__all__ = ["ComparisonError", "ReportData", "build_report", "default_folder", "gather"]

INSPECTOR_PAGE = "inspector.html"


def _by_source(frame, column: str = "edit_ratio") -> dict[str, list[float]]:
    if frame is None or column not in frame.columns or "source" not in frame.columns:
        return {}
    grouped: dict[str, list[float]] = {}
    for source, values in frame.select("source", column).drop_nulls().group_by("source", maintain_order=True):
        grouped[source[0]] = values.get_column(column).to_list()
    return grouped


def default_folder(ws: Workspace, run_ids: Sequence[str]) -> Path:
    """`runs/<id>/report` for one run given, `reports/<comparison id>` for several."""
    if len(run_ids) == 1:
        return ws.run_dir(run_ids[0]) / "report"
    return ws.root / "reports" / comparison_id(list(run_ids))


def _images(data: ReportData, summaries: list[RunSummary], groups: dict, tmp: Path) -> dict[str, Path | None]:
    colours = plots.run_colours([(s.is_dpo, s.penalty_lambda) for s in summaries])
    curves = [plots.Curve(r.label, c, r.metrics) for r, c in zip(data.runs, colours, strict=True)]
    finals = [{"pre_edit_delta": s.pre_edit_delta, "post_edit_delta": s.post_edit_delta} for s in summaries]
    dataset = data.dataset
    return {
        "headline": plots.headline(curves, finals, tmp / "headline.png"),
        "training": plots.training_curves(curves, tmp / "training.png"),
        "groups": plots.groups(groups, curves, [r.run_id for r in data.runs], tmp / "groups.png"),
        "funnel": plots.funnel(dataset.funnel, tmp / "funnel.png"),
        "edit_ratio": plots.edit_ratios(
            _by_source(dataset.pairs), _by_source(dataset.ingested), tmp / "edit_ratio.png"
        ),
        "token_lengths": plots.token_lengths(
            dataset.token_lengths, tmp / "token_lengths.png", dataset.max_prompt_length
        ),
        **selection.images(data.selections, tmp),
    }


def build_report(
    workspace: Workspace | str | os.PathLike[str],
    run_ids: str | Sequence[str],
    out_dir: str | os.PathLike[str] | None = None,
    compare: bool = True,
) -> Path:
    """Write the report of `run_ids` (one id or several) and return the path of its index.html."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    given = [run_ids] if isinstance(run_ids, str) else list(run_ids)
    data = gather(ws, given, compare=compare)
    summaries = [summarise(run, data.dataset) for run in data.runs]
    headline, warnings = findings(summaries, data.runs, data.dataset)
    text = {"headline": headline, "warnings": warnings, "story": [s for x in summaries for s in run_story(x)]}
    groups = {kind: group_rows(data.runs, kind) for kind in ("edit_bucket", "source")}
    final = Path(out_dir) if out_dir else default_folder(ws, given)
    with atomic_dir(final) as tmp:
        images = _images(data, summaries, groups, tmp)
        title = f"Pair inspector · {' vs '.join(r.label for r in data.runs)}"
        _, sample = inspector.write(
            tmp / INSPECTOR_PAGE, data.dataset, data.runs, ws.root, title, "index.html"
        )
        about = (
            f"{len(sample.pair_ids):,} pairs ({len(sample.lowest):,} of lowest edit ratio, {len(sample.drops):,} "
            f"whose log p(chosen) fell most) and {len(sample.rejections):,} rejections, with their differences "
            "and, per run, the change of log p along the chosen answer."
        )
        svg = lineage_graph.svg(data.lineage)
        page = render(data, summaries, text, groups, images, svg, (INSPECTOR_PAGE, about))
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return final / "index.html"
