"""The report's "Selection" section: what a `dpop select` kept and left out, for every version made by a
selection in the ancestry of the runs' datasets (a `-ref-` version on top of a selection, a selection
on top of a `-ref-` version, a selection of a selection: the manifest parents are walked).

    selections(ws, runs) -> [SelectionView]     what is read (once per selected version)
    images(views, folder) -> {key: Path | None}  the figures, one set per view
    section(views, images) -> HTML               the page's sections (nothing when there is no selection)

Per selection: (1) the rule's score, kept against dropped, on one axis with the cut and the band marked,
captioned with the rule and the parameters that differ from the defaults; (2) kept and dropped per
source, and under quotas (mix, quotas, edit_quota) each group's target, candidates and kept pairs, a
short group flagged; (3) the reference's ranking accuracy mean(G > 0) and the probe's reward accuracy
per split (the selection's summary), and the share of kept pairs the reference ranks wrong (G < 0);
(4) the edit ratios of the kept pairs against the parent's selectable pairs; (5) the weights when the
selection sets them, with `weights/mean` as the runs logged it. Every sentence is computed from these
numbers. The funnel's `select` step and the lineage to the models are the page's own sections.

Bounded for a million pairs: only the columns needed are read (`selection.parquet` without ranks, the
parent's `pairs.parquet` edit ratios, the reference's two log-prob columns), and the histograms are
binned with numpy over every pair (nothing is sampled; the page says so).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pipeline.config import ConfigError
from pipeline.mix import allocate
from pipeline.report import plots
from pipeline.report.text import Sentence
from pipeline.select import PAIRS_FILE, SELECTION_FILE, SelectionConfig, load_selection_config
from pipeline.select_rules import DEFAULT_EDIT_BUCKETS, RULES
from pipeline.shards import ShardError, open_split
from pipeline.stage import read_record
from pipeline.workspace import Workspace

if TYPE_CHECKING:
    from pipeline.report.data import RunData

SELECTED_FROM = "selected_from"
LOW_EDIT = DEFAULT_EDIT_BUCKETS[1]  # "low edit ratio": the first edit bucket's upper edge (0.05)
MIX_SHIFT = 0.10  # a source whose share of the pairs moves by this much is named as shifted
BINS = 40
NO_GROUP = "(sources the mix does not name)"
UNLIMITED = 10**15  # a group size that caps nothing: the target a group would get with pairs enough
KEPT_COLOUR, DROPPED_COLOUR, PARENT_COLOUR = "#2ca02c", "#d62728", "#7f7f7f"


@dataclass
class SelectionView:
    """One selected version as the section shows it."""

    dataset_id: str  # the version the selection made
    parent_id: str | None  # the version it selected from
    summary: dict[str, Any]  # manifest.json's `selection`
    pairs: (
        pl.DataFrame
    )  # every pair considered: split, source, score, kept, weight, selectable[, edit_ratio, g]
    reference_from: str | None = None  # where the reference log-probs (G) were read, in words
    trained: list[tuple[str, float | None]] = field(default_factory=list)  # run label, last weights/mean
    notes: list[str] = field(default_factory=list)

    @property
    def rule(self) -> str:
        return str(self.summary.get("rule") or self.config.get("rule") or "?")

    @property
    def config(self) -> dict[str, Any]:
        config = self.summary.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def selectable(self) -> pl.DataFrame:
        return self.pairs.filter(pl.col("selectable"))


# --- what is read --------------------------------------------------------------------------------------


def _manifest(ws: Workspace, dataset_id: str) -> dict[str, Any]:
    try:
        value = json.loads((ws.dataset_dir(dataset_id) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _dataset_parents(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        p
        for p in manifest.get("parents") or []
        if isinstance(p, dict) and p.get("kind") == "dataset" and isinstance(p.get("id"), str)
    ]


def selection_ancestry(ws: Workspace, dataset_id: str) -> list[str]:
    """The versions made by a selection among `dataset_id` and its dataset ancestors, nearest first. A
    `-ref-` version copies its parent's manifest (its `selection` key too), so a version counts as a
    selection by its `selected_from` parent and its selection.parquet, not by that key."""
    found, seen, queue = [], set(), [dataset_id]
    while queue:
        current = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        parents = _dataset_parents(_manifest(ws, current))
        if (
            any(p.get("relation") == SELECTED_FROM for p in parents)
            and (ws.dataset_dir(current) / SELECTION_FILE).is_file()
        ):
            found.append(current)
        queue += [p["id"] for p in parents]
    return found


def _considered(path: Path, config: dict[str, Any]) -> pl.DataFrame:
    """selection.parquet, the columns the section needs (rank and rule left out), in its (split, row) order."""
    present = set(pq.read_schema(path).names)
    wanted = [c for c in ("pair_id", "split", "source", "score", "kept", "weight") if c in present]
    frame = pl.read_parquet(path, columns=wanted)
    selectable = pl.lit(True) if config.get("select_eval") else pl.col("split") == "train"
    return frame.with_columns(selectable=selectable)


def _with_edit_ratio(frame: pl.DataFrame, path: Path) -> pl.DataFrame | None:
    """Each considered pair's edit ratio from the parent's pairs.parquet. A pair id hashes the pair's
    texts, so a pair listed twice has one edit ratio: a join on the id alone is exact."""
    if not path.is_file() or "edit_ratio" not in pq.read_schema(path).names:
        return None
    pairs = pl.read_parquet(path, columns=["pair_id", "edit_ratio"]).unique("pair_id", keep="first")
    joined = frame.join(pairs, on="pair_id", how="left", maintain_order="left")
    return joined.with_columns(pl.col("edit_ratio").cast(pl.Float64))


def _reference_table(ws: Workspace, dataset_id: str) -> tuple[str, Path] | None:
    """The reference's log-prob table the selection read, from its stage record: `SelectStage.inputs`
    lists each model, then the table scored with it (relation `scored_with`)."""
    record = read_record(ws.dataset_dir(dataset_id))
    role = None
    for item in record.inputs if record is not None else []:
        if item.relation.endswith("_model"):
            role = item.relation.removesuffix("_model")
        elif item.relation == "scored_with" and role == "reference":
            path = item.artifact.location(ws)
            return (item.artifact.id, path) if path is not None and path.is_file() else None
    return None


def _g_from_table(frame: pl.DataFrame, path: Path) -> pl.Series:
    table = pl.read_parquet(path, columns=["pair_id", "chosen_logps", "rejected_logps"])
    table = table.unique("pair_id", keep="first")
    joined = frame.select("pair_id").join(table, on="pair_id", how="left", maintain_order="left")
    return (joined["chosen_logps"].cast(pl.Float64) - joined["rejected_logps"].cast(pl.Float64)).alias("g")


def _g_from_shards(ws: Workspace, parent_id: str, frame: pl.DataFrame) -> pl.Series | None:
    """G from the parent's shards (a `dpop refs` version), row by row: selection.parquet lists each
    split's pairs in shard order, so the rows align; a mismatch reads as no G, never a wrong one."""
    parts = []
    for split in frame["split"].unique(maintain_order=True).to_list():
        try:
            table = open_split(ws, parent_id, split)
        except (ShardError, KeyError):
            return None
        names = ("pair_id", "ref_chosen_logps", "ref_rejected_logps")
        if not set(names) <= set(table.column_names):
            return None
        shard = pl.from_arrow(table.select(list(names)))
        if shard["pair_id"].to_list() != frame.filter(pl.col("split") == split)["pair_id"].to_list():
            return None
        parts.append(
            shard["ref_chosen_logps"].cast(pl.Float64) - shard["ref_rejected_logps"].cast(pl.Float64)
        )
    g = pl.concat(parts).alias("g") if parts else None
    return g if g is not None and g.null_count() < g.len() else None  # a build's empty ref_* columns


