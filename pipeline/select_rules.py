"""Selection rules: one small function per rule, from a pair's columns to a score, and the order the
selection takes the scores in. Adding a rule touches this file only: write the function, decorate it
with `@rule(name, order=..., needs=...)`.

Every rule gets the candidate frame (`pipeline.select.candidate_frame`: one row per pair, with the
pair's columns, its token counts and the log-probs of the models the selection was given) and the
selection's config, and returns one float per row (null where the pair cannot be scored: it is never
selected). Column names the rules read:

    ref_chosen_logps, ref_rejected_logps       log πref(y_w|x), log πref(y_l|x): summed over response tokens
    probe_chosen_logps, probe_rejected_logps   log πθ(y_w|x), log πθ(y_l|x) of the probe (a DPO-trained model)
    chosen_score, rejected_score, score_margin  the external scores of the source, where it has them
    edit_ratio, edit_distance, len_*            the build's scores of the pair

`order`: "desc" keeps the highest scores, "asc" the lowest, "abs_asc" the scores nearest zero; ties
are broken by pair_id (then split and row), so a selection is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import polars as pl

from pipeline.config import ConfigError

REF = ("ref_chosen_logps", "ref_rejected_logps")
PROBE = ("probe_chosen_logps", "probe_rejected_logps")
ORDERS = ("desc", "asc", "abs_asc")
DEFAULT_EDIT_BUCKETS = (0.0, 0.05, 0.15, 0.3, 1.0)


@dataclass(frozen=True)
class Rule:
    name: str
    score: Callable[[pl.DataFrame, Any], pl.Series]
    order: str  # one of ORDERS
    needs: tuple[str, ...]  # "reference", "probe": the log-probs the rule reads
    groups: Callable[[pl.DataFrame, Any], tuple[pl.Series, dict[str, float]]] | None = None


RULES: dict[str, Rule] = {}


def rule(name: str, order: str, needs: tuple[str, ...] = (), groups: Callable | None = None) -> Callable:
    """Register a scoring function as the rule `name`."""

    def register(function: Callable[[pl.DataFrame, Any], pl.Series]) -> Callable:
        RULES[name] = Rule(name, function, order, needs, groups)
        return function

    return register


def implicit_margin(frame: pl.DataFrame, beta: float) -> pl.Series:
    """β·[(log πθ(y_w) − log πref(y_w)) − (log πθ(y_l) − log πref(y_l))]: DPO's implicit reward gap
    (Rafailov et al. 2023, r(x, y) = β log πθ(y|x)/πref(y|x)) of the probe against the reference."""
    chosen = frame["probe_chosen_logps"].cast(pl.Float64) - frame["ref_chosen_logps"].cast(pl.Float64)
    rejected = frame["probe_rejected_logps"].cast(pl.Float64) - frame["ref_rejected_logps"].cast(pl.Float64)
    return (beta * (chosen - rejected)).alias("score")


# --- the rules ---------------------------------------------------------------------------------------


@rule("margin", order="desc", needs=("reference", "probe"))
def margin(frame: pl.DataFrame, config: Any) -> pl.Series:
    """BeeS, margin maximisation (Deng et al., "Less is More: Improving LLM Alignment via Preference
    Data Selection", arXiv 2502.14560): noisy pairs (small or negative margins) shrink DPO's parameters,
    so keep the pairs with the largest margin. Two margin sources, each mapped to [0, 1] by clipping:

        m_im = β·[log πθ(y_w)/πref(y_w) − log πθ(y_l)/πref(y_l)]      implicit, from the probe (DPO reward gap)
        m_ex = (s(y_w) − s(y_l)) / external_scale                       external, the source's scores
        s_im = clip(m_im, 0, 1),  s_ex = clip(m_ex, 0, 1)

    fused per pair (`fusion`): `mul` s_im·s_ex (both margins must agree), `mean` (s_im + s_ex)/2, or
    `bayes` σ(m_im + m_ex), which is σ(m_im)σ(m_ex) / [σ(m_im)σ(m_ex) + (1−σ(m_im))(1−σ(m_ex))]: the two
    margins as independent preference probabilities (our reading of the later versions' "Bayesian
    Aggregation", unverified). A pair without external scores is scored by s_im alone (σ(m_im) under
    `bayes`). Checked: the abstracts and the principle; not readable here: the method section, so the
    normalisation before clipping, the fusion and the equation numbers are ours (docs/selection.md)."""
    implicit = implicit_margin(frame, config.beta)
    scores = frame["score_margin"] if "score_margin" in frame.columns else pl.Series([None] * frame.height)
    parts = pl.DataFrame({"im": implicit, "ex": scores.cast(pl.Float64) / config.external_scale})
    im, ex = pl.col("im").clip(0.0, 1.0), pl.col("ex").clip(0.0, 1.0)
    fused = {
        "mul": pl.when(pl.col("ex").is_null()).then(im).otherwise(im * ex),
        "mean": pl.when(pl.col("ex").is_null()).then(im).otherwise((im + ex) / 2),
        "bayes": 1 / (1 + (-(pl.col("im") + pl.col("ex").fill_null(0.0))).exp()),
    }[config.fusion]
    return parts.select(fused.alias("score")).to_series()


@rule("reference_difficulty", order="abs_asc", needs=("reference",))
def reference_difficulty(frame: pl.DataFrame, config: Any) -> pl.Series:
    """Chen et al., "Preference Learning Algorithms Do Not Learn Preference Rankings" (arXiv 2405.19534):
    the reference ranks a pair correctly iff G > 0, with

        G = log πref(y_w|x) − log πref(y_l|x)

    and DPO rarely flips a ranking the reference gets wrong: the further G is below 0, the smaller the
    loss must get before the model ranks the pair right (their difficulty formula). The score is G; a
    band (`band_min`, `band_max`) selects by it, and within the band the pairs nearest the reference's
    decision boundary (|G| smallest) come first: the ones it is least sure of, on either side. The
    selection prints the reference's ranking accuracy, mean(G > 0)."""
    return (frame["ref_chosen_logps"].cast(pl.Float64) - frame["ref_rejected_logps"].cast(pl.Float64)).alias(
        "score"
    )


@rule("small_gap", order="asc", needs=("reference", "probe"))
def small_gap(frame: pl.DataFrame, config: Any) -> pl.Series:
    """Qi, Xu and Jin, "Difficulty-Based Preference Data Selection by DPO Implicit Reward Gap"
    (arXiv 2508.04149): with a DPO-trained probe πθ and its reference,

        Δr = r(x, y_w) − r(x, y_l),   r(x, y) = β log πθ(y|x) / πref(y|x)

    smaller gaps are harder pairs; keep the smallest Δr. Signed, ascending, as the authors' released
    selection code sorts it (so pairs the probe ranks wrong come first)."""
    return implicit_margin(frame, config.beta)


@rule("low_edit", order="asc")
def low_edit(frame: pl.DataFrame, config: Any) -> pl.Series:
    """The pairs where chosen and rejected differ least (character edit ratio, from the build's scores):
    where DPO lowers log p(chosen) most and DPOP's penalty matters most (Pal et al., arXiv 2402.13228, §3)."""
    return frame["edit_ratio"].cast(pl.Float64).alias("score")


def edit_buckets(frame: pl.DataFrame, config: Any) -> tuple[pl.Series, dict[str, float]]:
    """Each pair's edit-ratio bucket and each bucket's share of the kept pairs."""
    edges = list(config.edit_buckets)
    labels = [
        f"edit[{low:g},{high:g}{']' if i == len(edges) - 2 else ')'}"
        for i, (low, high) in enumerate(zip(edges, edges[1:], strict=False))
    ]
    index = np.searchsorted(
        np.asarray(edges[1:-1]), frame["edit_ratio"].cast(pl.Float64).fill_null(1.0).to_numpy(), side="right"
    )
    shares = config.edit_shares or tuple(1.0 for _ in labels)
    return pl.Series("group", [labels[i] for i in index], dtype=pl.String), dict(
        zip(labels, shares, strict=True)
    )


@rule("edit_quota", order="desc", groups=edit_buckets)
def edit_quota(frame: pl.DataFrame, config: Any) -> pl.Series:
    """Quotas per edit-ratio bucket (`edit_buckets` edges, `edit_shares` each bucket's share of the kept
    pairs, equal by default): a seeded random sample within each bucket (score: a hash of the pair id and
    the seed), so a selection can over-weight the low-edit pairs where DPOP matters most without dropping
    the others."""
    return stable_uniform(frame["pair_id"], config.seed)


@rule("sql", order="desc")
def sql(frame: pl.DataFrame, config: Any) -> pl.Series:
    """Any DuckDB expression over the pair's columns as the score (`score`, highest first, or lowest with
    `ascending`): for users' own rules, e.g. `(probe_chosen_logps - ref_chosen_logps) / chosen_tokens`."""
    if not config.score:
        raise ConfigError('the sql rule needs a score expression (--score "…")', key="score")
    return evaluate_sql(frame, config.score, "score")


@rule("random", order="desc")
def random(frame: pl.DataFrame, config: Any) -> pl.Series:
    """A seeded random subset: a hash of the pair id and the seed (the baseline every rule is compared to)."""
    return stable_uniform(frame["pair_id"], config.seed)


# --- helpers -----------------------------------------------------------------------------------------


def stable_uniform(pair_ids: pl.Series, seed: int) -> pl.Series:
    """A number in [0, 1) per pair from blake2b(seed, pair id): the same on every machine and version
    (Polars' own hash may change between releases), so the same config gives the same sample."""
    import hashlib

    values = [
        int.from_bytes(hashlib.blake2b(f"{seed}:{pid}".encode(), digest_size=8).digest(), "big") / 2**64
        for pid in pair_ids.to_list()
    ]
    return pl.Series("score", values, dtype=pl.Float64)


def evaluate_sql(frame: pl.DataFrame, expression: str, what: str) -> pl.Series:
    """One value per row of `frame` from a DuckDB expression over its columns (table `pairs`). The
    statement is checked read-only and runs without file access: an expression reads these rows only."""
    from pipeline.sql import ReadOnlyError, check_read_only

    statement = f"SELECT CAST(({expression}) AS DOUBLE) AS value FROM pairs"
    try:
        check_read_only(statement)
    except (ReadOnlyError, duckdb.Error) as error:
        raise ConfigError(f": {expression!r} is not one read-only expression: {error}", key=what) from None
    connection = duckdb.connect(":memory:")
    try:
        connection.register("pairs", frame.to_arrow())
        connection.execute("SET enable_external_access = false")
        result = connection.sql(statement).to_arrow_table()
    except duckdb.Error as error:
        message = str(error).splitlines()[0]
        raise ConfigError(f": DuckDB cannot evaluate {expression!r}: {message}", key=what) from None
    finally:
        connection.close()
    values = pl.Series(what, result.column(0).combine_chunks()).cast(pl.Float64)
    return values.fill_nan(None)
