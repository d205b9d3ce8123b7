"""The report's HTML: one self-contained page (inline CSS and SVG, PNGs beside it, no scripts, no network),
with the pair inspector as a second page in the same folder."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.report.compare import GroupRow, RunSummary
from pipeline.report.data import ReportData, RunData
from pipeline.report.selection import section as selection_sections
from pipeline.report.text import Sentence

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0; color: #222; background: #f6f7f9; }
header { background: #1f2937; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 0; color: #cbd5e1; font-size: 13px; }
main { padding: 12px 32px 40px; max-width: 1500px; }
section { background: #fff; border-radius: 8px; padding: 14px 20px; margin: 16px 0; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
h2 { font-size: 17px; margin: 4px 0 10px; }
h3 { font-size: 14px; margin: 12px 0 6px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border-radius: 8px; padding: 10px 16px; min-width: 150px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.card .value { font-size: 20px; font-weight: 600; }
.card .label { font-size: 12px; color: #666; }
.good { color: #15803d; } .bad { color: #b91c1c; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
td, th { border-bottom: 1px solid #e5e7eb; padding: 4px 10px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.differs th, tr.differs td { background: #fffbeb; }
img.plot { max-width: 100%; border: 1px solid #e5e7eb; border-radius: 4px; }
code { background: #f1f5f9; padding: 1px 4px; border-radius: 3px; font-size: 12px; }
ul.findings { padding-left: 20px; margin: 6px 0 10px; } ul.findings li { margin: 4px 0; font-size: 14px; }
ul.warnings { padding-left: 20px; margin: 6px 0 10px; } ul.warnings li { margin: 4px 0; font-size: 13.5px; color: #92400e; }
ul.warnings li::marker { content: '⚠ '; }
.lineage-wrap { overflow-x: auto; }
.note { color: #92400e; font-size: 13px; }
.muted { color: #666; font-size: 12.5px; }
a.button { display: inline-block; background: #1d4ed8; color: #fff; padding: 6px 14px; border-radius: 6px; text-decoration: none; font-size: 14px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    if isinstance(value, bool):  # before int: True is an int
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if value is None:
        return "null"
    return _e(value)


def _signed(value: float | None, digits: int = 3, unit: str = "") -> str:
    if value is None:
        return "–"
    tone = "good" if value >= 0 else "bad"
    return f"<span class='{tone}'>{value:+.{digits}g}{unit}</span>"


def _plain(value: float | None, form: str = "{:.3g}") -> str:
    return "–" if value is None else form.format(value)


def _image(images: dict[str, Path | None], key: str, alt: str, missing: str) -> str:
    path = images.get(key)
    if path is None:
        return f"<p class='note'>{_e(missing)}</p>"
    return f"<img class='plot' id='plot-{key}' src='{_e(path.name)}' alt='{_e(alt)}'>"


def _sentences(items: Sequence[Sentence], css: str) -> str:
    return f"<ul class='{css}'>" + "".join(f"<li>{_e(s.text)}</li>" for s in items) + "</ul>" if items else ""


def _cards(data: ReportData, summaries: Sequence[RunSummary]) -> str:
    cards = []
    for s in summaries:
        if s.accuracy is not None:
            tone = "bad" if s.at_chance else ""
            cards.append((f"{s.label}: reward accuracy (eval)", f"{s.accuracy:.2f}", tone))
        if s.chosen_delta is not None:
            tone = "good" if s.chosen_delta >= 0 else "bad"
            cards.append((f"{s.label}: log p(chosen) vs reference", f"{s.chosen_delta:+.3g} nats", tone))
    splits = data.dataset.manifest.get("splits") or {}
    if splits:
        train, evaluation = (splits.get(k, {}).get("rows", 0) for k in ("train", "eval"))
        cards.append(("pairs train / eval", f"{train:,} / {evaluation:,}", ""))
    steps = [s.steps for s in summaries if s.steps]
    if steps:
        cards.append(("steps", " / ".join(f"{n:,}" for n in steps), ""))
    body = "".join(
        f"<div class='card'><div class='value {tone}'>{_e(value)}</div><div class='label'>{_e(label)}</div></div>"
        for label, value, tone in cards
    )
    return f"<div class='cards'>{body}</div>"


def _final_table(summaries: Sequence[RunSummary]) -> str:
    def interval(s: RunSummary) -> str:
        if s.accuracy is None:
            return "–"
        bounds = (
            f" [{s.accuracy_interval[0]:.2f}, {s.accuracy_interval[1]:.2f}]" if s.accuracy_interval else ""
        )
        return f"<span class='{'bad' if s.at_chance else ''}'>{s.accuracy:.3f}{bounds}</span>"

    def loss(s: RunSummary) -> str:
        if s.loss_first is None:
            return "–"
        return f"{s.loss_first:.3g} → {s.loss_last:.3g} (max {s.loss_max:.3g} at step {s.loss_max_step})"

    rows = [
        ("Δ log p(chosen) vs reference (nats per answer)", lambda s: _signed(s.chosen_delta)),
        ("Δ log p(rejected) vs reference (nats per answer)", lambda s: _signed(s.rejected_delta)),
        ("Δ log p per chosen token, before the first edit", lambda s: _signed(s.pre_edit_delta)),
        ("Δ log p per chosen token, from the first edit on", lambda s: _signed(s.post_edit_delta)),
        ("log p per chosen token before the first edit (trainer)", lambda s: _plain(s.pre_edit_logp)),
        ("log p per chosen token from the first edit on (trainer)", lambda s: _plain(s.post_edit_logp)),
        ("reward accuracy [95% interval]", interval),
        ("reward margin", lambda s: _plain(s.margin)),
        ("eval pairs with log p(chosen) below the reference", lambda s: _plain(s.below_reference, "{:.0%}")),
        ("DPOP penalty (trainer's last evaluation)", lambda s: _plain(s.penalty)),
        ("training loss: first → last", loss),
        ("steps", lambda s: _plain(s.steps, "{:,}")),
        ("eval numbers from", lambda s: _e(s.source)),
    ]
    head = "".join(f"<th>{_e(s.label)}</th>" for s in summaries)
    body = "".join(
        f"<tr><th>{_e(name)}</th>" + "".join(f"<td class='num'>{cell(s)}</td>" for s in summaries) + "</tr>"
        for name, cell in rows
    )
    return f"<table><tr><th>final value (eval split)</th>{head}</tr>{body}</table>"


def _group_table(kind: str, rows: Sequence[GroupRow], runs: Sequence[RunData]) -> str:
    evaluated = [r for r in runs if r.evaluation is not None]
    if not rows or not evaluated:
        return ""
    head = "".join(
        f"<th>{_e(r.label)}: accuracy</th><th>{_e(r.label)}: Δ log p(chosen)</th>" for r in evaluated
    )
    body = []
    for row in rows:
        cells = []
        for run in evaluated:
            accuracy, delta = row.values.get(run.run_id, (None, None))
            cells.append(
                f"<td class='num'>{_plain(accuracy, '{:.2f}')}</td><td class='num'>{_signed(delta)}</td>"
            )
        body.append(f"<tr><td>{_e(row.group)}</td><td class='num'>{row.n:,}</td>{''.join(cells)}</tr>")
    title = "edit-ratio bucket (quartiles of the eval pairs)" if kind == "edit_bucket" else "source"
    return f"<h3>Per {title}</h3><table><tr><th>{_e(kind.replace('_', ' '))}</th><th>pairs</th>{head}</tr>{''.join(body)}</table>"


def _funnel_table(funnel: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{_e(r['step'])}</td><td class='num'>{r['rows_in']:,}</td><td class='num'>{r['dropped']:,}</td>"
        f"<td>{_e(r['reason'])}</td></tr>"
        for r in funnel
    )
    return f"<table><tr><th>step</th><th>rows in</th><th>dropped</th><th>reason</th></tr>{rows}</table>"


def _path_of(value: Any) -> str:
    return value.get("path", "?") if isinstance(value, dict) else str(value or "?")


def _runs_table(runs: Sequence[RunData]) -> str:
    rows = [
        ("run", lambda r: f"<code>{_e(r.run_id)}</code>"),
        ("loss", lambda r: _e(json.dumps(r.loss, sort_keys=True))),
        ("dataset version", lambda r: _e(r.dataset_id or "?")),
        ("base model", lambda r: _e(_path_of(r.run.get("base_model")))),
        ("reference model", lambda r: _e(_path_of(r.run.get("reference_model")))),
        ("model", lambda r: _e(r.run.get("model_dir") or r.run_dir / "model")),
        ("evaluation", lambda r: _e(r.evaluation.eval_id if r.evaluation else "none")),
        ("code version", lambda r: _e(r.run.get("code_version", "?"))),
    ]
    head = "".join(f"<th>{_e(r.label)}</th>" for r in runs)
    body = "".join(
        f"<tr><th>{_e(name)}</th>" + "".join(f"<td>{cell(r)}</td>" for r in runs) + "</tr>"
        for name, cell in rows
    )
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _unused_marked(run: RunData) -> dict[str, Any]:
    """The run's config, with λ marked unused where the loss is not DPOP (the chain's `--losses` keeps
    the file's value in every run's config)."""
    config = dict(run.config)
    if run.loss.get("name", "dpop") != "dpop" and config.get("penalty_lambda") is not None:
        config["penalty_lambda"] = f"{config['penalty_lambda']:g} (unused by {run.loss.get('name')})"
    return config


def _config_table(runs: Sequence[RunData]) -> str:
    """Every config key with each run's value; keys whose values differ between runs first, marked."""
    configs = [r.config for r in runs]
    keys = sorted({k for c in configs for k, v in c.items() if v is not None})
    if not keys:
        return ""

    def cell(value: Any) -> str:
        return (
            _number(value)
            if isinstance(value, bool | int | float | str) or value is None
            else _e(json.dumps(value))
        )

    configs = [_unused_marked(r) for r in runs]
    differs = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    ordered = differs + [k for k in keys if k not in differs]
    body = "".join(
        f"<tr class='{'differs' if k in differs else ''}'><th>{_e(k)}</th>"
        + "".join(f"<td class='num'>{cell(c.get(k))}</td>" for c in configs)
        + "</tr>"
        for k in ordered
    )
    head = "".join(f"<th>{_e(r.label)}</th>" for r in runs)
    return f"<h2>Configuration</h2><table><tr><th>key</th>{head}</tr>{body}</table>"


