"""The report's figures, one PNG per question a reader asks (matplotlib, Agg: no display needed).

Each function draws one figure from plain data and returns the file it wrote, or None when there is
nothing to draw, so the page can say so instead of showing an empty frame. Runs are drawn in the
colours `run_colours` gives them (DPO red, DPOP blue, others after), the same in every figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.report.compare import GroupRow, chosen_minus_reference, series  # noqa: E402

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
DPO_COLOUR, DPOP_COLOURS = "#d62728", ["#1f77b4", "#17becf", "#2ca02c", "#9467bd"]


@dataclass(frozen=True)
class Curve:
    """One run as the figures see it."""

    label: str
    colour: str
    metrics: Sequence[dict[str, Any]]


def run_colours(kinds: Sequence[tuple[bool, float]]) -> list[str]:
    """A colour per run from (is DPO, λ): DPO red, DPOP runs blues/greens, any other loss the palette."""
    colours, dpop, other = [], iter(DPOP_COLOURS), iter(PALETTE[2:] * 4)
    for is_dpo, penalty in kinds:
        colours.append(DPO_COLOUR if is_dpo else next(dpop, "#1f77b4") if penalty > 0 else next(other))
    return colours


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def funnel(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Rows left after each curation step, with what each step dropped and why."""
    return _save(funnel_figure(rows), path) if rows else None


