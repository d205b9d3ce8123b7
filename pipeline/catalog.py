"""The catalog: a DuckDB file in the workspace recording every artefact and the edges between them.

Artefact kinds: `source_file` (id = sha256 of its bytes), `pairs` and `rejections` (per source file
version), `dataset` (a dataset version id), `shard`, `model`, `run`. An edge says that `child` was made
from `parent` (relation: e.g. `ingested_from`, `curated_from`, `tokenized_from`, `reference_logps_from`,
`trained_on`, `base_model`, `reference_model`, `produced`).

Writes are short transactions under a file lock, so concurrent processes (a flow and `dpop sql`,
two ranks of a training job) never corrupt the file; DuckDB itself allows one writer process.

A file that cannot be read (truncated, corrupt, not a DuckDB file) raises `CatalogError`, one line
naming the file: every command goes through `Catalog.connect`, so none shows DuckDB's stack trace. The
catalog holds nothing the workspace files do not also hold: `dpop catalog rebuild`
(`pipeline.catalog_rebuild`) recreates it from them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import duckdb
from filelock import FileLock

from pipeline.workspace import Workspace

SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    id VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    uri VARCHAR,
    rows BIGINT,
    created_at TIMESTAMPTZ NOT NULL,
    meta JSON
);
CREATE TABLE IF NOT EXISTS edges (
    parent_id VARCHAR NOT NULL,
    child_id VARCHAR NOT NULL,
    relation VARCHAR NOT NULL,
    PRIMARY KEY (parent_id, child_id, relation)
);
-- the model registry's events (pipeline.registry), replayed from <ws>/registry.jsonl on rebuild
CREATE TABLE IF NOT EXISTS registry_events (
    seq BIGINT PRIMARY KEY,
    recorded_at TIMESTAMPTZ NOT NULL,
    event VARCHAR NOT NULL,
    alias VARCHAR,
    model_id VARCHAR,
    model_dir VARCHAR,
    previous_model_id VARCHAR,
    reason VARCHAR,
    actor VARCHAR,
    details JSON
);
"""


class CatalogError(RuntimeError):
    """The catalog file cannot be opened or read (truncated, corrupt, not a DuckDB file, held by another
    process): one line naming the file and what to do."""


@dataclass(frozen=True)
class Artifact:
    id: str
    kind: str
    uri: str | None
    rows: int | None
    created_at: datetime
    meta: dict[str, Any]


class Catalog:
    """Record and read artefacts and edges in `<workspace>/catalog.duckdb`."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.path = workspace.catalog_path
        self._lock = FileLock(str(self.path) + ".lock", timeout=600)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection under the workspace's catalog lock. Raises CatalogError when the
        file cannot be read, also when that shows only inside the `with` block (a damaged block)."""
        with self._lock:
            if read_only and not self.path.exists():
                read_only = False  # first use: create the file and schema
            try:
                connection = _connect_with_retry(str(self.path), read_only)
            except duckdb.Error as error:
                raise self._error(error) from error
            try:
                if not read_only:
                    connection.execute(SCHEMA)
                yield connection
            except duckdb.Error as error:
                if _about_the_file(error):
                    raise self._error(error) from error
                raise
            finally:
                connection.close()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the catalog's lock: no connection opens meanwhile (`dpop catalog rebuild` swaps the file)."""
        with self._lock:
            yield

    def _error(self, error: duckdb.Error) -> CatalogError:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if _is_lock_conflict(error):
            return CatalogError(f"catalog {self.path} is held by another process: {detail}")
        return CatalogError(
            f"catalog {self.path} cannot be read ({detail}); `dpop catalog rebuild -w {self.workspace.root}` "
            "recreates it from the workspace files (the old file is kept beside it)"
        )

    @contextmanager
    def batch(self) -> Iterator[CatalogBatch]:
        """Record several artefacts and edges in one connection and one transaction (all or nothing):
        each connection costs tens of milliseconds, so a stage records its outputs together."""
        with self.connect() as connection:
            connection.execute("BEGIN TRANSACTION")
            yield CatalogBatch(connection)
            connection.execute("COMMIT")

    def record_artifact(
        self,
        id: str,
        kind: str,
        uri: str | None = None,
        rows: int | None = None,
        meta: dict[str, Any] | None = None,
        parents: dict[str, str] | None = None,
    ) -> None:
        """Insert or update an artefact, with edges from `parents` ({parent_id: relation})."""
        with self.batch() as batch:
            batch.record_artifact(id, kind, uri, rows, meta, parents)

    def record_edge(self, parent_id: str, child_id: str, relation: str) -> None:
        with self.batch() as batch:
            batch.record_edge(parent_id, child_id, relation)

    def get(self, id: str) -> Artifact | None:
        with self.connect(read_only=True) as connection:
            if not _has_tables(connection):
                return None
            row = connection.execute("SELECT * FROM artifacts WHERE id = ?", [id]).fetchone()
        return _artifact(row) if row else None

    def find(self, kind: str | None = None) -> list[Artifact]:
        with self.connect(read_only=True) as connection:
            if not _has_tables(connection):
                return []
            sql = "SELECT * FROM artifacts" + (" WHERE kind = ?" if kind else "") + " ORDER BY created_at, id"
            rows = connection.execute(sql, [kind] if kind else []).fetchall()
        return [_artifact(row) for row in rows]

    def parents(self, id: str) -> list[tuple[str, str]]:
        """[(parent_id, relation)] of an artefact."""
        with self.connect(read_only=True) as connection:
            if not _has_tables(connection):
                return []
            return connection.execute(
                "SELECT parent_id, relation FROM edges WHERE child_id = ? ORDER BY relation, parent_id", [id]
            ).fetchall()

    def children(self, id: str) -> list[tuple[str, str]]:
        """[(child_id, relation)] of an artefact."""
        with self.connect(read_only=True) as connection:
            if not _has_tables(connection):
                return []
            return connection.execute(
                "SELECT child_id, relation FROM edges WHERE parent_id = ? ORDER BY relation, child_id", [id]
            ).fetchall()