def _reference_g(ws: Workspace, view: SelectionView) -> tuple[pl.Series | None, str | None]:
    """G = log πref(y_w) − log πref(y_l) of every considered pair, and where it was read."""
    if view.rule == "reference_difficulty" and "score" in view.pairs.columns:
        return view.pairs["score"].alias("g"), "the rule's score (G)"
    table = _reference_table(ws, view.dataset_id)
    if table is not None:
        return _g_from_table(view.pairs, table[1]), f"the reference's log-prob table {table[0]}"
    if view.parent_id is not None:
        g = _g_from_shards(ws, view.parent_id, view.pairs)
        if g is not None:
            return g, f"the reference log-probs in the shards of {view.parent_id}"
    return None, None


def gather_selection(ws: Workspace, dataset_id: str) -> SelectionView:
    """What the section shows of one selected version."""
    manifest = _manifest(ws, dataset_id)
    summary = manifest.get("selection") if isinstance(manifest.get("selection"), dict) else {}
    parent = next((p["id"] for p in _dataset_parents(manifest) if p.get("relation") == SELECTED_FROM), None)
    view = SelectionView(dataset_id, parent, summary, pl.DataFrame())
    view.pairs = _considered(ws.dataset_dir(dataset_id) / SELECTION_FILE, view.config)
    if parent is not None:
        with_edit = _with_edit_ratio(view.pairs, ws.dataset_dir(parent) / PAIRS_FILE)
        if with_edit is None:
            view.notes.append(f"{parent} has no pairs.parquet with edit ratios: no edit-ratio comparison")
        else:
            view.pairs = with_edit
    g, view.reference_from = _reference_g(ws, view)
    if g is not None:
        view.pairs = view.pairs.with_columns(g)
    return view


