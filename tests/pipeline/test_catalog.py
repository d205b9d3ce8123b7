"""The catalog's write paths: single records and batches (one transaction, all or nothing)."""

from __future__ import annotations

import pytest

from pipeline.catalog import Catalog


def test_records_and_edges_round_trip(workspace):
    catalog = Catalog(workspace)
    catalog.record_artifact("a" * 64, "source_file", uri="file:///x", rows=3, meta={"format": "flat"})
    catalog.record_artifact("pairs-1", "pairs", rows=2, parents={"a" * 64: "ingested_from"})
    catalog.record_edge("a" * 64, "pairs-1", "also_from")
    assert catalog.get("pairs-1").rows == 2
    assert catalog.get("a" * 64).meta == {"format": "flat"}
    assert catalog.parents("pairs-1") == [("a" * 64, "also_from"), ("a" * 64, "ingested_from")]
    assert catalog.children("a" * 64) == [("pairs-1", "also_from"), ("pairs-1", "ingested_from")]


def test_a_batch_commits_together_or_not_at_all(workspace):
    catalog = Catalog(workspace)
    with catalog.batch() as batch:
        batch.record_artifact("ds-1", "dataset", rows=10)
        batch.record_artifact("shard-1", "shard", rows=10, parents={"ds-1": "part_of"})
    assert [a.id for a in catalog.find()] == ["ds-1", "shard-1"]

    with pytest.raises(RuntimeError), catalog.batch() as batch:
        batch.record_artifact("ds-2", "dataset", rows=5)
        raise RuntimeError("killed mid-record")
    assert catalog.get("ds-2") is None
    assert catalog.parents("shard-1") == [("ds-1", "part_of")]
