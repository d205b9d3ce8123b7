"""The report's figures, one PNG per question a reader asks (matplotlib, Agg: no display needed).

Each function draws one figure from plain data and returns the file it wrote, or None when there is
nothing to draw, so the page can say so instead of showing an empty frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SPLIT_STYLE = {
    "train": {"color": "#1f77b4", "alpha": 0.55, "lw": 1.2},
    "eval": {"color": "#d62728", "lw": 2.0, "marker": "o", "ms": 4},
}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def funnel(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Rows left after each curation step, with what each step dropped and why."""
    if not rows:
        return None
    labels = [row["step"] for row in rows]
    remaining = [row["rows_in"] - row["dropped"] for row in rows]
    dropped = [row["dropped"] for row in rows]
    fig, axis = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.6))
    positions = list(range(len(rows)))[::-1]
    axis.barh(positions, remaining, color="#2ca02c", label="kept")
    axis.barh(positions, dropped, left=remaining, color="#d62728", alpha=0.7, label="dropped")
    for y, row, kept in zip(positions, rows, remaining, strict=True):
        text = f"{kept:,} kept" + (f"  −{row['dropped']:,} {row['reason']}" if row["dropped"] else "")
        axis.text(row["rows_in"] * 1.01, y, text, va="center", fontsize=8)
    axis.set_yticks(positions, labels)
    axis.set_xlim(0, max(row["rows_in"] for row in rows) * 1.75 or 1)  # room for the labels and legend
    axis.set_xlabel("pairs")
    axis.set_title("Curation funnel: pairs entering each step")
    axis.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


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
    return _save(fig, path)


def token_lengths(lengths: dict[str, list[int]], path: Path) -> Path | None:
    present = {name: values for name, values in lengths.items() if values}
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(4.4 * len(present), 3.2), squeeze=False)
    for axis, (name, values), colour in zip(axes[0], present.items(), PALETTE, strict=False):
        axis.hist(values, bins=min(40, max(5, len(set(values)))), color=colour, alpha=0.85)
        mean = sum(values) / len(values)
        axis.axvline(mean, color="black", linestyle="--", linewidth=1)
        axis.set_title(f"{name}: mean {mean:.0f}, max {max(values)} tokens", fontsize=10)
        axis.set_xlabel("tokens")
        axis.set_ylabel("rows")
    fig.suptitle("Token lengths in the shards (train + eval)", fontsize=11)
    return _save(fig, path)


def _series(metrics: Sequence[dict[str, Any]], name: str, split: str) -> tuple[list[float], list[float]]:
    points = [
        (m["step"], m[name])
        for m in metrics
        if m.get("split", "train") == split
        and isinstance(m.get(name), int | float)
        and m.get("step") is not None
    ]
    return [p[0] for p in points], [p[1] for p in points]


def _chosen_minus_reference(metrics: Sequence[dict[str, Any]], split: str) -> tuple[list[float], list[float]]:
    points = [
        (m["step"], m["logps/chosen"] - m["ref_logps/chosen"])
        for m in metrics
        if m.get("split", "train") == split
        and isinstance(m.get("logps/chosen"), int | float)
        and isinstance(m.get("ref_logps/chosen"), int | float)
        and m.get("step") is not None
    ]
    return [p[0] for p in points], [p[1] for p in points]


def training_curves(
    metrics: Sequence[dict[str, Any]], reference_chosen: float | None, path: Path
) -> Path | None:
    """Loss, reward margin and accuracy, log p(chosen) against the reference, post-edit log p, penalty."""
    panels = [
        ("loss", "Loss", None),
        ("rewards/margins", "Reward margin (β·(r_w − r_l))", None),
        ("rewards/accuracies", "Reward accuracy", (0, 1.02)),
        ("logps/chosen", "log p(chosen) vs reference", None),
        ("logps/chosen_post_edit", "log p per chosen token after the first edit", None),
        ("dpop/penalty", "DPOP penalty λ·max(0, −r_w)", None),
    ]
    if not any(_series(metrics, name, split)[0] for name, _, _ in panels for split in ("train", "eval")):
        return None
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    for axis, (name, title, limits) in zip(axes.flat, panels, strict=True):
        drawn = False
        relative = name == "logps/chosen" and any(
            _chosen_minus_reference(metrics, s)[0] for s in ("train", "eval")
        )
        for split in ("train", "eval"):
            # Each train batch has its own reference level, so log p(chosen) is shown against it: the
            # difference is what DPOP keeps at or above zero, without the batch-to-batch length noise.
            steps, values = (
                _chosen_minus_reference(metrics, split) if relative else _series(metrics, name, split)
            )
            if steps:
                axis.plot(steps, values, label=split, **SPLIT_STYLE[split])
                drawn = True
        if relative:
            axis.axhline(0, color="black", linestyle="--", lw=1, label="reference")
            title = "log p(chosen) − reference (nats per answer)"
        elif name == "logps/chosen" and reference_chosen is not None:
            axis.axhline(reference_chosen, color="black", linestyle="--", lw=1, label="reference (eval)")
        if name == "dpop/penalty":
            twin = axis.twinx()
            for split in ("train", "eval"):
                steps, values = _series(metrics, "dpop/penalty_active", split)
                if steps:
                    twin.plot(steps, values, color=SPLIT_STYLE[split]["color"], linestyle=":", lw=1)
            twin.set_ylim(0, 1.02)
            twin.set_ylabel("share of pairs penalised (dotted)", fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step")
        if limits:
            axis.set_ylim(*limits)
        axis.grid(alpha=0.3)
        if drawn:
            axis.legend(fontsize=8)
        else:
            axis.text(
                0.5,
                0.5,
                f"no '{name}' logged",
                ha="center",
                va="center",
                transform=axis.transAxes,
                color="#777",
            )
    fig.suptitle("Training (thin) and evaluation (thick, dots)", fontsize=11)
    return _save(fig, path)