def _last_logged(metrics: Sequence[dict[str, Any]], name: str) -> float | None:
    values = [
        m[name] for m in metrics if isinstance(m.get(name), int | float) and not isinstance(m[name], bool)
    ]
    return float(values[-1]) if values else None


def selections(ws: Workspace, runs: Sequence[RunData]) -> list[SelectionView]:
    """Every selected version in the ancestry of the runs' datasets, once each, with the runs trained on
    it (or on a version above it) and the last `weights/mean` each logged."""
    views: dict[str, SelectionView] = {}
    for dataset_id in dict.fromkeys(r.dataset_id for r in runs if r.dataset_id):
        for found in selection_ancestry(ws, dataset_id):
            if found not in views:
                views[found] = gather_selection(ws, found)
    for run in runs:
        for found in selection_ancestry(ws, run.dataset_id) if run.dataset_id else []:
            views[found].trained.append((run.label, _last_logged(run.metrics, "weights/mean")))
    return list(views.values())


# --- the numbers ---------------------------------------------------------------------------------------


def by_source(view: SelectionView) -> dict[str, dict[str, int]]:
    """Kept and dropped selectable pairs per source (the numbers of the stacked bar)."""
    counts = (
        view.selectable.group_by("source")
        .agg(kept=pl.col("kept").sum(), dropped=(~pl.col("kept")).sum())
        .sort("source")
    )
    return {
        r["source"]: {"kept": int(r["kept"]), "dropped": int(r["dropped"])}
        for r in counts.iter_rows(named=True)
    }


def _bucket_shares(config: SelectionConfig) -> dict[str, float] | None:
    groups = RULES[config.rule].groups
    if groups is None:
        return None
    return groups(pl.DataFrame({"edit_ratio": []}, schema={"edit_ratio": pl.Float64}), config)[1]


def _ideal(shares: dict[str, float], total: int) -> dict[str, int]:
    return allocate(dict.fromkeys(shares, UNLIMITED), shares, total)


