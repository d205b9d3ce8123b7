"""DPOP shards: Arrow IPC stream files following the `dpop_shard` contract, and their manifest.

The IPC *stream* format is what `datasets.Dataset.from_file` reads; `pyarrow.memory_map` opens it
zero-copy, so a trainer maps the shards instead of loading them. Each shard and the manifest are
written to a temporary name and renamed, and a reader trusts only files listed in the manifest with a
matching size and sha256, so neither a killed build nor bytes changed since (a bad disk, a stray
write) yield a shard that passes. The sha256 is computed once per file version: the verdict is kept in
`<ws>/cache/verified-shards.json`, keyed by the file's path, size, mtime, ctime and inode, so opening
the same unchanged shard again costs a stat, not a read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.atomic import atomic_file, write_text_atomic
from pipeline.contracts import load_contract
from pipeline.workspace import Workspace

CONTRACT = "dpop_shard"
MANIFEST = "manifest.json"
VERDICTS_FILE = "verified-shards.json"  # in <ws>/cache/
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
    writer = SplitWriter(out_dir, split, rows_per_shard)
    try:
        writer.write(table)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


class SplitWriter:
    """Stream dpop_shard rows into `<split>-NNNNN.arrow` shards of at most `rows_per_shard` rows.

    `write` may be called with any number of tables (a build writes batch by batch, so a split never
    sits in memory whole); each shard is written under a temporary name and renamed when full or on
    `close`, so only finished shards carry a final name."""

    def __init__(self, out_dir: Path, split: str, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
        self.out_dir, self.split, self.rows_per_shard = Path(out_dir), split, rows_per_shard
        self.contract = load_contract(CONTRACT)
        self.infos: list[ShardInfo] = []
        self._open: tuple[contextlib.ExitStack, pa.ipc.RecordBatchStreamWriter, Path, int] | None = None

    def write(self, table: pa.Table) -> None:
        table = self.contract.conform(table)
        start = 0
        while start < table.num_rows:
            if self._open is None:
                self._start_shard(table.schema)
            stack, writer, path, rows = self._open
            piece = table.slice(start, self.rows_per_shard - rows)
            writer.write_table(piece, max_chunksize=8192)
            start += piece.num_rows
            self._open = (stack, writer, path, rows + piece.num_rows)
            if rows + piece.num_rows == self.rows_per_shard:
                self._finish_shard()

    def close(self) -> list[ShardInfo]:
        if self._open is None and not self.infos:
            self._start_shard(self.contract.schema())
        if self._open is not None:
            self._finish_shard()
        return list(self.infos)

    def abort(self) -> None:
        """Drop the shard being written (its temporary file is removed)."""
        if self._open is not None:
            stack, writer, _, _ = self._open
            self._open = None
            writer.close()
            stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def _start_shard(self, schema: pa.Schema) -> None:
        path = self.out_dir / f"{self.split}-{len(self.infos):05d}.arrow"
        stack = contextlib.ExitStack()
        tmp = stack.enter_context(atomic_file(path))
        sink = stack.enter_context(pa.OSFile(str(tmp), "wb"))
        self._open = (stack, pa.ipc.new_stream(sink, schema), path, 0)

    def _finish_shard(self) -> None:
        stack, writer, path, rows = self._open
        self._open = None
        writer.close()
        stack.close()  # closes the file, then fsyncs and renames it to its final name
        self.infos.append(ShardInfo(path.name, rows, path.stat().st_size, _file_sha256(path)))


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json last: a dataset version exists only once its manifest does."""
    manifest = {"contract": {"name": CONTRACT, "version": load_contract(CONTRACT).version}, **manifest}
    return write_text_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def load_manifest(workspace: Workspace, dataset_id: str) -> dict[str, Any]:
    path = workspace.dataset_dir(dataset_id) / MANIFEST
    if not path.is_file():
        raise ShardError(f"dataset version {dataset_id!r} not found (no {path})")
    return json.loads(path.read_text(encoding="utf-8"))


def shard_paths(workspace: Workspace, dataset_id: str, split: str, verify: bool = True) -> list[Path]:
    """The shard files of a split as listed in the manifest, checked against their recorded size and
    (unless `verify=False`) sha256; a mismatch raises `ShardError` naming the file and both digests."""
    manifest = load_manifest(workspace, dataset_id)
    folder = workspace.dataset_dir(dataset_id)
    listed = [(folder / info["file"], info) for info in manifest["splits"].get(split, {}).get("shards", [])]
    for path, info in listed:
        if not path.is_file():
            raise ShardError(f"shard {path} listed in {folder / MANIFEST} is missing")
        if path.stat().st_size != info["bytes"]:
            raise ShardError(
                f"shard {path} has {path.stat().st_size} bytes, but {folder / MANIFEST} records {info['bytes']}"
            )
    if verify:
        verdicts = VerifiedShards(workspace.cache_dir / VERDICTS_FILE)
        for path, info in listed:
            verdicts.check(path, info["sha256"], folder / MANIFEST)
        verdicts.save()
    return [path for path, _ in listed]


class VerifiedShards:
    """Shards whose sha256 was checked, by file version (path, size, mtime_ns, ctime_ns, inode): a file
    rewritten or touched since gets a new key and is hashed again. Only matches are remembered. The
    file is a cache: unreadable means empty, a write lost to a concurrent reader means one more hash."""

    def __init__(self, path: Path):
        self.path = path
        self.changed = False
        try:
            self.entries: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["shards"]
        except (OSError, ValueError, KeyError, TypeError):
            self.entries = {}

    @staticmethod
    def _version(stat: os.stat_result) -> list[int]:
        return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]

    def check(self, path: Path, expected: str, manifest_path: Path) -> None:
        """Raise `ShardError` unless `path`'s bytes hash to `expected` (read only when not known good)."""
        key = str(path.resolve())
        before = self._version(path.stat())
        known = self.entries.get(key)
        if isinstance(known, dict) and known.get("version") == before and known.get("sha256") == expected:
            return
        actual = _file_sha256(path)
        if actual != expected:
            raise ShardError(
                f"shard {path} is corrupt: its sha256 is {actual}, {manifest_path} records {expected}"
            )
        if self._version(path.stat()) == before:  # not changed while we read it
            self.entries[key] = {"version": before, "sha256": actual}
            self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        live = {key: entry for key, entry in self.entries.items() if Path(key).is_file()}
        # A read-only cache folder: the next open hashes again, which is correct, only slower.
        with contextlib.suppress(OSError):
            write_text_atomic(self.path, json.dumps({"shards": live}, sort_keys=True) + "\n")
        self.changed = False


def _file_sha256(path: Path) -> str:
    """Streamed in 1 MiB reads: a shard of any size costs constant memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def open_shard(path: Path) -> pa.Table:
    """Memory-map one shard (zero-copy: the table's buffers point into the mapped file)."""
    return pa.ipc.open_stream(pa.memory_map(str(path), "r")).read_all()


def open_split(workspace: Workspace, dataset_id: str, split: str) -> pa.Table:
    """All shards of a split as one memory-mapped table."""
    tables = [open_shard(path) for path in shard_paths(workspace, dataset_id, split)]
    return pa.concat_tables(tables) if tables else shard_schema().empty_table()