def funnel_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """The funnel's figure: the axis spans the data (the widest step), the counts are written in a
    column right of it, outside the axis."""
    labels = [row["step"] for row in rows]
    remaining = [row["rows_in"] - row["dropped"] for row in rows]
    dropped = [row["dropped"] for row in rows]
    fig, axis = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.4))
    positions = list(range(len(rows)))[::-1]
    axis.barh(positions, remaining, color="#2ca02c", label="kept")
    axis.barh(positions, dropped, left=remaining, color="#d62728", alpha=0.7, label="dropped")
    for y, row, kept in zip(positions, rows, remaining, strict=True):
        text = f"{kept:,} kept" + (f"  −{row['dropped']:,} {row['reason']}" if row["dropped"] else "")
        axis.annotate(text, xy=(1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    axis.set_yticks(positions, labels)
    axis.set_xlim(0, max(row["rows_in"] for row in rows) * 1.02 or 1)
    axis.set_xlabel("pairs")
    axis.set_title("Curation funnel: pairs entering each step", loc="left")
    axis.legend(loc="lower left", bbox_to_anchor=(0.0, 1.06), ncol=2, fontsize=8, frameon=False)
    return fig


def edit_ratios(kept: dict[str, list[float]], ingested: dict[str, list[float]], path: Path) -> Path | None:
    """Per source: how far chosen and rejected are apart (0 = identical, 1 = nothing in common)."""
    sources = sorted(set(kept) | set(ingested))
    if not sources:
        return None
    columns = min(3, len(sources))
    rows = (len(sources) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.2 * rows), squeeze=False)
    # Bins over the range the data uses: low-edit sources (a few characters changed) would otherwise
    # fall into one bar.
    largest = max((max(values) for values in [*kept.values(), *ingested.values()] if values), default=1.0)
    top = min(1.0, max(largest * 1.05, 0.02))
    bins = [top * i / 40 for i in range(41)]
    for axis, source in zip(axes.flat, sources, strict=False):
        if ingested.get(source):
            axis.hist(
                ingested[source],
                bins=bins,
                color="#7f7f7f",
                alpha=0.45,
                label=f"ingested ({len(ingested[source]):,})",
            )
        if kept.get(source):
            axis.hist(
                kept[source], bins=bins, color="#1f77b4", alpha=0.85, label=f"kept ({len(kept[source]):,})"
            )
        axis.set_title(source, fontsize=10)
        axis.set_xlabel("edit ratio (char edits / longer answer)")
        axis.set_ylabel("pairs")
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(sources) :]:
        axis.axis("off")
    fig.suptitle("Edit ratio between chosen and rejected, per source", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def token_lengths(
    lengths: dict[str, np.ndarray], path: Path, max_prompt_length: int | None = None
) -> Path | None:
    """Prompt, chosen and rejected token counts; the prompt limit drawn where prompts reach it."""
    present = {name: np.asarray(values) for name, values in lengths.items() if len(values)}
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(4.4 * len(present), 3.2), squeeze=False)
    for axis, (name, values), colour in zip(axes[0], present.items(), PALETTE, strict=False):
        axis.hist(values, bins=int(min(40, max(5, len(np.unique(values))))), color=colour, alpha=0.85)
        mean = float(values.mean())
        axis.axvline(mean, color="black", linestyle="--", linewidth=1)
        title = f"{name}: mean {mean:.0f}, max {int(values.max())} tokens"
        if name == "prompt" and max_prompt_length is not None:
            cut = int((values == max_prompt_length).sum())
            if cut:
                axis.axvline(max_prompt_length, color="#b91c1c", linewidth=1.5)
                title += f"\n{cut:,} at max_prompt_length {max_prompt_length} (cut)"
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("tokens")
        axis.set_ylabel("rows")
    fig.suptitle("Token lengths in the shards (train + eval)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


# --- runs over steps ---------------------------------------------------------------------------------

PANELS = (
    ("chosen_delta", "log p(chosen) − reference (nats per answer)"),
    ("logps/chosen_pre_edit", "log p per chosen token, before the first edit"),
    ("logps/chosen_post_edit", "log p per chosen token, from the first edit on"),
    ("rejected_delta", "log p(rejected) − reference (nats per answer)"),
    ("rewards/accuracies", "reward accuracy"),
    ("rewards/margins", "reward margin β·(r_w − r_l)"),
    ("dpop/penalty", "DPOP penalty λ·max(0, −r_w) (dotted: share of pairs penalised)"),
    ("loss", "loss"),
)


def _points(metrics: Sequence[dict[str, Any]], name: str, split: str) -> tuple[list[int], list[float]]:
    if name == "chosen_delta":
        return chosen_minus_reference(metrics, split)
    if name == "rejected_delta":
        points = [
            (m["step"], m["logps/rejected"] - m["ref_logps/rejected"])
            for m in metrics
            if m.get("split", "train") == split
            and isinstance(m.get("logps/rejected"), int | float)
            and isinstance(m.get("ref_logps/rejected"), int | float)
            and isinstance(m.get("step"), int)
        ]
        return [p[0] for p in points], [p[1] for p in points]
    return series(metrics, name, split)


def _panel(axis: Any, curves: Sequence[Curve], name: str, title: str) -> None:
    drawn = False
    for curve in curves:
        for split, style in (
            ("train", {"lw": 1.0, "alpha": 0.35}),
            ("eval", {"lw": 2.2, "marker": "o", "ms": 3.5}),
        ):
            steps, values = _points(curve.metrics, name, split)
            if steps:
                label = f"{curve.label} ({split})" if split == "eval" else None
                axis.plot(steps, values, color=curve.colour, label=label, **style)
                drawn = True
        if name == "dpop/penalty":
            steps, values = series(curve.metrics, "dpop/penalty_active", "eval")
            if steps:
                twin = axis.twinx() if not hasattr(axis, "_twin") else axis._twin
                axis._twin = twin
                twin.plot(steps, values, color=curve.colour, linestyle=":", lw=1.2)
                twin.set_ylim(0, 1.02)
                twin.tick_params(labelsize=7)
    if name in ("chosen_delta", "rejected_delta", "rewards/margins"):
        axis.axhline(0, color="black", linestyle="--", lw=1)
    if name == "rewards/accuracies":
        axis.axhline(0.5, color="black", linestyle="--", lw=1)
        axis.set_ylim(0, 1.02)
    axis.set_title(title, fontsize=9.5)
    axis.set_xlabel("step", fontsize=8)
    axis.grid(alpha=0.3)
    if not drawn:
        axis.text(
            0.5, 0.5, f"no '{name}' logged", ha="center", va="center", transform=axis.transAxes, color="#777"
        )


def training_curves(curves: Sequence[Curve], path: Path) -> Path | None:
    """Every run over steps: log-probs against the reference, per-token log p around the first edit,
    reward accuracy and margin, the penalty and the loss; train thin, eval thick with dots."""
    if not any(_points(c.metrics, n, s)[0] for c in curves for n, _ in PANELS for s in ("train", "eval")):
        return None
    fig, axes = plt.subplots(2, 4, figsize=(19, 7.6))
    for axis, (name, title) in zip(axes.flat, PANELS, strict=True):
        _panel(axis, curves, name, title)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes.flat[7].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=max(1, len(labels)), fontsize=9, frameon=False)
    fig.suptitle(
        "Training (thin) and the trainer's evaluations (thick, dots), per run", fontsize=11, x=0.01, ha="left"
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, path)


