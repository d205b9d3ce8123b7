"""The build's partitioning and batching helpers (pipeline/build_parts.py), property-based: any file
sizes, partition sizes, row groups and batch sizes."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.build_parts import plan_partitions, read_rows, rebatch


@dataclass(frozen=True)
class Ingest:
    ingest_id: str
    source_uri: str
    pairs_path: Path


def numbers(start: int, count: int) -> pa.Table:
    return pa.table({"n": pa.array(range(start, start + count), pa.int64())})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=4), partition_rows=st.integers(1, 17))
def test_partitions_cover_every_row_once_in_input_order(sizes: list[int], partition_rows: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        ingests = []
        for index, size in enumerate(sizes):
            path = Path(folder) / f"{index}.parquet"
            pq.write_table(numbers(0, size), path, row_group_size=7)
            ingests.append(Ingest(f"ing{index}", f"file:///{index}", path))
        partitions = plan_partitions(ingests, partition_rows)
    assert [p.index for p in partitions] == list(range(len(partitions)))
    assert all(0 < p.rows <= partition_rows for p in partitions)
    # consecutive global orders, and per file consecutive row ranges from 0 to its size
    assert [p.offset for p in partitions] == [
        sum(q.rows for q in partitions[:i]) for i in range(len(partitions))
    ]
    for ingest, size in zip(ingests, sizes, strict=True):
        ranges = [(p.start, p.stop) for p in partitions if p.ingest_id == ingest.ingest_id]
        covered = [row for start, stop in ranges for row in range(start, stop)]
        assert covered == list(range(size))


def test_partition_rows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="partition_rows must be positive"):
        plan_partitions([], 0)


@given(sizes=st.lists(st.integers(0, 30), max_size=8), rows=st.integers(1, 25))
def test_rebatch_keeps_rows_and_cuts_fixed_sizes(sizes: list[int], rows: int) -> None:
    tables, start = [], 0
    for size in sizes:
        tables.append(numbers(start, size))
        start += size
    out = list(rebatch(tables, rows))
    assert all(t.num_rows == rows for t in out[:-1]) and all(0 < t.num_rows <= rows for t in out)
    assert all(t.column(0).num_chunks == 1 for t in out)  # contiguous: layout never follows the input's
    values = [v for t in out for v in t.column("n").to_pylist()]
    assert values == list(range(start))


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 60),
    row_group=st.integers(1, 20),
    bounds=st.tuples(st.integers(0, 60), st.integers(0, 60)),
    batch=st.integers(1, 16),
)
def test_read_rows_reads_exactly_the_range(
    size: int, row_group: int, bounds: tuple[int, int], batch: int
) -> None:
    start, stop = sorted(min(b, size) for b in bounds)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.parquet"
        pq.write_table(numbers(0, size), path, row_group_size=row_group)
        out = list(read_rows(path, start, stop, batch))
    assert [v for t in out for v in t.column("n").to_pylist()] == list(range(start, stop))
    assert all(t.num_rows == batch for t in out[:-1])


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2), st.integers(0, 2)), max_size=60
    ),
    limit=st.integers(1, 4),
)
def test_global_filters_on_sorted_keys_equal_the_polars_filters(keys, limit: int) -> None:
    """The driver's sorts over numpy keys drop exactly what the filters' Polars expressions drop."""
    import numpy as np
    import polars as pl

    from pipeline.build import _beyond_first, _repeats
    from pipeline.curate.config import load_curation_config
    from pipeline.curate.filters import ORDER, PROMPT_KEY, FilterCount, build_filters, run_filters

    big = 2**64 - 1  # u64 extremes too
    columns = [np.array([k[i] for k in keys], dtype=np.uint64) * np.uint64(big // 3) for i in range(4)]
    frame = pl.DataFrame(
        {
            ORDER: np.arange(len(keys), dtype=np.int64),
            "pair_id": pl.DataFrame({"hi": columns[0], "lo": columns[1]}).to_struct(),
            PROMPT_KEY: pl.DataFrame({"hi": columns[2], "lo": columns[3]}).to_struct(),
        }
    )
    config = load_curation_config({"filters": {"max_pairs_per_prompt": limit}})
    global_filters = [f for f in build_filters(config) if f.global_scope]
    kept, _ = run_filters(frame, global_filters, {n: FilterCount(n, n) for n in ("a",)})
    alive = np.flatnonzero(~_repeats(columns[0], columns[1]))
    alive = alive[~_beyond_first(columns[2][alive], columns[3][alive], limit)]
    assert alive.tolist() == kept[ORDER].to_list()