def group_targets(summary: dict[str, Any]) -> dict[str, int]:
    """Each quota group's target: what it would keep had it pairs enough (`pipeline.mix.allocate`
    without the cap, as the selection split its total). Empty when the summary's config does not load."""
    try:
        config = load_selection_config(summary.get("config") or {})
    except (ConfigError, TypeError, ValueError):
        return {}
    buckets = _bucket_shares(config)
    if config.quotas is not None:
        if buckets is None:
            return {source: int(quota) for source, quota in config.quotas.items()}
        return {
            f"{source}|{bucket}": count
            for source, quota in config.quotas.items()
            for bucket, count in _ideal(buckets, int(quota)).items()
        }
    shares = dict(config.mix) if config.mix is not None else None
    if shares is not None and buckets is not None:
        shares = {f"{s}|{b}": shares[s] * buckets[b] for s in shares for b in buckets}
    shares = shares if shares is not None else buckets
    if shares is None:
        return {}
    total = summary.get("target")
    if total is None:  # no keep: the largest total every group can fill, as the selection took it
        sizes = {g: int(v.get("candidates", 0)) for g, v in (summary.get("groups") or {}).items()}
        total = sum(allocate(sizes, shares, None).values())
    return _ideal(shares, int(total))


def group_rows(view: SelectionView) -> list[dict[str, Any]]:
    """Per quota group: target, candidates, kept and whether it fell short of its target."""
    targets = group_targets(view.summary)
    rows = []
    for group, counts in sorted((view.summary.get("groups") or {}).items()):
        target = targets.get(group, 0 if targets else None)
        kept = int(counts.get("kept", 0))
        short = target is not None and kept < target
        rows.append(
            {
                "group": NO_GROUP if group == "null" else group,  # JSON's name of a null key
                "target": target,
                "candidates": counts.get("candidates"),
                "kept": kept,
                "short": short,
            }
        )
    return rows


def cut(view: SelectionView) -> float | None:
    """The score that separates kept from dropped candidates, when one threshold does (no quota groups,
    some candidate dropped); for `abs_asc` rules, the largest |score| kept."""
    if view.summary.get("groups") or "score" not in view.pairs.columns:
        return None
    scored = view.selectable.filter(pl.col("score").is_not_null())
    kept = scored.filter(pl.col("kept"))["score"]
    if kept.len() == 0 or kept.len() == scored.height:
        return None
    order = _order(view)
    if order == "desc":
        return float(kept.min())
    return float(kept.max()) if order == "asc" else float(kept.abs().max())


def _order(view: SelectionView) -> str:
    rule = RULES.get(view.rule)
    if rule is None:
        return "desc"
    return "asc" if view.rule == "sql" and view.config.get("ascending") else rule.order


