"""The report's HTML: one self-contained page (inline CSS, PNGs beside it, no scripts, no network)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from pipeline.report.data import ReportData

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0; color: #222; background: #f6f7f9; }
header { background: #1f2937; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 0; color: #cbd5e1; font-size: 13px; }
main { padding: 12px 32px 40px; max-width: 1500px; }
section { background: #fff; border-radius: 8px; padding: 14px 20px; margin: 16px 0; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
h2 { font-size: 17px; margin: 4px 0 10px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border-radius: 8px; padding: 10px 16px; min-width: 150px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.card .value { font-size: 20px; font-weight: 600; }
.card .label { font-size: 12px; color: #666; }
.good { color: #15803d; } .bad { color: #b91c1c; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border-bottom: 1px solid #e5e7eb; padding: 4px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.plot { max-width: 100%; border: 1px solid #e5e7eb; border-radius: 4px; }
code { background: #f1f5f9; padding: 1px 4px; border-radius: 3px; font-size: 12px; }
ul.tree { list-style: none; padding-left: 18px; border-left: 1px dashed #cbd5e1; margin: 4px 0; }
ul.tree li { margin: 3px 0; font-size: 13px; }
.kind { display: inline-block; min-width: 78px; font-weight: 600; color: #1d4ed8; }
.note { color: #92400e; font-size: 13px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return _e(value)


def last_metrics(metrics: list[dict[str, Any]], split: str) -> dict[str, Any]:
    """The last logged value of every metric of a split."""
    final: dict[str, Any] = {}
    for event in metrics:
        if event.get("split", "train") == split:
            final.update(
                {k: v for k, v in event.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            )
    return final


def _cards(data: ReportData) -> str:
    evaluation = last_metrics(data.metrics, "eval") or last_metrics(data.metrics, "train")
    reference = evaluation.get("ref_logps/chosen", data.reference_chosen_logps)
    cards = []
    if "rewards/accuracies" in evaluation:
        cards.append(("reward accuracy (eval)", f"{evaluation['rewards/accuracies']:.2f}", ""))
    if "rewards/margins" in evaluation:
        cards.append(("reward margin (eval)", f"{evaluation['rewards/margins']:.3f}", ""))
    if "logps/chosen" in evaluation:
        delta = None if reference is None else evaluation["logps/chosen"] - reference
        tone = "" if delta is None else ("good" if delta >= 0 else "bad")
        text = f"{evaluation['logps/chosen']:.2f}" + ("" if delta is None else f" ({delta:+.2f} vs ref)")
        cards.append(("log p(chosen) (eval)", text, tone))
    if data.manifest.get("splits"):
        splits = data.manifest["splits"]
        cards.append(
            (
                "pairs train / eval",
                f"{splits.get('train', {}).get('rows', 0):,} / {splits.get('eval', {}).get('rows', 0):,}",
                "",
            )
        )
    steps = [m.get("step") for m in data.metrics if isinstance(m.get("step"), int)]
    if steps:
        cards.append(("steps", f"{max(steps):,}", ""))
    return (
        "<div class='cards'>"
        + "".join(
            f"<div class='card'><div class='value {tone}'>{_e(value)}</div><div class='label'>{_e(label)}</div></div>"
            for label, value, tone in cards
        )
        + "</div>"
    )


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td class='num'>{_number(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _metrics_table(metrics: list[dict[str, Any]]) -> str:
    train, evaluation = last_metrics(metrics, "train"), last_metrics(metrics, "eval")
    names = [n for n in sorted(set(train) | set(evaluation)) if n not in ("step", "epoch")]
    if not names:
        return "<p class='note'>no metrics logged</p>"
    rows = "".join(
        f"<tr><td><code>{_e(n)}</code></td><td class='num'>{_number(train.get(n, ''))}</td>"
        f"<td class='num'>{_number(evaluation.get(n, ''))}</td></tr>"
        for n in names
    )
    return f"<table><tr><th>metric (last value)</th><th>train</th><th>eval</th></tr>{rows}</table>"


def _funnel_table(funnel: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{_e(r['step'])}</td><td class='num'>{r['rows_in']:,}</td><td class='num'>{r['dropped']:,}</td>"
        f"<td>{_e(r['reason'])}</td></tr>"
        for r in funnel
    )
    return f"<table><tr><th>step</th><th>rows in</th><th>dropped</th><th>reason</th></tr>{rows}</table>"


def _lineage(node: dict[str, Any], depth: int = 0) -> str:
    details = []
    if node.get("rows") is not None:
        details.append(f"{node['rows']:,} rows")
    if node.get("relation"):
        details.append(f"via <i>{_e(node['relation'])}</i>")
    if node.get("source_uri"):
        details.append(f"<code>{_e(node['source_uri'])}</code>")
    for key in ("rows_read", "rows_kept", "rows_rejected", "train_rows", "eval_rows", "format"):
        if node.get(key) is not None:
            details.append(f"{key.replace('_', ' ')} {_number(node[key])}")
    rejected = {
        f"{stage}/{reason}": n
        for stage, reasons in (node.get("rejections") or {}).items()
        for reason, n in reasons.items()
    }
    if rejected:
        details.append("rejected: " + ", ".join(f"{_e(k)} {n:,}" for k, n in sorted(rejected.items())))
    if node.get("missing"):
        details.append("<span class='note'>not in catalog</span>")
    children = "".join(_lineage(parent, depth + 1) for parent in node.get("parents", []))
    item = (
        f"<li><span class='kind'>{_e(node.get('kind') or '?')}</span> <code>{_e(node['id'])}</code> "
        f"{' · '.join(details)}{f'<ul class=tree>{children}</ul>' if children else ''}</li>"
    )
    return f"<ul class='tree'>{item}</ul>" if depth == 0 else item


def _image(images: dict[str, Path | None], key: str, alt: str, missing: str) -> str:
    path = images.get(key)
    if path is None:
        return f"<p class='note'>{_e(missing)}</p>"
    return f"<img class='plot' id='plot-{key}' src='{_e(path.name)}' alt='{_e(alt)}'>"


def render(data: ReportData, images: dict[str, Path | None]) -> str:
    run = data.run
    config = run.get("config") or run.get("hyperparameters") or {}
    model_dir = run.get("model_dir") or str(data.run_dir / "model")
    about = [
        ("run", data.run_id),
        ("dataset version", data.dataset_id or "?"),
        (
            "base model",
            run.get("base_model", "?")
            if not isinstance(run.get("base_model"), dict)
            else run["base_model"].get("path", "?"),
        ),
        (
            "reference model",
            run.get("reference_model", "?")
            if not isinstance(run.get("reference_model"), dict)
            else run["reference_model"].get("path", "?"),
        ),
        ("model", model_dir),
        ("code version", run.get("code_version", "?")),
    ]
    config_rows = (
        [
            (k, v if isinstance(v, int | float | str) else json.dumps(v))
            for k, v in sorted(config.items())
            if v is not None
        ]
        if isinstance(config, dict)
        else []
    )
    notes = "".join(f"<p class='note'>{_e(n)}</p>" for n in data.notes)
    lineage = (
        _lineage(data.lineage) if data.lineage else "<p class='note'>no lineage recorded in the catalog</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dpop report · {_e(data.run_id)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<header><h1>dpop run {_e(data.run_id)}</h1>
<p>dataset {_e(data.dataset_id or "?")} · loss {_e(config.get("loss", run.get("loss", "dpop")) if isinstance(config, dict) else "dpop")}
 · β {_e(config.get("beta", "?") if isinstance(config, dict) else "?")} · λ {_e(config.get("penalty_lambda", config.get("lambda", "?")) if isinstance(config, dict) else "?")}</p></header>
<main>
{_cards(data)}
{notes}
<section id="training"><h2>Training and evaluation</h2>
<p>DPOP keeps <code>logps/chosen</code> at or above the reference (the dashed zero line) while the reward margin and accuracy rise;
plain DPO on low-edit pairs lets it fall, mostly on the tokens after the first edit (<code>logps/chosen_post_edit</code>).</p>
{_image(images, "training", "training and evaluation curves", "no metrics logged yet")}
{_metrics_table(data.metrics)}</section>
<section id="funnel"><h2>Curation funnel</h2>
{_image(images, "funnel", "curation funnel", "the dataset manifest has no funnel")}
{_funnel_table(data.funnel) if data.funnel else ""}</section>
<section id="edit-ratio"><h2>Edit ratio per source</h2>
<p>Low edit ratios (chosen and rejected differ by a few characters) are where DPO fails and DPOP helps.</p>
{_image(images, "edit_ratio", "edit ratio histograms per source", "no scored pairs found for this dataset")}</section>
<section id="lengths"><h2>Token lengths</h2>
{_image(images, "token_lengths", "token length distributions", "no shards found for this dataset")}</section>
<section id="lineage"><h2>Lineage</h2>
<p>From this run back to the source files it was trained on (catalog edges, with rows and rejections per stage).</p>
{lineage}</section>
<section id="about"><h2>Run</h2>{_table(about)}
{("<h2>Configuration</h2>" + _table(config_rows)) if config_rows else ""}</section>
</main></body></html>
"""
