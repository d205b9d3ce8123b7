"""Curation filters and the one runner that applies them.

datatrove's lesson in vectorised form: a filter is a name, a stable reason code and a predicate that
says which rows to DROP, written as a Polars expression, a DuckDB SQL predicate, or (for work that
needs its own index, like decontamination) a function returning a boolean mask. `run_filters` applies
them in order to a frame, counts rows in / dropped per filter, and returns the dropped rows tagged with
reason and detail. Adding a filter touches one place: `build_filters`.

Two kinds: row filters look at one pair at a time and run batch by batch while streaming; global
filters (`global_scope=True`: duplicate pairs, pairs per prompt) need every surviving pair at once and
run on a small key frame (pair id, prompt key, input order) after the row filters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import polars as pl

from pipeline.curate.config import Bounds, ConfigError, CurationConfig, Filters

PROMPT_KEY = "_prompt_key"  # internal column: identity.prompt_key of the pair's prompt
ORDER = "_order"  # internal column: global input order (source file order, then row)


@dataclass(frozen=True)
class Filter:
    name: str
    reason: str
    detail: str
    expr: pl.Expr | None = None
    sql: str | None = None  # DuckDB predicate, True = drop
    mask: Callable[[pl.DataFrame], pl.Series] | None = None
    global_scope: bool = False

    def drop_mask(self, frame: pl.DataFrame) -> pl.Series:
        """Boolean Series, True where the row is dropped (a null predicate keeps the row)."""
        if self.expr is not None:
            result = frame.select(self.expr.alias("drop")).to_series()
        elif self.sql is not None:
            result = _sql_mask(frame, self.sql, self.name)
        else:
            result = self.mask(frame)
        return result.fill_null(False)


@dataclass
class FilterCount:
    name: str
    reason: str
    rows_in: int = 0
    dropped: int = 0


def run_filters(
    frame: pl.DataFrame, filters: list[Filter], counts: dict[str, FilterCount]
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Apply `filters` in order. Returns (kept rows, dropped rows with `reason` and `detail` columns);
    adds this frame's rows in / dropped to `counts` (keyed by filter name), so batches accumulate."""
    dropped_parts = []
    for item in filters:
        count = counts.setdefault(item.name, FilterCount(item.name, item.reason))
        count.rows_in += frame.height
        if frame.height == 0:
            continue
        drop = item.drop_mask(frame)
        dropped = frame.filter(drop)
        if dropped.height:
            count.dropped += dropped.height
            dropped_parts.append(dropped.with_columns(reason=pl.lit(item.reason), detail=pl.lit(item.detail)))
            frame = frame.filter(~drop)
    dropped_all = pl.concat(dropped_parts, how="vertical") if dropped_parts else None
    return frame, dropped_all


def _sql_mask(frame: pl.DataFrame, predicate: str, name: str) -> pl.Series:
    connection = duckdb.connect()
    try:
        connection.register("pairs", frame.drop([c for c in frame.columns if c.startswith("_")]).to_arrow())
        result = connection.sql(f"SELECT coalesce(({predicate}), false) FROM pairs").to_arrow_table()
    except duckdb.Error as error:
        raise ConfigError(f"user filter {name!r}: DuckDB cannot evaluate {predicate!r}: {error}") from error
    finally:
        connection.close()
    column = result.column(0)
    if not str(column.type).startswith("bool"):
        raise ConfigError(f"user filter {name!r}: {predicate!r} gives {column.type}, not a boolean")
    return pl.Series(column.combine_chunks())


def check_sql_filters(filters: list[Filter], example: pl.DataFrame) -> None:
    """Evaluate each SQL filter on an empty frame of the pair columns: a bad predicate fails before any
    data is processed, with DuckDB's message and the filter's name."""
    empty = example.clear()
    for item in filters:
        if item.sql is not None:
            item.drop_mask(empty)


def _bounds_expr(column: str, bounds: Bounds) -> pl.Expr | None:
    conditions = []
    if bounds.min is not None:
        conditions.append(pl.col(column) < bounds.min)
    if bounds.max is not None:
        conditions.append(pl.col(column) > bounds.max)
    if not conditions:
        return None
    return pl.any_horizontal(conditions)