def caption(view: SelectionView) -> str:
    """The rule and the parameters that differ from `SelectionConfig`'s defaults (β also where the rule
    reads a probe, whose implicit reward β scales)."""
    defaults = SelectionConfig().as_dict()
    parts = [f"rule={view.rule}"]
    for key, value in view.config.items():
        needed = key == "beta" and "probe" in getattr(RULES.get(view.rule), "needs", ())
        if key != "rule" and (value != defaults.get(key) or needed):
            parts.append(f"{key}={_value(value)}")
    return " · ".join(parts)


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def effective_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (Σw)²/Σw²: how many equally weighted pairs the weights amount to."""
    total = float(weights.sum())
    return total * total / float((weights * weights).sum()) if total > 0 else 0.0


# --- the sentences -------------------------------------------------------------------------------------


def _pairs(n: int) -> str:
    return f"{n:,} pair" if n == 1 else f"{n:,} pairs"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "–"


def _counts_sentence(view: SelectionView) -> Sentence:
    selectable, kept = view.selectable.height, int(view.selectable["kept"].sum())
    text = f"{view.rule} kept {kept:,} of {selectable:,} selectable pairs ({_share(kept, selectable)})"
    target = view.summary.get("target")
    if target is not None and target != kept:
        text += f"; its target was {target:,}"
    whole = view.pairs.height - selectable
    if whole:
        text += f"; the {whole:,} eval pairs are kept whole (not selected from), so runs on other selections are evaluated on the same pairs"
    return Sentence(text + ".")


def _score_sentences(view: SelectionView) -> list[Sentence]:
    frame = view.selectable
    if "score" not in frame.columns:
        return []
    out = []
    parts = []
    for name, rows in (("kept", frame.filter(pl.col("kept"))), ("dropped", frame.filter(~pl.col("kept")))):
        scores = rows["score"].drop_nulls()
        if scores.len():
            parts.append(
                f"{name} {_pairs(scores.len())}, median {scores.median():.4g} (range {scores.min():.4g} to {scores.max():.4g})"
            )
    if parts:
        out.append(Sentence(f"Scores: {'; '.join(parts)}."))
    threshold = cut(view)
    if threshold is not None:
        rule = {"desc": f"score ≥ {threshold:.4g}", "asc": f"score ≤ {threshold:.4g}"}
        out.append(
            Sentence(
                f"One cut separates them: kept pairs have {rule.get(_order(view), f'|score| ≤ {threshold:.4g}')}."
            )
        )
    missing = frame["score"].null_count()
    if missing:
        out.append(
            Sentence(f"{missing:,} selectable pairs have no score and were never selected.", "warning")
        )
    return out


def _source_sentences(view: SelectionView) -> list[Sentence]:
    counts = by_source(view)
    if not counts:
        return []
    kept_total = sum(c["kept"] for c in counts.values())
    all_total = sum(c["kept"] + c["dropped"] for c in counts.values())
    each = ", ".join(f"{s} {c['kept']:,} of {c['kept'] + c['dropped']:,}" for s, c in counts.items())
    out = [Sentence(f"Kept per source: {each}.")]
    shifted = [
        f"{s} {(c['kept'] + c['dropped']) / all_total:.0%} of the selectable pairs → {c['kept'] / kept_total:.0%} of the kept"
        for s, c in counts.items()
        if kept_total and abs(c["kept"] / kept_total - (c["kept"] + c["dropped"]) / all_total) >= MIX_SHIFT
    ]
    if shifted:
        out.append(Sentence(f"The selection changes the sources' mix: {'; '.join(shifted)}.", "warning"))
    for row in group_rows(view):
        if row["short"]:
            out.append(
                Sentence(
                    f"Group {row['group']} is short: target {row['target']:,}, {row['candidates']:,} candidates, "
                    f"{row['kept']:,} kept (a short group is not topped up from the others).",
                    "warning",
                )
            )
    return out


def _accuracy(values: Any) -> str:
    if not isinstance(values, dict) or not values:
        return ""
    return ", ".join(f"{split} {value:.2f}" for split, value in sorted(values.items()))


def _reference_sentences(view: SelectionView) -> list[Sentence]:
    out = []
    reference = _accuracy(view.summary.get("reference_ranking_accuracy"))
    if reference:
        out.append(
            Sentence(
                f"The reference ranks chosen above rejected (G > 0) on a share of the pairs: {reference}."
            )
        )
    probe = _accuracy(view.summary.get("probe_reward_accuracy") or view.summary.get("probe_ranking_accuracy"))
    if probe:
        out.append(Sentence(f"The probe's implicit reward accuracy (Δr > 0): {probe}."))
    frame = view.selectable.filter(pl.col("g").is_not_null()) if "g" in view.pairs.columns else None
    if frame is not None and frame.height:
        kept = frame.filter(pl.col("kept"))
        wrong, wrong_all = int((kept["g"] < 0).sum()), int((frame["g"] < 0).sum())
        out.append(
            Sentence(
                f"The reference ranks {wrong:,} of the {kept.height:,} kept pairs wrong (G < 0, {_share(wrong, kept.height)}), "
                f"against {_share(wrong_all, frame.height)} of the {frame.height:,} selectable pairs (from {view.reference_from})."
            )
        )
    elif not reference:
        out.append(
            Sentence(
                "No reference log-probs were read by this selection or stored with its parent: no ranking accuracy."
            )
        )
    return out


def _edit_sentences(view: SelectionView) -> list[Sentence]:
    if "edit_ratio" not in view.pairs.columns:
        return []
    frame = view.selectable.filter(pl.col("edit_ratio").is_not_null())
    kept = frame.filter(pl.col("kept"))["edit_ratio"]
    if not kept.len():
        return []
    low, low_all = int((kept < LOW_EDIT).sum()), int((frame["edit_ratio"] < LOW_EDIT).sum())
    return [
        Sentence(
            f"Edit ratio: median {kept.median():.3g} for the kept pairs against {frame['edit_ratio'].median():.3g} "
            f"for the parent's selectable pairs; {_share(low, kept.len())} of the kept pairs are below {LOW_EDIT:g} "
            f"(against {_share(low_all, frame.height)}), where DPO tends to lower log p(chosen) and DPOP's penalty acts."
        )
    ]


def weights(view: SelectionView) -> np.ndarray | None:
    """The weights the selection set on the pairs it chose (None when it sets none)."""
    if "weight" not in view.pairs.columns:
        return None
    values = view.pairs.filter(pl.col("kept") & pl.col("selectable"))["weight"].drop_nulls()
    return values.cast(pl.Float64).to_numpy() if values.len() else None


def _weight_sentences(view: SelectionView) -> list[Sentence]:
    values = weights(view)
    if values is None:
        return []
    ess = effective_size(values)
    out = [
        Sentence(
            f"Weights of the {len(values):,} kept pairs: mean {values.mean():.3g}, median {np.median(values):.3g}, "
            f"range {values.min():.3g} to {values.max():.3g}; they amount to {ess:,.0f} equally weighted pairs "
            f"(effective sample size (Σw)²/Σw², {ess / len(values):.0%} of the kept)."
        )
    ]
    logged = [f"{label} {value:.3g}" for label, value in view.trained if value is not None]
    if logged:
        out.append(Sentence(f"weights/mean as the runs last logged it: {', '.join(logged)}."))
    elif view.trained:
        out.append(
            Sentence(
                "No run on it logged weights/mean (trained before weights were logged, or still starting)."
            )
        )
    return out


def sentences(view: SelectionView) -> list[Sentence]:
    """Everything the section says of one selection, computed from its numbers."""
    return [
        _counts_sentence(view),
        *_score_sentences(view),
        *_source_sentences(view),
        *_reference_sentences(view),
        *_edit_sentences(view),
        *_weight_sentences(view),
    ]


# --- the figures ---------------------------------------------------------------------------------------


def _edges(*groups: np.ndarray, marks: Sequence[float] = ()) -> tuple[np.ndarray, bool]:
    """Bin edges over the 0.1–99.9% range of the values (and the marks), and whether values lie
    outside it (they are counted in the end bins)."""
    values = np.concatenate([g for g in groups if len(g)])
    low, high = np.quantile(values, [0.001, 0.999])
    low, high = min([low, *marks]), max([high, *marks])
    clipped = bool((values < low).any() or (values > high).any())
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, BINS + 1), clipped


def _histogram(
    axis: Any, values: np.ndarray, edges: np.ndarray, colour: str, label: str, alpha: float
) -> None:
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    axis.stairs(counts, edges, fill=True, color=colour, alpha=alpha, label=f"{label} ({len(values):,})")


def _marks(view: SelectionView) -> list[tuple[float, str, str]]:
    marks = []
    threshold = cut(view)
    if threshold is not None:
        marks.append((threshold, "cut", "-"))
        if _order(view) == "abs_asc":
            marks.append((-threshold, "cut", "-"))
    for key in ("band_min", "band_max"):
        if isinstance(view.config.get(key), int | float):
            marks.append((float(view.config[key]), key, "--"))
    return marks


def score_figure(view: SelectionView, path: Path) -> Path | None:
    """(1) The score, kept against dropped, on one axis; the cut and the band as vertical lines."""
    if "score" not in view.pairs.columns:
        return None
    frame = view.selectable.filter(pl.col("score").is_not_null() & pl.col("score").is_finite())
    kept = frame.filter(pl.col("kept"))["score"].to_numpy()
    dropped = frame.filter(~pl.col("kept"))["score"].to_numpy()
    if not len(kept) and not len(dropped):
        return None
    marks = _marks(view)
    edges, clipped = _edges(kept, dropped, marks=[m[0] for m in marks])
    fig, axis = plots.plt.subplots(figsize=(9, 3.6))
    _histogram(axis, dropped, edges, DROPPED_COLOUR, "dropped", 0.5)
    _histogram(axis, kept, edges, KEPT_COLOUR, "kept", 0.6)
    for x, label, style in marks:
        axis.axvline(x, color="black", linestyle=style, lw=1.2, label=f"{label} {x:.4g}")
    axis.set_xlabel(f"score ({view.rule})" + (" · end bins hold the values beyond them" if clipped else ""))
    axis.set_ylabel("pairs")
    axis.set_title(_wrapped(caption(view)), fontsize=9, loc="left")
    axis.legend(fontsize=8)
    fig.tight_layout()
    return plots._save(fig, path)


def _wrapped(text: str, width: int = 110) -> str:
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


def source_figure(view: SelectionView, path: Path) -> Path | None:
    """(2) Kept and dropped selectable pairs per source, stacked."""
    counts = by_source(view)
    if not counts:
        return None
    names = list(counts)
    kept = [counts[s]["kept"] for s in names]
    dropped = [counts[s]["dropped"] for s in names]
    fig, axis = plots.plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    positions = list(range(len(names)))[::-1]
    axis.barh(positions, kept, color=KEPT_COLOUR, label="kept")
    axis.barh(positions, dropped, left=kept, color=DROPPED_COLOUR, alpha=0.7, label="dropped")
    for y, k, d in zip(positions, kept, dropped, strict=True):
        axis.annotate(
            f"{k:,} kept · {d:,} dropped",
            xy=(1.01, y),
            xycoords=("axes fraction", "data"),
            va="center",
            fontsize=8,
        )
    axis.set_yticks(positions, names)
    axis.set_xlabel("selectable pairs")
    axis.set_title("Kept and dropped per source", loc="left", fontsize=10)
    axis.legend(loc="lower left", bbox_to_anchor=(0.0, 1.06), ncol=2, fontsize=8, frameon=False)
    return plots._save(fig, path)


def edit_figure(view: SelectionView, path: Path) -> Path | None:
    """(4) Edit ratios of the kept pairs against the parent's selectable pairs."""
    if "edit_ratio" not in view.pairs.columns:
        return None
    frame = view.selectable.filter(pl.col("edit_ratio").is_not_null())
    everything = frame["edit_ratio"].to_numpy()
    kept = frame.filter(pl.col("kept"))["edit_ratio"].to_numpy()
    if not len(everything):
        return None
    top = min(1.0, max(float(everything.max()) * 1.05, 0.02))  # low-edit sources would fill one bar of [0, 1]
    edges = np.linspace(0.0, top, BINS + 1)
    fig, axis = plots.plt.subplots(figsize=(9, 3.4))
    _histogram(axis, everything, edges, PARENT_COLOUR, f"parent's selectable pairs ({view.parent_id})", 0.45)
    _histogram(axis, kept, edges, "#1f77b4", "kept", 0.85)
    axis.axvline(LOW_EDIT, color="black", linestyle=":", lw=1)
    axis.set_xlabel("edit ratio (char edits / longer answer)")
    axis.set_ylabel("pairs")
    axis.set_title("Edit ratio of the kept pairs against the pairs selected from", loc="left", fontsize=10)
    axis.legend(fontsize=8)
    fig.tight_layout()
    return plots._save(fig, path)


