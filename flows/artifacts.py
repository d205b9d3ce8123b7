"""Prefect artifacts for a data-to-model run: the filter funnel as a table and a markdown summary.

Keys are stable (`dpop-funnel`, `dpop-summary`), so the Prefect UI shows each run's artifact as a
new version of the same artifact and the funnel can be compared across refreshes.
"""

from __future__ import annotations

from typing import Any

from pipeline.sql import query
from pipeline.workspace import Workspace

FUNNEL_KEY = "dpop-funnel"
SUMMARY_KEY = "dpop-summary"
HISTOGRAM_BUCKETS = 10
BAR_WIDTH = 40


def funnel_rows(ingests: list[dict[str, Any]], build: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows in, dropped and out at every step: per-file ingest, then each curation/tokenisation step."""
    rows = []
    for item in ingests:
        rows.append(
            {
                "stage": "ingest",
                "step": item.get("source_name") or item["source_uri"],
                "rows_in": item["rows_read"],
                "dropped": item["rows_rejected"],
                "rows_out": item["rows_read"] - item["rows_rejected"],
                "reason": ", ".join(
                    f"{k}={v}" for k, v in sorted(item.get("rejected_by_reason", {}).items())
                ),
            }
        )
    for step in build.get("funnel") or []:
        if isinstance(step, dict):
            name, rows_in, dropped, reason = (
                step.get("step"),
                step.get("rows_in"),
                step.get("dropped"),
                step.get("reason"),
            )
        else:
            name, rows_in, dropped, reason = step
        rows.append(
            {
                "stage": "build",
                "step": name,
                "rows_in": rows_in,
                "dropped": dropped,
                "rows_out": (rows_in or 0) - (dropped or 0),
                "reason": reason or "",
            }
        )
    return rows


def edit_ratio_histogram(ws: Workspace, dataset_id: str) -> list[tuple[float, int]]:
    """(bucket lower bound, pairs) of the kept pairs' edit ratios, in tenths."""
    safe = dataset_id.replace("'", "''")
    frame = query(
        ws,
        f"SELECT least(floor(edit_ratio * {HISTOGRAM_BUCKETS}), {HISTOGRAM_BUCKETS - 1}) AS bucket, count(*) AS pairs "
        f"FROM pairs_history WHERE dataset_id = '{safe}' AND edit_ratio IS NOT NULL GROUP BY 1 ORDER BY 1",
    )
    counts = {int(b): int(n) for b, n in frame.iter_rows()}
    return [(b / HISTOGRAM_BUCKETS, counts.get(b, 0)) for b in range(HISTOGRAM_BUCKETS)]


def summary_markdown(ws: Workspace, summary: dict[str, Any]) -> str:
    lines = [
        f"# dpop data-to-model run: {summary['status']}",
        "",
        "| | |",
        "|---|---|",
        f"| source files | {summary['files']} ({summary['files_ingested']} ingested, {summary['files_cached']} unchanged) |",
        f"| rows read / kept at ingest | {summary['rows_read']} / {summary['rows_kept_ingest']} |",
        f"| pairs curated in / kept | {summary['pairs_in']} / {summary['pairs_kept']} |",
        f"| train / eval rows | {summary['train_rows']} / {summary['eval_rows']} |",
        f"| dataset version | `{summary['dataset_id']}` |",
        f"| run | `{summary['run_id']}` |",
        f"| model | `{summary['model_dir']}` |",
        "",
        "## Edit ratio of kept pairs (chosen vs rejected)",
        "",
        "```",
    ]
    histogram = edit_ratio_histogram(ws, summary["tokenized_dataset_id"])
    peak = max((n for _, n in histogram), default=0) or 1
    for low, count in histogram:
        bar = "#" * round(BAR_WIDTH * count / peak)
        lines.append(f"{low:.1f}-{low + 1 / HISTOGRAM_BUCKETS:.1f} | {bar} {count}")
    lines += ["```", "", "## Training", ""]
    metrics = summary.get("final_metrics") or {}
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        for name in sorted(metrics):
            value = metrics[name]
            shown = f"{value:.4g}" if isinstance(value, int | float) else str(value)
            lines.append(f"| {name} | {shown} |")
    else:
        lines.append("no metrics recorded")
    return "\n".join(lines) + "\n"


def publish(
    ws: Workspace, ingests: list[dict[str, Any]], build: dict[str, Any], summary: dict[str, Any]
) -> None:
    """Create the funnel table and markdown summary artifacts for the current flow run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_table_artifact(
        funnel_rows(ingests, build),
        key=FUNNEL_KEY,
        description=f"Filter funnel of dataset {build['dataset_id']}",
    )
    create_markdown_artifact(
        summary_markdown(ws, summary), key=SUMMARY_KEY, description="Counts, edit ratios and training summary"
    )