def _bounds_text(bounds: Bounds) -> str:
    low = "-inf" if bounds.min is None else f"{bounds.min:g}"
    high = "inf" if bounds.max is None else f"{bounds.max:g}"
    return f"[{low}, {high}]"


def build_filters(config: CurationConfig, contamination_mask: Callable | None = None) -> list[Filter]:
    """The configured filters, in the order they run (row filters first, then global ones)."""
    options = config.filters
    return [
        *_text_filters(options),
        *_length_filters(options),
        *_score_filters(options),
        *_user_filters(options),
        *_contamination_filters(options, contamination_mask),
        *_global_filters(options),
    ]


def _text_filters(options: Filters) -> list[Filter]:
    filters = []
    if options.empty_response:
        expr = (pl.col("chosen").str.strip_chars() == "") | (pl.col("rejected").str.strip_chars() == "")
        filters.append(Filter("empty_response", "empty_response", "chosen or rejected is empty", expr))
    if options.identical_responses:
        expr = pl.col("chosen").str.strip_chars() == pl.col("rejected").str.strip_chars()
        filters.append(Filter("identical_responses", "identical_responses", "chosen equals rejected", expr))
    return filters


def _length_filters(options: Filters) -> list[Filter]:
    filters = []
    if options.max_chars.prompt is not None:
        limit = options.max_chars.prompt
        expr = pl.col("len_prompt_chars") > limit
        filters.append(Filter("max_chars.prompt", "too_long", f"prompt over {limit} characters", expr))
    if options.max_chars.response is not None:
        limit = options.max_chars.response
        expr = pl.max_horizontal("len_chosen_chars", "len_rejected_chars") > limit
        filters.append(Filter("max_chars.response", "too_long", f"a response over {limit} characters", expr))
    if options.length_ratio is not None:
        longer = pl.max_horizontal("len_chosen_chars", "len_rejected_chars")
        shorter = pl.max_horizontal(pl.min_horizontal("len_chosen_chars", "len_rejected_chars"), pl.lit(1))
        expr = longer / shorter > options.length_ratio
        detail = f"longer response over {options.length_ratio:g}x the shorter (characters)"
        filters.append(Filter("length_ratio", "length_ratio", detail, expr))
    return filters


def _score_filters(options: Filters) -> list[Filter]:
    filters = []
    for name in ("edit_distance", "edit_ratio", "score_margin"):
        bounds = getattr(options, name)
        expr = _bounds_expr(name, bounds)
        if expr is not None:
            # a pair without scores has a null margin: the predicate is null and the pair is kept
            filters.append(Filter(name, name, f"{name} outside {_bounds_text(bounds)}", expr))
    return filters


def _user_filters(options: Filters) -> list[Filter]:
    filters = []
    for user in options.user:
        if user.drop_where is not None:
            sql, detail = user.drop_where, f"{user.name}: drop where {user.drop_where}"
        else:
            sql, detail = (
                f"NOT coalesce(({user.keep_where}), false)",
                f"{user.name}: keep where {user.keep_where}",
            )
        filters.append(Filter(f"user.{user.name}", "user_filter", detail, sql=sql))
    return filters


def _contamination_filters(options: Filters, contamination_mask: Callable | None) -> list[Filter]:
    if options.decontaminate is None or contamination_mask is None:
        return []
    spec = options.decontaminate
    detail = f"shares a {spec.n}-word n-gram with {spec.file}"
    return [Filter("decontaminate", "contaminated", detail, mask=contamination_mask)]


def _global_filters(options: Filters) -> list[Filter]:
    """Filters that need every row of the dataset (a duplicate or a prompt's count spans partitions)."""
    filters = []
    if options.duplicate_pair:
        expr = ~pl.col("pair_id").is_first_distinct()
        filters.append(
            Filter("duplicate_pair", "duplicate_pair", "same pair_id seen earlier", expr, global_scope=True)
        )
    if options.max_pairs_per_prompt is not None:
        limit = options.max_pairs_per_prompt
        expr = pl.int_range(pl.len()).over(PROMPT_KEY) >= limit
        detail = f"more than {limit} pairs for this prompt (first {limit} in input order kept)"
        filters.append(
            Filter("max_pairs_per_prompt", "max_pairs_per_prompt", detail, expr, global_scope=True)
        )
    return filters