def weight_figure(view: SelectionView, path: Path) -> Path | None:
    """(5) The weights of the kept pairs, their mean marked."""
    values = weights(view)
    if values is None:
        return None
    edges, clipped = _edges(values)
    fig, axis = plots.plt.subplots(figsize=(9, 3.2))
    _histogram(axis, values, edges, "#9467bd", "kept pairs", 0.8)
    axis.axvline(
        float(values.mean()), color="black", linestyle="--", lw=1.2, label=f"mean {values.mean():.3g}"
    )
    axis.set_xlabel("weight" + (" · end bins hold the values beyond them" if clipped else ""))
    axis.set_ylabel("pairs")
    axis.set_title("Training weights the selection set", loc="left", fontsize=10)
    axis.legend(fontsize=8)
    fig.tight_layout()
    return plots._save(fig, path)


FIGURES = (
    ("score", score_figure),
    ("sources", source_figure),
    ("edit_ratio", edit_figure),
    ("weights", weight_figure),
)


def image_key(index: int, name: str) -> str:
    return f"selection{index}_{name}"


def images(views: Sequence[SelectionView], folder: Path) -> dict[str, Path | None]:
    """Every selection's figures, `selection<i>_<name>.png`."""
    return {
        image_key(i, name): draw(view, folder / f"{image_key(i, name)}.png")
        for i, view in enumerate(views, 1)
        for name, draw in FIGURES
    }