def _title(data: ReportData) -> tuple[str, str]:
    runs = data.runs
    if len(runs) == 1:
        return f"dpop report · {runs[0].label}", f"run {runs[0].run_id}"
    return (
        f"dpop report · {' vs '.join(r.label for r in runs)}",
        f"comparison {data.comparison_id} of runs " + ", ".join(r.run_id for r in runs),
    )


# Long because it is the page's HTML template, section by section; each section's content is its own function.
def render(
    data: ReportData,
    summaries: Sequence[RunSummary],
    text: dict[str, list[Sentence]],
    groups: dict[str, list[GroupRow]],
    images: dict[str, Path | None],
    lineage_svg: str,
    inspector: tuple[str, str],
) -> str:
    """The page. `text`: headline, warnings and per-run sentences (`pipeline.report.text`); `inspector`:
    (file name, one line on what it holds)."""
    title, subtitle = _title(data)
    dataset = data.dataset
    config = data.run.config
    notes = "".join(
        f"<p class='note'>{_e(n)}</p>"
        for n in [*data.notes, *dataset.notes, *(n for r in data.runs for n in r.notes)]
    )
    lineage = (
        f"<div class='lineage-wrap'>{lineage_svg}</div>"
        if lineage_svg
        else "<p class='note'>no lineage recorded in the catalog</p>"
    )
    group_tables = "".join(_group_table(kind, rows, data.runs) for kind, rows in groups.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<header><h1>{_e(title)}</h1>
<p>{_e(subtitle)} · dataset {_e(dataset.dataset_id or "?")} · β {_e(config.get("beta", "?"))}</p></header>
<main>
{_cards(data, summaries)}
{notes}
<section id="findings"><h2>What the runs show</h2>
{_sentences(text["headline"], "findings")}
{_sentences(text["warnings"], "warnings")}
{_image(images, "headline", "log p(chosen) against the reference, per run", "no log-probs logged yet")}
</section>
<section id="training"><h2>Over training</h2>
{_sentences(text["story"], "findings")}
{_image(images, "training", "training and evaluation curves per run", "no metrics logged yet")}
</section>
<section id="final"><h2>Final values on the eval split</h2>
{_final_table(summaries)}</section>
<section id="groups"><h2>Per source and per edit-ratio bucket</h2>
<p class="muted">Which of your sources, and which edit ratios, lose log p(chosen) and which are ranked right: from each run's
evaluation on the eval pairs (buckets are quartiles of the eval pairs' edit ratios).</p>
{_image(images, "groups", "accuracy and log p(chosen) change per source and edit bucket", "no evaluation with per-source and per-bucket metrics for these runs")}
{group_tables}</section>
<section id="inspector"><h2>Pair inspector</h2>
<p>{_e(inspector[1])}</p>
<p><a class="button" href="{_e(inspector[0])}">open the pair inspector</a></p></section>
<section id="funnel"><h2>Curation funnel</h2>
{_image(images, "funnel", "curation funnel", "the dataset manifest has no funnel")}
{_funnel_table(dataset.funnel) if dataset.funnel else ""}</section>
{selection_sections(data.selections, images)}
<section id="edit-ratio"><h2>Edit ratio per source</h2>
<p class="muted">Low edit ratios (chosen and rejected differ by a few characters) are where DPO can lower the likelihood of the chosen answer.</p>
{_image(images, "edit_ratio", "edit ratio histograms per source", "no scored pairs found for this dataset")}</section>
<section id="lengths"><h2>Token lengths</h2>
{_image(images, "token_lengths", "token length distributions", "no shards found for this dataset")}</section>
<section id="lineage"><h2>Lineage</h2>
<p class="muted">Every artefact behind {"these runs" if len(data.runs) > 1 else "this run"} once, from the source files (left) to the runs (right); arrows are catalog edges, labelled with their relation.</p>
{lineage}</section>
<section id="about"><h2>Runs</h2>{_runs_table(data.runs)}
{_config_table(data.runs)}</section>
</main></body></html>
"""
