"""Prefect artifacts of a data-to-model run, read from the stage records: the funnel as a table, a
markdown summary (with the gate's decision), and the gate's checks as a table. Keys are stable
(`dpop-funnel`, `dpop-summary`, `dpop-gate`), so the Prefect UI shows each run's artifact as a new
version of the same one and funnels and gate decisions compare across refreshes."""

from __future__ import annotations

from typing import Any

from flows.chain import ChainResult
from pipeline.funnel import read_funnel
from pipeline.sql import query

FUNNEL_KEY, SUMMARY_KEY, GATE_KEY = "dpop-funnel", "dpop-summary", "dpop-gate"
BUCKETS, BAR_WIDTH = 10, 40


def funnel_rows(result: ChainResult) -> list[dict[str, Any]]:
    """Rows in, dropped and out per source file at ingest, then per curation and tokenisation step."""
    rows = []
    for r in result.ingests:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(r.rejected_by_reason.items()))
        read, rejected = r.counts.get("rows_read", 0), r.counts.get("rows_rejected", 0)
        step = r.summary.get("source_name") or r.summary.get("source_uri")
        rows.append(
            {
                "stage": "ingest",
                "step": step,
                "rows_in": read,
                "dropped": rejected,
                "rows_out": read - rejected,
                "reason": reasons,
            }
        )
    for s in read_funnel(result.build.summary.get("funnel")):
        rows.append({"stage": "build", **s.as_dict(), "rows_out": s.rows_out})
    return rows


def edit_ratio_histogram(result: ChainResult) -> list[tuple[float, int]]:
    """(bucket lower bound, pairs) of the kept pairs' edit ratios, in tenths."""
    frame = query(
        result.ws,
        f"SELECT least(floor(edit_ratio * {BUCKETS}), {BUCKETS - 1}) AS bucket, count(*) FROM pairs_history "
        f"WHERE dataset_id = '{result.build.id}' AND edit_ratio IS NOT NULL GROUP BY 1",
    )
    counts = {int(b): int(n) for b, n in frame.iter_rows()}
    return [(b / BUCKETS, counts.get(b, 0)) for b in range(BUCKETS)]


def summary_markdown(result: ChainResult, summary: dict[str, Any]) -> str:
    s = summary
    lines = [
        f"# dpop data-to-model run: {s['status']}",
        *([f"\n**{s['smoke_test']}**"] if s.get("smoke_test") else []),
        "\n| | |\n|---|---|",
        f"| source files | {s['files']} ({s['files_ingested']} ingested, {s['files_cached']} unchanged) |",
        f"| rows read / kept at ingest | {s['rows_read']} / {s['rows_kept_ingest']} |",
        f"| pairs curated in / kept | {s['pairs_in']} / {s['pairs_kept']} |",
        f"| train / eval rows | {s['train_rows']} / {s['eval_rows']} |",
        f"| dataset version | `{s['dataset_id']}` |",
        *[f"| run ({run['loss']}) | `{run['run_id']}`: `{run['model_dir']}` |" for run in s["runs"]],
        "\n## Edit ratio of kept pairs (chosen vs rejected)\n\n```",
    ]
    histogram = edit_ratio_histogram(result)
    peak = max(n for _, n in histogram) or 1
    lines += [
        f"{low:.1f}-{low + 1 / BUCKETS:.1f} | {'#' * round(BAR_WIDTH * n / peak)} {n}" for low, n in histogram
    ]
    lines += ["```\n\n## Training\n\n| run | metric | value |\n|---|---|---|"]
    for run in s["runs"]:
        lines += [
            f"| {run['run_id']} | {k} | {v:.4g} |"
            for k, v in sorted(run["final_metrics"].items())
            if isinstance(v, int | float)
        ]
    lines += gate_markdown(s.get("gate"))
    return "\n".join(lines) + "\n"


def gate_markdown(gate: dict[str, Any] | None) -> list[str]:
    """The gate's decision: outcome and reason first (a refusal is a normal outcome), then the checks."""
    if not gate:
        return []
    lines = [
        f"\n## Gate: {gate['outcome']}\n",
        f"**{gate['reason']}**\n",
        f"| | |\n|---|---|\n| alias | {gate['alias']} |",
        f"| before | `{gate.get('champion_before')}` |\n| after | `{gate.get('champion_after')}` |",
    ]
    if gate.get("checks"):
        lines += ["\n| candidate | rule | metric | eval set | value | champion | threshold | passed |"]
        lines += ["|---|---|---|---|---|---|---|---|"]
        lines += [
            f"| {c['model_id']} | {c['rule']} | {c['metric']} | {c['eval_set_id']} | {_number(c['value'])} "
            f"| {_number(c['champion_value'])} | {_number(c['threshold'])} | {c['passed']} |"
            for c in gate["checks"]
        ]
    return lines


def gate_rows(gate: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The gate's checks, one row each (the `dpop-gate` table artifact)."""
    if not gate:
        return []
    keys = ("model_id", "rule", "metric", "eval_set_id", "value", "champion_value", "threshold", "passed")
    return [{"outcome": gate["outcome"], **{k: c.get(k) for k in keys}} for c in gate.get("checks") or []]


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.4g}"


def publish(result: ChainResult, summary: dict[str, Any]) -> None:
    """The funnel table and markdown summary artifacts of the current flow run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_table_artifact(
        funnel_rows(result), key=FUNNEL_KEY, description=f"Filter funnel of {result.build.id}"
    )
    create_markdown_artifact(
        summary_markdown(result, summary), key=SUMMARY_KEY, description="Counts, edit ratios, training, gate"
    )
    gate = summary.get("gate")
    if gate:
        create_table_artifact(
            gate_rows(gate) or [{"outcome": gate["outcome"], "reason": gate["reason"]}],
            key=GATE_KEY,
            description=f"Gate: {gate['outcome']}: {gate['reason']}"[:1000],
        )