# --- the page ------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(images: dict[str, Path | None], key: str, alt: str) -> str:
    path = images.get(key)
    return (
        f"<img class='plot' id='plot-{key}' src='{_e(path.name)}' alt='{_e(alt)}'>"
        if path is not None
        else ""
    )


def _groups_table(view: SelectionView) -> str:
    rows = group_rows(view)
    if not rows:
        return ""
    body = "".join(
        f"<tr class='{'differs' if r['short'] else ''}'><td>{_e(r['group'])}</td>"
        f"<td class='num'>{_count(r['target'])}</td><td class='num'>{_count(r['candidates'])}</td>"
        f"<td class='num'>{_count(r['kept'])}</td><td>{'short' if r['short'] else ''}</td></tr>"
        for r in rows
    )
    return (
        "<h3>Quota groups</h3><table><tr><th>group</th><th>target</th><th>candidates</th><th>kept</th>"
        f"<th></th></tr>{body}</table>"
    )


def _accuracy_table(view: SelectionView) -> str:
    found = {
        name: view.summary.get(key)
        for name, key in (
            ("reference ranking accuracy (G > 0)", "reference_ranking_accuracy"),
            ("probe reward accuracy (Δr > 0)", "probe_reward_accuracy"),
        )
        if isinstance(view.summary.get(key), dict)
    }
    splits = sorted({s for values in found.values() for s in values})
    if not found:
        return ""
    head = "".join(f"<th>{_e(s)}</th>" for s in splits)
    body = "".join(
        f"<tr><th>{_e(name)}</th>"
        + "".join(f"<td class='num'>{_e(_number(values.get(s)))}</td>" for s in splits)
        + "</tr>"
        for name, values in found.items()
    )
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "–"


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "–"