class CatalogBatch:
    """Writes inside one open transaction (see `Catalog.batch`)."""

    def __init__(self, connection: duckdb.DuckDBPyConnection):
        self._connection = connection
        # `created_at` of what is recorded; None: now. `dpop catalog rebuild` sets it to when each
        # on-disk record was written.
        self.recorded_at: datetime | None = None

    def _created_at(self) -> datetime:
        return self.recorded_at or datetime.now(timezone.utc)

    def record_artifact(
        self,
        id: str,
        kind: str,
        uri: str | None = None,
        rows: int | None = None,
        meta: dict[str, Any] | None = None,
        parents: dict[str, str] | None = None,
    ) -> None:
        """Insert or update an artefact, with edges from `parents` ({parent_id: relation})."""
        self._connection.execute(
            """INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT (id) DO UPDATE SET uri = excluded.uri, rows = excluded.rows, meta = excluded.meta""",
            [
                id,
                kind,
                uri,
                rows,
                self._created_at(),
                json.dumps(meta or {}, sort_keys=True, default=str),
            ],
        )
        for parent_id, relation in (parents or {}).items():
            self.record_edge(parent_id, id, relation)

    def record_edge(self, parent_id: str, child_id: str, relation: str) -> None:
        self._connection.execute(
            "INSERT INTO edges VALUES (?, ?, ?) ON CONFLICT DO NOTHING", [parent_id, child_id, relation]
        )

    def execute(self, sql: str, parameters: list[Any]) -> None:
        """A statement of another catalog table's owner (the model registry) in this transaction."""
        self._connection.execute(sql, parameters)

    def ensure_artifact(
        self,
        id: str,
        kind: str,
        uri: str | None = None,
        rows: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Record an artefact only if the catalog does not know it (a stage's input: its producer's
        record, when there is one, stays as it is)."""
        self._connection.execute(
            "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            [id, kind, uri, rows, self._created_at(), json.dumps(meta or {}, sort_keys=True, default=str)],
        )


def _connect_with_retry(path: str, read_only: bool, attempts: int = 50) -> duckdb.DuckDBPyConnection:
    # Another process outside our lock (e.g. a user's duckdb shell) may hold the file briefly; any
    # other error (a damaged file) fails at once.
    for attempt in range(attempts):
        try:
            return duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as error:
            if attempt == attempts - 1 or not _is_lock_conflict(error):
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def _is_lock_conflict(error: duckdb.Error) -> bool:
    return isinstance(error, duckdb.IOException) and "lock" in str(error).lower()


# What DuckDB raises for a damaged file: I/O errors (short reads, not a database file), failed
# deserialisation, internal errors, and checksum mismatches ("Corrupt database file", a plain duckdb.Error).
# Errors of the statement itself (a constraint, a type) are the caller's and pass through.
_FILE_ERRORS = (
    duckdb.IOException,
    duckdb.SerializationException,
    duckdb.InternalException,
    duckdb.FatalException,
)


def _about_the_file(error: duckdb.Error) -> bool:
    return isinstance(error, _FILE_ERRORS) or type(error) is duckdb.Error or "corrupt" in str(error).lower()


def _has_tables(connection: duckdb.DuckDBPyConnection) -> bool:
    return bool(
        connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'artifacts'"
        ).fetchone()[0]
    )


def _artifact(row: tuple) -> Artifact:
    id, kind, uri, rows, created_at, meta = row
    return Artifact(id, kind, uri, rows, created_at, json.loads(meta) if meta else {})
