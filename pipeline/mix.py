"""Weights and mixing: how many pairs each group (a source, an edit bucket) contributes to a selection,
and each kept pair's training weight.

Mixing is per source: `mix: {hh: 0.5, gsm8k: 0.5}` (proportions of the kept pairs; normalised to sum
to 1) or `quotas: {hh: 1000, gsm8k: 500}` (counts). A source is named by its name, the part of the
pair's `source` before the format (`hh` for `hh:hh`), or by the whole `source`. Within a source the
selection's rule decides which pairs (for the `random` rule: a hash of the pair id and the seed), so
the same config gives the same mix on any machine. A source the mix does not name contributes nothing.

`allocate` turns shares into counts: the largest-remainder split of the total, each group capped at
the pairs it has. A short group is not topped up from the others: the proportions are the point of a
mix, so a shortfall makes the selection smaller (the summary says by how much). With no total (no
`keep`), the largest total every group can fill is taken.

Weights (`weight`: a DuckDB expression over the pair's columns plus `score` and `rank`; and/or
`source_weights: {hh: 2.0}`, multiplied) are written to the shards' `weight` column; the trainer's loss
is then the weighted mean (`dpop.trainer.DPOPTrainer.compute_loss`). A weight must be finite and >= 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import polars as pl

from pipeline.config import ConfigError
from pipeline.select_rules import evaluate_sql


def source_names(sources: pl.Series) -> pl.Series:
    """`name` of each `name:format` source."""
    return sources.str.replace(r":[^:]*$", "").alias("source_name")


def resolve_sources(sources: pl.Series, keys: Mapping[str, object], what: str) -> pl.Series:
    """Which key of `keys` names each row's source (null when none does). A key that names no source of
    the dataset is a config error listing the sources there are."""
    names = source_names(sources)
    known = set(names.unique().to_list()) | set(sources.unique().to_list())
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise ConfigError(
            f"names no source of this dataset: {', '.join(map(repr, unknown))} "
            f"(sources: {', '.join(sorted(set(names.unique().to_list())))})",
            key=what,
        )
    frame = pl.DataFrame({"source": sources, "name": names})
    return frame.select(
        pl.when(pl.col("source").is_in(list(keys)))
        .then(pl.col("source"))
        .when(pl.col("name").is_in(list(keys)))
        .then(pl.col("name"))
        .otherwise(None)
        .alias("group")
    ).to_series()


def allocate(sizes: Mapping[str, int], shares: Mapping[str, float], total: int | None) -> dict[str, int]:
    """Counts per group: `total` split by `shares` (largest remainder, ties by group name), each capped
    at its size; `total=None`: the largest total every group with a share can fill (a group with a
    share but no pairs makes it 0)."""
    positive = {g: float(s) for g, s in shares.items() if s > 0}
    norm = math.fsum(positive.values())
    fractions = {g: s / norm for g, s in positive.items()} if norm > 0 else {}
    fractions = {g: f for g, f in fractions.items() if f > 0}  # a share too small to count is none
    if not fractions:
        return {g: 0 for g in sizes}
    if total is None:
        limit = min(sizes.get(g, 0) / f for g, f in fractions.items())  # inf when f is tiny: capped below
        total = int(math.floor(min(limit, sum(sizes.values())) + 1e-9))
    exact = {g: total * f for g, f in fractions.items()}
    counts = {g: math.floor(v) for g, v in exact.items()}
    left = total - sum(counts.values())
    for g in sorted(exact, key=lambda g: (-(exact[g] - counts[g]), g))[:left]:
        counts[g] += 1
    return {g: min(counts.get(g, 0), sizes.get(g, 0)) for g in sizes}


def pair_weights(
    frame: pl.DataFrame,
    expression: str | None,
    source_weights: Mapping[str, float] | None,
    kept: np.ndarray | None = None,
) -> pl.Series | None:
    """Each row's weight (None when the selection sets no weights): the expression's value times its
    source's weight (1 for a source `source_weights` does not name). Only the `kept` rows (a boolean
    mask; default all) need a valid weight; the others get null."""
    if expression is None and not source_weights:
        return None
    weights = np.ones(frame.height, dtype=np.float64)
    if expression is not None:
        weights *= evaluate_sql(frame, expression, "weight").fill_null(float("nan")).to_numpy()
    if source_weights:
        group = resolve_sources(frame["source"], source_weights, "source_weights")
        factor = group.replace_strict(dict(source_weights), default=1.0, return_dtype=pl.Float64)
        weights *= factor.to_numpy()
    kept = np.ones(frame.height, dtype=bool) if kept is None else np.asarray(kept, dtype=bool)
    bad = kept & (~np.isfinite(weights) | (weights < 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ConfigError(
            f"gives pair {frame['pair_id'][row]} the weight {float(weights[row])!r}: weights must be "
            "finite and >= 0",
            key="weight",
        )
    return pl.Series("weight", np.where(kept, weights, np.nan), dtype=pl.Float32).fill_nan(None)