def headline(curves: Sequence[Curve], finals: Sequence[dict[str, float | None]], path: Path) -> Path | None:
    """log p(chosen) − reference over steps per run, and on the eval split per answer and per token
    before/after the first edit (`finals`: per run, chosen_delta, pre_edit_delta, post_edit_delta)."""
    if not any(chosen_minus_reference(c.metrics, s)[0] for c in curves for s in ("train", "eval")):
        return None
    has_finals = any(v is not None for f in finals for v in f.values())
    fig, axes = plt.subplots(1, 2 if has_finals else 1, figsize=(14 if has_finals else 8, 4.2), squeeze=False)
    _panel(axes[0][0], curves, "chosen_delta", "log p(chosen) − reference over training (nats per answer)")
    axes[0][0].legend(fontsize=8)
    if has_finals:
        _final_bars(axes[0][1], curves, finals)
    fig.tight_layout()
    return _save(fig, path)


def _final_bars(axis: Any, curves: Sequence[Curve], finals: Sequence[dict[str, float | None]]) -> None:
    keys = (
        ("pre_edit_delta", "per token,\nbefore the first edit"),
        ("post_edit_delta", "per token,\nfrom the first edit on"),
    )
    width = 0.8 / max(1, len(curves))
    for index, (curve, final) in enumerate(zip(curves, finals, strict=True)):
        values = [final.get(k) for k, _ in keys]
        xs = [i + (index - (len(curves) - 1) / 2) * width for i in range(len(keys))]
        bars = axis.bar(
            xs, [v if v is not None else 0 for v in values], width, color=curve.colour, label=curve.label
        )
        for bar, value in zip(bars, values, strict=True):
            if value is not None:
                axis.annotate(f"{value:+.3g}", (bar.get_x() + bar.get_width() / 2, value), ha="center",
                              va="bottom" if value >= 0 else "top", fontsize=8)  # fmt: skip
    axis.axhline(0, color="black", lw=1)
    axis.set_xticks(range(len(keys)), [k[1] for k in keys], fontsize=9)
    axis.set_ylabel("Δ log p (nats per token)")
    axis.set_title("On the eval pairs: change of log p(chosen) against the reference", fontsize=9.5)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")


def groups(
    by_kind: dict[str, list[GroupRow]], curves: Sequence[Curve], run_ids: Sequence[str], path: Path
) -> Path | None:
    """Per edit-ratio bucket and per source: reward accuracy and Δ log p(chosen), one bar per run."""
    kinds = [(kind, rows) for kind, rows in by_kind.items() if rows]
    if not kinds:
        return None
    fig, axes = plt.subplots(len(kinds), 2, figsize=(14, 3.6 * len(kinds)), squeeze=False)
    metrics = (("reward accuracy", 0.5), ("Δ log p(chosen) vs reference (nats)", 0.0))
    for (kind, rows), axis_row in zip(kinds, axes, strict=True):
        for index, (axis, (name, baseline)) in enumerate(zip(axis_row, metrics, strict=True)):
            _group_bars(axis, rows, curves, run_ids, index)
            axis.set_title(f"{name} per {kind.replace('_', ' ')}", fontsize=9.5)
            axis.axhline(baseline, color="black", linestyle="--" if index == 0 else "-", lw=1)
            if index == 0:
                axis.set_ylim(0, 1.02)
    fig.tight_layout()
    return _save(fig, path)


def _group_bars(
    axis: Any, rows: list[GroupRow], curves: Sequence[Curve], run_ids: Sequence[str], index: int
) -> None:
    width = 0.8 / max(1, len(curves))
    for position, (curve, run_id) in enumerate(zip(curves, run_ids, strict=True)):
        values = [row.values.get(run_id, (None, None))[index] for row in rows]
        xs = [i + (position - (len(curves) - 1) / 2) * width for i in range(len(rows))]
        axis.bar(
            xs, [v if v is not None else np.nan for v in values], width, color=curve.colour, label=curve.label
        )
    labels = [f"{row.group}\n(n={row.n:,})" for row in rows]
    axis.set_xticks(range(len(rows)), [_wrap(label) for label in labels], fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8)


def _wrap(label: str, width: int = 26) -> str:
    lines = []
    for line in label.split("\n"):
        lines += [line[i : i + width] for i in range(0, len(line), width)] or [""]
    return "\n".join(lines)
