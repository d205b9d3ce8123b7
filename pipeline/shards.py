"""DPOP shards: Arrow IPC stream files following the `dpop_shard` contract, and their manifest.

The IPC *stream* format is what `datasets.Dataset.from_file` reads; `pyarrow.memory_map` opens it
zero-copy, so a trainer maps the shards instead of loading them. Each shard and the manifest are
written to a temporary name and renamed, and a reader trusts only files listed in the manifest with a
matching size (and, on `verify=True`, sha256), so a killed build never yields a shard that passes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.atomic import atomic_file, write_text_atomic
from pipeline.contracts import load_contract
from pipeline.workspace import Workspace

CONTRACT = "dpop_shard"
MANIFEST = "manifest.json"
SPLITS = ("train", "eval")
DEFAULT_ROWS_PER_SHARD = 50_000


class ShardError(RuntimeError):
    """A dataset version is missing, incomplete or does not match its manifest."""


@dataclass(frozen=True)
class ShardInfo:
    file: str
    rows: int
    bytes: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


def shard_schema() -> pa.Schema:
    return load_contract(CONTRACT).schema()


def write_split(
    out_dir: Path, split: str, table: pa.Table, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
) -> list[ShardInfo]:
    """Write `table` (dpop_shard rows) as `<split>-NNNNN.arrow` files of at most `rows_per_shard` rows.

    An empty split still gets one (empty) shard so readers always find a schema."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    table = load_contract(CONTRACT).conform(table)
    infos = []
    starts = range(0, max(table.num_rows, 1), rows_per_shard)
    for index, start in enumerate(starts):
        piece = table.slice(start, rows_per_shard)
        name = f"{split}-{index:05d}.arrow"
        infos.append(_write_shard(out_dir / name, piece))
    return infos


def _write_shard(path: Path, table: pa.Table) -> ShardInfo:
    with atomic_file(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=8192)
    data = path.read_bytes()
    return ShardInfo(path.name, table.num_rows, len(data), hashlib.sha256(data).hexdigest())


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json last: a dataset version exists only once its manifest does."""
    manifest = {"contract": {"name": CONTRACT, "version": load_contract(CONTRACT).version}, **manifest}
    return write_text_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def load_manifest(workspace: Workspace, dataset_id: str) -> dict[str, Any]:
    path = workspace.dataset_dir(dataset_id) / MANIFEST
    if not path.is_file():
        raise ShardError(f"dataset version {dataset_id!r} not found (no {path})")
    return json.loads(path.read_text(encoding="utf-8"))


def shard_paths(workspace: Workspace, dataset_id: str, split: str, verify: bool = False) -> list[Path]:
    """The shard files of a split as listed in the manifest, checked against their recorded size/sha256."""
    manifest = load_manifest(workspace, dataset_id)
    folder = workspace.dataset_dir(dataset_id)
    paths = []
    for info in manifest["splits"].get(split, {}).get("shards", []):
        path = folder / info["file"]
        if not path.is_file() or path.stat().st_size != info["bytes"]:
            raise ShardError(f"shard {path} is missing or does not match the manifest")
        if verify and hashlib.sha256(path.read_bytes()).hexdigest() != info["sha256"]:
            raise ShardError(f"shard {path} fails its sha256 check")
        paths.append(path)
    return paths


def open_shard(path: Path) -> pa.Table:
    """Memory-map one shard (zero-copy: the table's buffers point into the mapped file)."""
    return pa.ipc.open_stream(pa.memory_map(str(path), "r")).read_all()


def open_split(workspace: Workspace, dataset_id: str, split: str) -> pa.Table:
    """All shards of a split as one memory-mapped table."""
    tables = [open_shard(path) for path in shard_paths(workspace, dataset_id, split)]
    return pa.concat_tables(tables) if tables else shard_schema().empty_table()