def _one(index: int, view: SelectionView, images: dict[str, Path | None]) -> str:
    said = sentences(view)
    warned = "".join(f"<li>{_e(s.text)}</li>" for s in said if s.level == "warning")
    said = "".join(f"<li>{_e(s.text)}</li>" for s in said if s.level == "finding")
    notes = "".join(f"<p class='note'>{_e(n)}</p>" for n in view.notes)
    return f"""<section id="selection-{index}"><h2>Selection: {_e(view.rule)} → {_e(view.dataset_id)}</h2>
<p class="muted">{_e(caption(view))} · selected from {_e(view.parent_id or "?")} · every one of the
{view.pairs.height:,} pairs counted in the figures (binned, not sampled)</p>
<ul class="findings">{said}</ul>{f"<ul class='warnings'>{warned}</ul>" if warned else ""}{notes}
{_img(images, image_key(index, "score"), "score of the kept and the dropped pairs")}
{_img(images, image_key(index, "sources"), "kept and dropped pairs per source")}
{_groups_table(view)}
{_accuracy_table(view)}
{_img(images, image_key(index, "edit_ratio"), "edit ratio of the kept pairs against the parent's")}
{_img(images, image_key(index, "weights"), "the selection's training weights")}
</section>"""


def section(views: Sequence[SelectionView], images: dict[str, Path | None]) -> str:
    """The page's selection sections, one per selected version; empty without a selection."""
    return "\n".join(_one(i, view, images) for i, view in enumerate(views, 1))
