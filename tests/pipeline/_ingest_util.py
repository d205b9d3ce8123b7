"""Helpers for the ingest tests: write small inputs, read outputs, check conservation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.ingest import IngestResult


def write_jsonl(path: Path, records: list, newline: str = "\n") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + newline for r in records), encoding="utf-8")
    return path


def pairs_of(result: IngestResult) -> list[dict]:
    return pq.read_table(result.pairs_path).to_pylist()


def rejections_of(result: IngestResult) -> list[dict]:
    return pq.read_table(result.rejections_path).to_pylist()


def reasons_by_row(result: IngestResult) -> dict[int, str]:
    return {r["source_row"]: r["reason"] for r in rejections_of(result)}


def assert_conserved(result: IngestResult) -> None:
    """Every record read is kept (>= 1 pair) or rejected exactly once, and the files agree."""
    pairs = pq.read_table(result.pairs_path, columns=["source_row"]).column(0).to_pylist()
    rejected = pq.read_table(result.rejections_path, columns=["source_row", "reason"]).to_pylist()
    kept_rows = set(pairs)
    rejected_rows = [r["source_row"] for r in rejected]
    assert result.rows_read == result.rows_kept + result.rows_rejected
    assert len(kept_rows) == result.rows_kept
    assert len(pairs) == result.pairs_written
    assert len(rejected_rows) == len(set(rejected_rows)) == result.rows_rejected
    assert not kept_rows & set(rejected_rows)
    assert dict(Counter(r["reason"] for r in rejected)) == result.rejected_by_reason
