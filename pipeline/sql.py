"""SQL over a workspace: read-only DuckDB views of every table the stages write.

Views (each works on an empty or partial workspace: no files yet gives an empty view with the right
columns; `describe_views` / `dpop sql --schema` lists every column with its meaning):

    pairs               kept, scored pairs of the current dataset version (+ dataset_id), with provenance
    pairs_history       kept pairs of every dataset version (+ dataset_id)
    ingested_pairs      canonical pairs of every ingest (+ ingest_id), before curation
    rejections          what the current dataset version lost: ingest rejections of its ingests and its
                        curate/tokenize rejections (+ ingest_id or dataset_id)
    rejections_history  the same for every ingest and every dataset version
    ingests             one row per ingest of a source file version (ingest.json)
    datasets            one row per dataset version (manifest.json + catalog; `is_current`)
    shards              token-level rows of every dataset version (+ dataset_id, split, shard)
    runs                training runs (catalog + their dataset, base and reference models)
    models              models: base/reference models and trained outputs (+ run that produced them)
    metrics             training metrics per step, long form: run_id, step, epoch, split, metric, value
    lineage             catalog edges parent -> child with both kinds
    artifacts           every catalog record; sources: the `source_file` records
    selections          every pair each `dpop select` considered: score, rank, kept or not, weight
    evals               every evaluation's metrics (preference and generation), overall, per source and
                        per edit bucket, with what was evaluated against what and the training overlap
    generations         every generation evaluation's answers: prompt, generation, extracted and
                        reference answers, correct
    model_aliases       the model registry's alias history (assign, rollback; `is_current`)
    gate_decisions      every gate decision: outcome (promoted, kept, refused), reason, checks

Counting without knowing the version scheme: every build of new data makes a new dataset version, and
reference log-probs make another one (`<id>-ref-<hash>`) whose pairs.parquet is a copy of its parent's.
So `pairs` holds one version only, the *current* one: the version the latest training run used, or the
latest built when a build came after that run. A derived version (one with a dataset parent, like a
reference-log-prob version) carries its parent's pairs and rejections and never adds them a second
time; its rows appear under the id of the version that kept them (`datasets.pairs_dataset_id`).

Why everything is handed to DuckDB as Arrow objects instead of `read_parquet` views: the connection
then needs no file access at all, so it runs with `enable_external_access = false` (no reading
arbitrary files, no COPY TO, no ATTACH) and a locked configuration. Parquet files are scanned lazily
through `pyarrow.dataset` (projection and filter push-down still apply); Arrow shards are memory-mapped.
The catalog is copied out under its lock (it is small) rather than attached, so a long query never
blocks a running flow from recording its artefacts.

Limits, so one query cannot take over a shared machine: a time limit (DuckDB has no statement timeout,
so a timer thread interrupts the connection), a memory limit, a bounded thread count, and spilling to
a private temporary folder of bounded size. Every setting that holds a path (temp, home, secret and
extension directories) points into that private folder, so neither the settings nor DuckDB's
"allowed directories" reveal or reach a user's path, and the functions that print settings are refused.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.atomic import TMP_PREFIX
from pipeline.catalog import Catalog
from pipeline.contracts import load_contract
from pipeline.workspace import Workspace

VIEWS = (
    "pairs",
    "pairs_history",
    "ingested_pairs",
    "rejections",
    "rejections_history",
    "ingests",
    "datasets",
    "shards",
    "runs",
    "models",
    "metrics",
    "lineage",
    "artifacts",
    "sources",
    "selections",
    "evals",
    "generations",
    "model_aliases",
    "gate_decisions",
)

DEFAULT_TIMEOUT_S = 60.0
MAX_DEFAULT_MEMORY = 4 * 1024**3  # the default limit: 25% of RAM, at most this
MAX_DEFAULT_THREADS = 4


class ReadOnlyError(ValueError):
    """A statement that would write, attach, copy, load, change settings or read them."""


class QueryTimeout(RuntimeError):
    """A query that ran past its time limit and was interrupted."""


# ---------------------------------------------------------------------------------------------------
# The read-only guard
# ---------------------------------------------------------------------------------------------------

# Statement kinds DuckDB's parser reports for a read: everything else (writes, ATTACH, COPY, SET, PRAGMA,
# INSTALL/LOAD, CALL, EXPORT, transactions, ...) is refused before it reaches the engine. EXPLAIN and
# MULTI (a PIVOT whose columns come from the data: DuckDB makes an enum type first, then runs the query)
# are read-only only when what they wrap is: see `_check_statement`.
_READ_VERBS = {
    "SELECT",
    "FROM",
    "WITH",
    "VALUES",
    "TABLE",
    "PIVOT",
    "PIVOT_WIDER",
    "UNPIVOT",
    "PIVOT_LONGER",
    "DESCRIBE",
    "SUMMARIZE",
    "SHOW",
    "EXPLAIN",
}
# Keywords that never occur in a read, at any depth: a data-modifying CTE
# (`WITH x AS (INSERT ... RETURNING *) SELECT ...`) parses as a SELECT statement.
_WRITE_KEYWORDS = {
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "RETURNING",
    "TRUNCATE",
    "CREATE",
    "DROP",
    "ALTER",
    "ATTACH",
    "DETACH",
    "COPY",
}
# Functions and views that print settings or paths, or run SQL given as a string (which would get
# past this guard).
_HIDDEN_NAMES = {
    "current_setting",
    "duckdb_settings",
    "pg_settings",
    "duckdb_extensions",
    "duckdb_temporary_files",
    "duckdb_secrets",
    "which_secret",
    "duckdb_databases",
    "pragma_database_list",
    "getenv",
    "query",
    "query_table",
    "json_execute_serialized_sql",
}


def check_read_only(sql: str) -> None:
    """Raise ReadOnlyError unless `sql` is exactly one read-only query (DuckDB's parser decides the kind)."""
    statements = duckdb.extract_statements(sql)  # a syntax error raises DuckDB's own ParserException
    if not statements:
        raise ReadOnlyError("empty query: give one SELECT statement")
    if len(statements) > 1:
        raise ReadOnlyError(f"one statement per query, got {len(statements)}")
    _check_statement(statements[0])
    _check_tokens(sql)


def _refused(kind: str) -> ReadOnlyError:
    return ReadOnlyError(
        f"refused: {kind} statements are not allowed; the workspace views are read-only "
        "(only SELECT / FROM / WITH / PIVOT / UNPIVOT / DESCRIBE / SUMMARIZE / EXPLAIN queries)"
    )


def _check_statement(statement: Any) -> None:
    kind = statement.type
    if kind == duckdb.StatementType.SELECT:
        return
    if kind == duckdb.StatementType.EXPLAIN:
        _check_wrapped(_after_explain(statement.query), "EXPLAIN")
        return
    if kind == duckdb.StatementType.MULTI:
        _check_multi(statement.query)
        return
    raise _refused(kind.name)


def _check_wrapped(inner: str, outer: str) -> None:
    """EXPLAIN ANALYZE runs what it explains, so the explained statement must be a read too."""
    statements = duckdb.extract_statements(inner) if inner.strip() else []
    if len(statements) != 1:
        raise _refused(outer)
    _check_statement(statements[0])


def _tokens(sql: str) -> list[tuple[str, Any]]:
    """(text, token type) of DuckDB's tokenizer, comments dropped."""
    marks = duckdb.tokenize(sql)
    ends = [offset for offset, _ in marks[1:]] + [len(sql)]
    return [
        (sql[offset:end].strip(), kind)
        for (offset, kind), end in zip(marks, ends, strict=True)
        if kind != duckdb.token_type.comment
    ]


def _after_explain(sql: str) -> str:
    """The statement after `EXPLAIN [ANALYZE] [(options)]`."""
    marks = [(o, k) for o, k in duckdb.tokenize(sql) if k != duckdb.token_type.comment]
    index = 1  # marks[0] is EXPLAIN
    if index < len(marks) and _word(sql, marks, index) == "ANALYZE":
        index += 1
    if index < len(marks) and _word(sql, marks, index) == "(":
        depth = 0
        while index < len(marks):
            word = _word(sql, marks, index)
            depth += (word == "(") - (word == ")")
            index += 1
            if depth == 0:
                break
    return sql[marks[index][0] :] if index < len(marks) else ""


def _word(sql: str, marks: list, index: int) -> str:
    end = marks[index + 1][0] if index + 1 < len(marks) else len(sql)
    return sql[marks[index][0] : end].strip().upper()


def _check_multi(sql: str) -> None:
    """A statement DuckDB splits in several (a data-driven PIVOT) is allowed when its main verb reads:
    the first keyword outside parentheses, or for WITH the first one after the CTE list."""
    verb = _main_verb(_tokens(sql))
    if verb == "EXPLAIN":
        _check_multi(_after_explain(sql))
        return
    if verb is None:
        raise ReadOnlyError("refused: could not tell that this statement only reads; write it as one SELECT")
    if verb not in _READ_VERBS:
        raise _refused(verb)


def _main_verb(tokens: list[tuple[str, Any]]) -> str | None:
    base = 0  # a statement in parentheses: `(PIVOT ...)`
    while base < len(tokens) and tokens[base][0] == "(":
        base += 1
    depth, after_with = base, False
    for text, kind in tokens[base:]:
        if text in ("(", ")"):
            depth += 1 if text == "(" else -1
            continue
        if depth != base or kind != duckdb.token_type.keyword:
            continue
        word = text.upper()
        if word == "WITH":
            after_with = True
            continue
        if after_with and word in ("RECURSIVE", "AS", "NOT", "MATERIALIZED", "USING", "KEY"):
            continue
        return word
    return None


def _check_tokens(sql: str) -> None:
    tokens = _tokens(sql)
    for index, (text, kind) in enumerate(tokens):
        if kind == duckdb.token_type.keyword and text.upper() in _WRITE_KEYWORDS:
            raise _refused(text.upper())
        if kind in (duckdb.token_type.identifier, duckdb.token_type.keyword):
            name = text.strip('"').lower()
            if name in _HIDDEN_NAMES and _is_call_or_view(name, tokens, index):
                raise ReadOnlyError(
                    f"refused: {name} is not available here (it shows settings or paths, or runs SQL "
                    "given as text)"
                )


def _is_call_or_view(name: str, tokens: list[tuple[str, Any]], index: int) -> bool:
    """A function call `name(` (also `schema.name(`); `pg_settings` is a view, refused wherever named."""
    if name == "pg_settings":
        return True
    return index + 1 < len(tokens) and tokens[index + 1][0] == "("


# ---------------------------------------------------------------------------------------------------
# Limits and the private folder
# ---------------------------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)\s*$", re.IGNORECASE)
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def physical_memory() -> int | None:
    """Bytes of RAM this process may use: the machine's, or its cgroup's limit when lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total or int(limit), int(limit))
    except OSError:
        pass
    return total


def default_memory_limit() -> int:
    """25% of RAM, at most 4 GiB: a query never crowds out the flows and people sharing the machine."""
    memory = physical_memory()
    return MAX_DEFAULT_MEMORY if memory is None else min(memory // 4, MAX_DEFAULT_MEMORY)


def parse_memory_limit(text: str | int | None) -> int:
    """Bytes from `4GB`, `512MiB`, `25%` (of RAM) or an int; None gives the default."""
    if text is None:
        return default_memory_limit()
    if isinstance(text, int):
        value = text
    elif match := _SIZE.match(text):
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    elif (match := _PERCENT.match(text)) and 0 < float(match.group(1)) <= 100:
        value = int((physical_memory() or MAX_DEFAULT_MEMORY * 4) * float(match.group(1)) / 100)
    else:
        raise ValueError(f"memory limit {text!r} is not a size like 4GB, 512MiB or 50% (of RAM)")
    if value < 64 * 1024**2:
        raise ValueError(f"memory limit {text!r} is below 64MiB: too small for DuckDB to run a query")
    return value


def default_threads() -> int:
    return max(1, min(MAX_DEFAULT_THREADS, os.cpu_count() or 1))


@functools.cache
def _private_root() -> Path:
    """This process's folder for DuckDB's spill files (mode 0700), removed when the process exits."""
    root = Path(tempfile.mkdtemp(prefix="dpop-sql-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def _connection_config(folder: Path, memory_limit: int, threads: int) -> dict[str, Any]:
    spill_budget = shutil.disk_usage(folder).free // 4
    return {
        "memory_limit": f"{memory_limit}B",
        "threads": threads,
        "temp_directory": str(folder / "spill"),
        "max_temp_directory_size": f"{max(spill_budget, 64 * 1024**2)}B",
        # Settings that would otherwise hold the user's home or working directory.
        "home_directory": str(folder),
        "secret_directory": str(folder / "secrets"),
        "extension_directory": str(folder / "extensions"),
        "allow_persistent_secrets": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }


# ---------------------------------------------------------------------------------------------------
# Workspace tables
# ---------------------------------------------------------------------------------------------------


def _id_column(name: str) -> pa.Field:
    return pa.field(name, pa.string())


def _parquet_view(files: list[Path], base: Path, key: str, schema: pa.Schema) -> Any:
    """A lazy dataset over `<base>/<key value>/<file>` parquet files, with `key` parsed from the folder."""
    full = schema.append(_id_column(key))
    if not files:
        return full.empty_table()
    return ds.dataset(
        [str(f) for f in files],
        format="parquet",
        schema=full,
        partitioning=ds.DirectoryPartitioning(pa.schema([_id_column(key)])),
        partition_base_dir=str(base),
    )


def _complete(folder: Path, name: str) -> list[Path]:
    """Files `<folder>/*/<name>`, skipping unfinished `.tmp-*` writes."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.glob(f"*/{name}") if not p.parent.name.startswith(TMP_PREFIX) and p.is_file()
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # a file being replaced right now; the next query sees it
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class DatasetVersions:
    """The dataset versions on disk and which one is current (see the module docstring)."""

    manifests: dict[str, dict[str, Any]]  # dataset_id -> manifest
    folders: dict[str, Path]  # dataset_id -> folder
    current: str | None

    def pairs_owner(self, dataset_id: str) -> str:
        """The version whose pairs.parquet this one carries: itself, or for a derived version
        (a dataset parent, e.g. reference log-probs) its parent's owner. A selection (`dpop select`,
        parent relation `selected_from`) holds its own pairs and rejections: it owns them."""
        seen = set()
        while dataset_id not in seen:
            seen.add(dataset_id)
            parents = [
                p.get("id")
                for p in (self.manifests.get(dataset_id) or {}).get("parents") or []
                if isinstance(p, dict)
                and p.get("kind") == "dataset"
                and p.get("relation") != "selected_from"
                and p.get("id") in self.manifests
            ]
            if not parents:
                return dataset_id
            dataset_id = parents[0]
        return dataset_id

    @property
    def owners(self) -> list[str]:
        """Versions that kept pairs themselves (each pair counted once per curation)."""
        return sorted(d for d in self.manifests if self.pairs_owner(d) == d)

    @property
    def current_owner(self) -> str | None:
        return None if self.current is None else self.pairs_owner(self.current)

    def ingest_ids(self, dataset_id: str) -> list[str]:
        """The ingests a version was curated from (its `pairs-<ingest_id>` parents; for a selection,
        which has a dataset parent, the ingests its manifest carries)."""
        manifest = self.manifests.get(dataset_id) or {}
        parents = manifest.get("parents") or []
        found = [
            p["id"].removeprefix("pairs-")
            for p in parents
            if isinstance(p, dict) and p.get("kind") == "pairs" and str(p.get("id", "")).startswith("pairs-")
        ]
        inputs = [i.get("ingest_id") for i in manifest.get("inputs") or [] if isinstance(i, dict)]
        return found or [i for i in inputs if i]


def dataset_versions(
    ws: Workspace, artifacts: pa.Table | None = None, edges: pa.Table | None = None
) -> DatasetVersions:
    """Every complete dataset version, and the current one: the dataset of the latest run or the latest
    built version, whichever the catalog recorded last (without catalog records: the newest manifest)."""
    if artifacts is None or edges is None:
        artifacts, edges = _catalog_tables(ws)
    manifests, folders = {}, {}
    for path in _complete(ws.datasets_dir, "manifest.json"):
        manifest = _read_json(path)
        dataset_id = manifest.get("dataset_id", path.parent.name)
        manifests[dataset_id], folders[dataset_id] = manifest, path.parent
    return DatasetVersions(manifests, folders, _current(manifests, folders, artifacts, edges))


def _current(
    manifests: dict[str, dict], folders: dict[str, Path], artifacts: pa.Table, edges: pa.Table
) -> str | None:
    trained_on = {
        child: parent
        for parent, child, relation in zip(
            edges["parent_id"].to_pylist(),
            edges["child_id"].to_pylist(),
            edges["relation"].to_pylist(),
            strict=True,
        )
        if relation == "trained_on"
    }
    events: list[tuple[datetime, int, str]] = []
    for id, kind, created_at in zip(
        artifacts["id"].to_pylist(),
        artifacts["kind"].to_pylist(),
        artifacts["created_at"].to_pylist(),
        strict=True,
    ):
        if kind == "dataset" and id in manifests:
            events.append((created_at, 0, id))
        elif kind == "run" and trained_on.get(id) in manifests:
            events.append((created_at, 1, trained_on[id]))  # a run is after its dataset at equal times
    if events:
        return max(events)[2]
    if manifests:
        return max(manifests, key=lambda d: ((folders[d] / "manifest.json").stat().st_mtime_ns, d))
    return None


def _pair_tables(ws: Workspace, versions: DatasetVersions) -> dict[str, Any]:
    schema = load_contract("preference_pair").schema()
    owners = versions.owners
    current = versions.current_owner
    by_owner = [versions.folders[d] / "pairs.parquet" for d in owners]
    return {
        "_pairs_history": _parquet_view(
            [p for p in by_owner if p.is_file()], ws.datasets_dir, "dataset_id", schema
        ),
        "_pairs_current": _parquet_view(
            [p for p in by_owner if p.is_file() and p.parent == versions.folders.get(current)],
            ws.datasets_dir,
            "dataset_id",
            schema,
        ),
        "_ingested_pairs": _parquet_view(
            _complete(ws.sources_dir, "pairs.parquet"), ws.sources_dir, "ingest_id", schema
        ),
    }


def _rejection_tables(ws: Workspace, versions: DatasetVersions) -> dict[str, Any]:
    """Ingest rejections (with ingest_id) and curate/tokenize rejections (with dataset_id), each for
    every version and for the current one."""
    schema = load_contract("rejection").schema()
    ingest_files = _complete(ws.sources_dir, "rejections.parquet")
    curate_files = [versions.folders[d] / "rejections.parquet" for d in versions.owners]
    curate_files = [p for p in curate_files if p.is_file()]
    current = versions.current_owner
    current_ingests = set(versions.ingest_ids(current)) if current else _latest_ingest_ids(ws)
    return {
        "_ingest_rejections_history": _parquet_view(ingest_files, ws.sources_dir, "ingest_id", schema),
        "_curate_rejections_history": _parquet_view(curate_files, ws.datasets_dir, "dataset_id", schema),
        "_ingest_rejections_current": _parquet_view(
            [p for p in ingest_files if p.parent.name in current_ingests], ws.sources_dir, "ingest_id", schema
        ),
        "_curate_rejections_current": _parquet_view(
            [p for p in curate_files if p.parent == versions.folders.get(current)],
            ws.datasets_dir,
            "dataset_id",
            schema,
        ),
    }


def _selections(ws: Workspace, versions: DatasetVersions) -> Any:
    """`dpop select`'s selection.parquet of every selected version: each pair's score, rank, decision."""
    files = [versions.folders[d] / "selection.parquet" for d in versions.manifests]
    schema = load_contract("selection").schema()
    return _parquet_view([f for f in files if f.is_file()], ws.datasets_dir, "dataset_id", schema)


def _latest_ingest_ids(ws: Workspace) -> set[str]:
    """Before any dataset is built, the current ingests are the latest of each source file."""
    from pipeline.ingest import latest_ingests

    return {result.ingest_id for result in latest_ingests(ws)}


def _ingests(ws: Workspace) -> pa.Table:
    fields = [
        ("ingest_id", pa.string()),
        ("source_uri", pa.string()),
        ("source_sha256", pa.string()),
        ("source_name", pa.string()),
        ("format", pa.string()),
        ("rows_read", pa.int64()),
        ("rows_kept", pa.int64()),
        ("rows_rejected", pa.int64()),
        ("pairs_written", pa.int64()),
        ("rejected_by_reason", pa.string()),
    ]
    rows = []
    for path in _complete(ws.sources_dir, "ingest.json"):
        record = _read_json(path)
        record.setdefault("ingest_id", path.parent.name)
        if "rejected_by_reason" in record:
            record["rejected_by_reason"] = json.dumps(record["rejected_by_reason"], sort_keys=True)
        rows.append({name: record.get(name) for name, _ in fields})
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def _datasets(versions: DatasetVersions) -> pa.Table:
    fields = [
        ("dataset_id", pa.string()),
        ("dataset_dir", pa.string()),
        ("is_current", pa.bool_()),
        ("pairs_dataset_id", pa.string()),
        ("train_rows", pa.int64()),
        ("eval_rows", pa.int64()),
        ("rows", pa.int64()),
        ("max_length", pa.int64()),
        ("max_prompt_length", pa.int64()),
        ("truncation", pa.string()),
        ("tokenizer_path", pa.string()),
        ("tokenizer_sha256", pa.string()),
        ("reference_model_id", pa.string()),
        ("parent_ids", pa.list_(pa.string())),
        ("config", pa.string()),
        ("funnel", pa.string()),
    ]
    rows = []
    for dataset_id, manifest in versions.manifests.items():
        splits = manifest.get("splits") or {}
        train = (splits.get("train") or {}).get("rows")
        evaluation = (splits.get("eval") or {}).get("rows")
        tokenizer = manifest.get("tokenizer") or {}
        reference = manifest.get("reference_model") or {}
        rows.append(
            {
                "dataset_id": dataset_id,
                "dataset_dir": str(versions.folders[dataset_id]),
                "is_current": dataset_id == versions.current,
                "pairs_dataset_id": versions.pairs_owner(dataset_id),
                "train_rows": train,
                "eval_rows": evaluation,
                "rows": (train or 0) + (evaluation or 0),
                "max_length": manifest.get("max_length"),
                "max_prompt_length": manifest.get("max_prompt_length"),
                "truncation": _text(manifest.get("truncation")),
                "tokenizer_path": tokenizer.get("path"),
                "tokenizer_sha256": tokenizer.get("sha256"),
                "reference_model_id": reference.get("id"),
                "parent_ids": [p.get("id") for p in manifest.get("parents") or [] if isinstance(p, dict)],
                "config": json.dumps(manifest.get("config"), sort_keys=True, default=str),
                "funnel": json.dumps(manifest.get("funnel"), default=str),
            }
        )
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _shards(versions: DatasetVersions) -> tuple[dict[str, pa.Table], str]:
    """Each shard memory-mapped and registered on its own, and the `shards` view as their UNION ALL with
    dataset_id, split and shard as SQL constants: nothing is copied or materialised per query."""
    from pipeline.shards import SPLITS, open_shard, shard_schema

    schema = shard_schema()
    tables: dict[str, pa.Table] = {"_shard_empty": schema.empty_table()}
    selects = [
        "SELECT *, NULL::VARCHAR AS dataset_id, NULL::VARCHAR AS split, NULL::VARCHAR AS shard FROM _shard_empty"
    ]
    for dataset_id, manifest in versions.manifests.items():
        for split in SPLITS:
            for info in ((manifest.get("splits") or {}).get(split) or {}).get("shards", []):
                path = versions.folders[dataset_id] / info["file"]
                if not path.is_file():
                    continue
                name = f"_shard_{len(tables)}"
                table = open_shard(path)  # older shards lack optional columns (weight): null there
                tables[name] = table.select([n for n in schema.names if n in table.column_names])
                selects.append(
                    f"SELECT *, {_sql_text(dataset_id)} AS dataset_id, {_sql_text(split)} AS split, "
                    f"{_sql_text(info['file'])} AS shard FROM {name}"
                )
    return tables, "CREATE VIEW shards AS\n" + "\nUNION ALL BY NAME\n".join(selects) + ";"


def _sql_text(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _metrics(ws: Workspace) -> pa.Table:
    """runs/<run_id>/metrics.jsonl in long form, so any metric name works and the columns never change."""
    fields = [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("epoch", pa.float64()),
        ("split", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
    rows = []
    for path in _complete(ws.runs_dir, "metrics.jsonl"):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                rows += _metric_rows(path.parent.name, line)
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def _metric_rows(run_id: str, line: str) -> list[dict[str, Any]]:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return []  # the last line of a run still writing
    if not isinstance(event, dict):
        return []
    step, epoch, split = event.get("step"), event.get("epoch"), event.get("split")
    return [
        {
            "run_id": run_id,
            "step": step,
            "epoch": epoch,
            "split": split,
            "metric": name,
            "value": float(value),
        }
        for name, value in event.items()
        if name not in ("step", "epoch", "split")
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    ]


def _eval_tables(ws: Workspace) -> dict[str, Any]:
    """Every evaluation's metrics.parquet (contract eval_metric) and generations.parquet, and one row per
    evaluation from its stage.json: what it was evaluated against, and the overlap with training data."""
    metric_schema = load_contract("eval_metric").schema()
    generation_schema = load_contract("generation_eval").schema()
    metrics = _complete(ws.evals_dir, "metrics.parquet")
    generations = _complete(ws.evals_dir, "generations.parquet")
    return {
        "_eval_metrics": ds.dataset([str(f) for f in metrics], format="parquet", schema=metric_schema)
        if metrics
        else metric_schema.empty_table(),
        "_generations": ds.dataset([str(f) for f in generations], format="parquet", schema=generation_schema)
        if generations
        else generation_schema.empty_table(),
        "_eval_records": _eval_records(ws),
    }


def _eval_records(ws: Workspace) -> pa.Table:
    fields = [
        ("eval_id", pa.string()),
        ("reference_id", pa.string()),
        ("dataset_id", pa.string()),
        ("split", pa.string()),
        ("eval_file", pa.string()),
        ("checked_against", pa.string()),
        ("overlap_pairs", pa.int64()),
        ("overlap_prompts", pa.int64()),
        ("finished_at", pa.string()),
    ]
    rows = []
    for path in _complete(ws.evals_dir, "stage.json"):
        record = _read_json(path)
        summary = record.get("summary") or {}
        origin = summary.get("eval_set_origin") or {}
        overlap = summary.get("overlap") or {}
        rows.append(
            {
                "eval_id": record.get("id", path.parent.name),
                "reference_id": summary.get("reference"),
                "dataset_id": summary.get("dataset_id") or origin.get("dataset_id"),
                "split": summary.get("split") or origin.get("split"),
                "eval_file": origin.get("file"),
                "checked_against": overlap.get("train_dataset_id"),
                "overlap_pairs": overlap.get("pairs"),
                "overlap_prompts": overlap.get("prompts"),
                "finished_at": record.get("finished_at"),
            }
        )
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


_REGISTRY_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("recorded_at", pa.timestamp("us", tz="UTC")),
        ("event", pa.string()),
        ("alias", pa.string()),
        ("model_id", pa.string()),
        ("model_dir", pa.string()),
        ("previous_model_id", pa.string()),
        ("reason", pa.string()),
        ("actor", pa.string()),
        ("details", pa.string()),
    ]
)


def _registry_table(ws: Workspace) -> pa.Table:
    """The catalog's registry_events (pipeline.registry), copied out under its lock; empty before any."""
    if not ws.catalog_path.exists():
        return _REGISTRY_SCHEMA.empty_table()
    with Catalog(ws).connect(read_only=True) as connection:
        found = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'registry_events'"
        ).fetchall()[0][0]
        if not found:
            return _REGISTRY_SCHEMA.empty_table()
        table = connection.sql(
            "SELECT seq, recorded_at, event, alias, model_id, model_dir, previous_model_id, reason, actor, "
            "CAST(details AS VARCHAR) AS details FROM registry_events ORDER BY seq"
        ).to_arrow_table()
    return table.cast(_REGISTRY_SCHEMA)


_ARTIFACTS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("kind", pa.string()),
        ("uri", pa.string()),
        ("rows", pa.int64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("meta", pa.string()),
    ]
)
_EDGES_SCHEMA = pa.schema([("parent_id", pa.string()), ("child_id", pa.string()), ("relation", pa.string())])


def _catalog_tables(ws: Workspace) -> tuple[pa.Table, pa.Table]:
    if not ws.catalog_path.exists():
        return _ARTIFACTS_SCHEMA.empty_table(), _EDGES_SCHEMA.empty_table()
    with Catalog(ws).connect(read_only=True) as connection:
        has = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('artifacts', 'edges')"
        ).fetchall()[0][0]
        if has < 2:
            return _ARTIFACTS_SCHEMA.empty_table(), _EDGES_SCHEMA.empty_table()
        artifacts = connection.sql(
            "SELECT id, kind, uri, rows, created_at, CAST(meta AS VARCHAR) AS meta FROM artifacts"
        ).to_arrow_table()
        edges = connection.sql("SELECT parent_id, child_id, relation FROM edges").to_arrow_table()
    return artifacts.cast(_ARTIFACTS_SCHEMA), edges.cast(_EDGES_SCHEMA)


_DERIVED_VIEWS = """
CREATE VIEW artifacts AS SELECT id, kind, uri, rows, created_at, meta::JSON AS meta FROM _artifacts;
CREATE VIEW sources AS
    -- a source file is an ingest stage's input (its path, its URI in meta); rows read and the format
    -- are facts of its ingests' pairs (older catalogs hold them on the source itself)
    SELECT s.id AS source_sha256, COALESCE(s.meta->>'uri', s.uri) AS source_uri,
           COALESCE(s.rows, i.rows_read) AS rows, s.created_at,
           COALESCE(s.meta->>'format', i.format) AS format, s.meta->>'name' AS source_name,
           TRY_CAST(s.meta->>'size' AS BIGINT) AS size, s.meta
    FROM artifacts s LEFT JOIN (
        SELECT e.parent_id, max(TRY_CAST(p.meta->>'rows_read' AS BIGINT)) AS rows_read,
               max(p.meta->>'format') AS format
        FROM _edges e JOIN artifacts p ON p.id = e.child_id
        WHERE e.relation = 'ingested_from' AND p.kind = 'pairs' GROUP BY e.parent_id
    ) i ON i.parent_id = s.id
    WHERE s.kind = 'source_file';
CREATE VIEW lineage AS
    SELECT e.parent_id, p.kind AS parent_kind, e.relation, e.child_id, c.kind AS child_kind
    FROM _edges e LEFT JOIN _artifacts p ON p.id = e.parent_id LEFT JOIN _artifacts c ON c.id = e.child_id;
CREATE VIEW runs AS
    SELECT a.id AS run_id, a.uri AS run_dir, a.created_at,
           (SELECT min(parent_id) FROM _edges WHERE child_id = a.id AND relation = 'trained_on') AS dataset_id,
           (SELECT min(parent_id) FROM _edges WHERE child_id = a.id AND relation = 'base_model') AS base_model_id,
           (SELECT min(parent_id) FROM _edges WHERE child_id = a.id AND relation = 'reference_model')
               AS reference_model_id,
           (SELECT min(child_id) FROM _edges WHERE parent_id = a.id AND relation = 'produced') AS model_id,
           a.meta
    FROM artifacts a WHERE a.kind = 'run';
CREATE VIEW models AS
    SELECT a.id AS model_id, a.uri AS model_dir, a.created_at,
           (SELECT min(parent_id) FROM _edges WHERE child_id = a.id AND relation = 'produced') AS run_id,
           a.meta
    FROM artifacts a WHERE a.kind = 'model';
CREATE VIEW pairs AS SELECT * FROM _pairs_current;
CREATE VIEW pairs_history AS SELECT * FROM _pairs_history;
CREATE VIEW ingested_pairs AS SELECT * FROM _ingested_pairs;
CREATE VIEW rejections AS
    SELECT *, CAST(NULL AS VARCHAR) AS dataset_id FROM _ingest_rejections_current
    UNION ALL BY NAME
    SELECT *, CAST(NULL AS VARCHAR) AS ingest_id FROM _curate_rejections_current;
CREATE VIEW rejections_history AS
    SELECT *, CAST(NULL AS VARCHAR) AS dataset_id FROM _ingest_rejections_history
    UNION ALL BY NAME
    SELECT *, CAST(NULL AS VARCHAR) AS ingest_id FROM _curate_rejections_history;
CREATE VIEW ingests AS SELECT * FROM _ingests;
CREATE VIEW datasets AS
    SELECT d.*, a.created_at FROM _datasets d LEFT JOIN _artifacts a ON a.id = d.dataset_id;
CREATE VIEW metrics AS SELECT * FROM _metrics;
CREATE VIEW selections AS SELECT * FROM _selections;
CREATE VIEW evals AS
    SELECT m.eval_id, m.kind, m.model_id, m.eval_set_id, m.metric, m.group_kind, m."group", m.value, m.n,
           r.reference_id, r.dataset_id, r.split, r.eval_file, r.checked_against, r.overlap_pairs,
           r.overlap_prompts, r.finished_at
    FROM _eval_metrics m LEFT JOIN _eval_records r USING (eval_id);
CREATE VIEW generations AS SELECT * FROM _generations;
CREATE VIEW model_aliases AS
    SELECT seq, recorded_at, event, alias, model_id, previous_model_id, reason, actor, model_dir,
           seq = max(seq) OVER (PARTITION BY alias) AS is_current
    FROM _registry WHERE event IN ('assign', 'rollback');
CREATE VIEW gate_decisions AS
    SELECT seq, recorded_at, alias, details::JSON->>'outcome' AS outcome, model_id AS promoted_model_id,
           previous_model_id AS champion_before, details::JSON->>'champion_after' AS champion_after, reason,
           CAST(details::JSON->'candidates' AS VARCHAR[]) AS candidates,
           CAST(details::JSON->'run_ids' AS VARCHAR[]) AS run_ids, details::JSON AS details
    FROM _registry WHERE event = 'gate';
"""


def connect_views(
    workspace: Workspace | str | Path,
    memory_limit: str | int | None = None,
    threads: int | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory, locked-down DuckDB connection with the workspace views (see the module docstring).

    `memory_limit`: bytes or a size (`4GB`, `50%` of RAM); default 25% of RAM, at most 4 GiB.
    `threads`: default min(4, CPUs). The connection spills to a private folder under the system's
    temporary directory; close it when done."""
    return _connect(workspace, memory_limit, threads, Path(tempfile.mkdtemp(dir=_private_root())))


def _connect(
    workspace: Workspace | str | Path, memory_limit: str | int | None, threads: int | None, folder: Path
) -> duckdb.DuckDBPyConnection:
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    config = _connection_config(folder, parse_memory_limit(memory_limit), threads or default_threads())
    connection = duckdb.connect(":memory:", config=config)
    try:
        connection.execute("SET enable_progress_bar = false")  # a session setting: not in the config
        _create_views(ws, connection)
        # From here on the connection can read only what was registered above (and its own spill
        # folder), and no statement can undo it.
        connection.execute("SET enable_external_access = false")
        connection.execute("SET lock_configuration = true")
    except BaseException:
        connection.close()
        raise
    return connection


def _create_views(ws: Workspace, connection: duckdb.DuckDBPyConnection) -> None:
    artifacts, edges = _catalog_tables(ws)
    versions = dataset_versions(ws, artifacts, edges)
    registered: dict[str, Any] = {
        **_pair_tables(ws, versions),
        **_rejection_tables(ws, versions),
        "_ingests": _ingests(ws),
        "_datasets": _datasets(versions),
        "_selections": _selections(ws, versions),
        "_metrics": _metrics(ws),
        **_eval_tables(ws),
        "_registry": _registry_table(ws),
        "_artifacts": artifacts,
        "_edges": edges,
    }
    shard_tables, shards_view = _shards(versions)
    registered.update(shard_tables)
    for name, source in registered.items():
        connection.register(name, source)
    connection.execute(_DERIVED_VIEWS)
    connection.execute(shards_view)


def query(
    workspace: Workspace | str | Path,
    sql: str,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    memory_limit: str | int | None = None,
    threads: int | None = None,
) -> pl.DataFrame:
    """Run one read-only query over the workspace views and return a Polars DataFrame.

    `timeout`: seconds before the query is interrupted (QueryTimeout); None or 0 for no limit.
    `memory_limit`, `threads`: see `connect_views`."""
    check_read_only(sql)
    folder = Path(tempfile.mkdtemp(dir=_private_root()))
    try:
        connection = _connect(workspace, memory_limit, threads, folder)
        return _run(connection, sql, timeout)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(connection: duckdb.DuckDBPyConnection, sql: str, timeout: float | None) -> pl.DataFrame:
    """Run `sql`, interrupted by a timer thread after `timeout` seconds; closes the connection."""
    stopped = threading.Event()

    def stop() -> None:
        stopped.set()  # before interrupting: the query thread checks it as soon as it is interrupted
        with contextlib.suppress(duckdb.Error):  # the query may have ended (and closed) just now
            connection.interrupt()

    timer = threading.Timer(timeout, stop) if timeout else None
    try:
        if timer is not None:
            timer.daemon = True
            timer.start()
        return connection.sql(sql).pl()
    except duckdb.InterruptException:
        if stopped.is_set():
            raise QueryTimeout(
                f"query stopped after {timeout:g} s, its time limit (raise it with --timeout / timeout=)"
            ) from None
        raise
    finally:
        if timer is not None:
            timer.cancel()
        connection.close()


# ---------------------------------------------------------------------------------------------------
# What the views mean
# ---------------------------------------------------------------------------------------------------

_VIEW_DESCRIPTIONS = {
    "pairs": "Kept, scored pairs of the current dataset version (the latest run's, or the latest built).",
    "pairs_history": "Kept, scored pairs of every dataset version that curated its own pairs.",
    "ingested_pairs": "Canonical pairs of every ingest, before curation.",
    "rejections": "Rows the current dataset version lost: at ingest (of its ingests) and at curate/tokenize.",
    "rejections_history": "Rejections of every ingest and every dataset version.",
    "ingests": "One row per ingest of a source file version (ingest.json).",
    "datasets": "One row per dataset version (manifest.json and the catalog).",
    "shards": "Token-level rows of every dataset version (dpop_shard contract).",
    "runs": "Training runs, with their dataset, base and reference models.",
    "models": "Models: base and reference models, SFT warm-ups and trained outputs.",
    "metrics": "Training metrics per logged step, one row per metric (long form).",
    "lineage": "Catalog edges: the child artefact was made from the parent.",
    "artifacts": "Every catalog record.",
    "sources": "Source file versions (catalog records of kind source_file).",
    "selections": "Every pair a selection (dpop select) considered: score, rank, kept or not, weight.",
    "evals": "Every evaluation's metrics (kind preference or generation), overall, per source and per "
    "edit bucket; with its reference, dataset split or eval file, and its overlap with the training split.",
    "generations": "Every generation evaluation's answers: prompt, generation, extracted and reference answer.",
    "model_aliases": "The model registry's alias history (assign, rollback), is_current for the holder now.",
    "gate_decisions": "Every gate decision of the chain: outcome (promoted, kept, refused, disabled) and why.",
}
_CONTRACT_OF = {
    "pairs": "preference_pair",
    "pairs_history": "preference_pair",
    "ingested_pairs": "preference_pair",
    "rejections": "rejection",
    "rejections_history": "rejection",
    "shards": "dpop_shard",
    "selections": "selection",
    "evals": "eval_metric",
    "generations": "generation_eval",
}
_DATASET_ID = "Dataset version id (ds-…); in pairs and rejections, the version that kept or dropped the row."
_INGEST_ID = "Ingest id: one ingest of one source file version with its options (<ws>/sources/<ingest_id>/)."
_COLUMN_MEANINGS = {
    "dataset_id": _DATASET_ID,
    "ingest_id": _INGEST_ID,
    "created_at": "When the catalog recorded it (UTC).",
    "meta": "The catalog record's details as JSON.",
    "shards.split": "train or eval.",
    "shards.shard": "Shard file name in the dataset folder.",
    "ingests.source_uri": "The file (file://) or dataset (hf://) read.",
    "ingests.source_sha256": "sha256 of the source file's bytes.",
    "ingests.source_name": "The --name given at ingest, else the file stem.",
    "ingests.format": "The format the records were parsed as.",
    "ingests.rows_read": "Input records read (rows_read = rows_kept + rows_rejected).",
    "ingests.rows_kept": "Input records that became at least one pair.",
    "ingests.rows_rejected": "Input records rejected, each with a reason code.",
    "ingests.pairs_written": "Pair rows written (more than rows_kept when a record expands into several pairs).",
    "ingests.rejected_by_reason": "JSON {reason: rows}.",
    "datasets.dataset_dir": "The dataset version's folder.",
    "datasets.is_current": "True for the current version (the latest run's dataset, or the latest built).",
    "datasets.pairs_dataset_id": "The version whose pairs and rejections this one carries (itself, or the "
    "parent of a derived version such as …-ref-…): join pairs_history on it.",
    "datasets.train_rows": "Tokenised rows in the train split.",
    "datasets.eval_rows": "Tokenised rows in the eval split.",
    "datasets.rows": "train_rows + eval_rows.",
    "datasets.max_length": "Max prompt + response tokens.",
    "datasets.max_prompt_length": "Max prompt tokens.",
    "datasets.truncation": "Truncation rule used when tokenising.",
    "datasets.tokenizer_path": "Tokenizer folder used.",
    "datasets.tokenizer_sha256": "sha256 of the tokenizer's tokenizer.json.",
    "datasets.reference_model_id": "Model whose log-probs fill ref_* (null before reference log-probs).",
    "datasets.parent_ids": "Ids this version was made from (pair tables, or a dataset and a model).",
    "datasets.config": "Curation config as JSON.",
    "datasets.funnel": "Rows in and dropped per curation step, as JSON.",
    "runs.run_id": "Training run id (<ws>/runs/<run_id>/).",
    "runs.run_dir": "The run's folder.",
    "runs.dataset_id": "Dataset version trained on.",
    "runs.base_model_id": "Model the run started from.",
    "runs.reference_model_id": "Reference model of the loss.",
    "runs.model_id": "Model the run produced (model-<run_id>).",
    "models.model_id": "Model id: model-<hash of the folder> or model-<run_id>.",
    "models.model_dir": "The model's folder (path or file:// URI).",
    "models.run_id": "Run that produced it (null for base, reference and SFT models).",
    "metrics.run_id": "Training run id.",
    "metrics.step": "Optimizer step.",
    "metrics.epoch": "Epoch (fractional).",
    "metrics.split": "train or eval.",
    "metrics.metric": "Metric name (TRL's names, e.g. rewards/margins, plus dpop/penalty).",
    "metrics.value": "The metric's value.",
    "lineage.parent_id": "Artefact made first.",
    "lineage.parent_kind": "Its kind.",
    "lineage.relation": "How the child was made from it (ingested_from, curated_from, trained_on, ...).",
    "lineage.child_id": "Artefact made from the parent.",
    "lineage.child_kind": "Its kind.",
    "artifacts.id": "Artefact id (sha256 for source files and shards, pairs-…, ds-…, run-…, model-…).",
    "artifacts.kind": "source_file, pairs, rejections, dataset, shard, model or run.",
    "artifacts.uri": "Where it is (path or URI).",
    "artifacts.rows": "Rows, where it has rows.",
    "sources.source_sha256": "sha256 of the file's bytes: the file version.",
    "sources.source_uri": "The file (file://) or dataset (hf://).",
    "sources.rows": "Records read from it.",
    "sources.format": "Format it was parsed as.",
    "sources.source_name": "Source name.",
    "sources.size": "Size in bytes.",
    "evals.reference_id": "Reference model of a preference evaluation (null for generation).",
    "evals.split": "The dataset split evaluated (null for an eval file).",
    "evals.eval_file": "The question/answer file a generation evaluation read (null for a dataset split).",
    "evals.checked_against": "Dataset whose training split the eval set was checked against.",
    "evals.overlap_pairs": "Eval pairs also in that training split (0 for a fair evaluation).",
    "evals.overlap_prompts": "Eval prompts also in that training split (0 for a fair evaluation).",
    "evals.finished_at": "When the evaluation finished (UTC, ISO).",
    "seq": "Registry event number (1, 2, … in <ws>/registry.jsonl order).",
    "recorded_at": "When the registry event was recorded (UTC).",
    "model_aliases.event": "assign (promote) or rollback.",
    "model_aliases.alias": "The alias (champion, candidate, or a user's name).",
    "model_aliases.model_id": "The model the alias points at from this event on.",
    "model_aliases.previous_model_id": "The model it pointed at before (null: none).",
    "model_aliases.reason": "Why, as given with --reason or by the gate.",
    "model_aliases.actor": "Who: the user name, or gate.",
    "model_aliases.model_dir": "The model's folder when it was assigned.",
    "model_aliases.is_current": "True for the alias's current holder.",
    "gate_decisions.alias": "The alias the gate guards.",
    "gate_decisions.outcome": "promoted, kept (the champion passed again), refused, or disabled.",
    "gate_decisions.promoted_model_id": "The model promoted (null unless promoted).",
    "gate_decisions.champion_before": "The alias's holder when the gate decided.",
    "gate_decisions.champion_after": "Its holder after the decision.",
    "gate_decisions.reason": "The decision in one sentence: what passed, or every failed check.",
    "gate_decisions.candidates": "The candidate model ids (one per run of a --losses comparison).",
    "gate_decisions.run_ids": "The training runs that made them.",
    "gate_decisions.details": "JSON: every candidate's checks, metrics per eval set, the eval ids.",
}


def _meaning(view: str, column: str) -> str:
    contract = _CONTRACT_OF.get(view)
    if contract is not None:
        columns = load_contract(contract).columns
        if column in columns:
            return " ".join(columns[column].meaning.split())
    return _COLUMN_MEANINGS.get(f"{view}.{column}") or _COLUMN_MEANINGS.get(column, "")


def describe_views(workspace: Workspace | str | Path, view: str | None = None) -> pl.DataFrame:
    """One row per view and column: view, column, type, meaning (from the data contracts where the view
    has one). `view` limits it to one view."""
    if view is not None and view not in VIEWS:
        raise ValueError(f"no view {view!r}; the views are: {', '.join(VIEWS)}")
    rows = []
    connection = connect_views(workspace)
    try:
        for name in [view] if view else VIEWS:
            for column, column_type, *_ in connection.execute(f"DESCRIBE {name}").fetchall():
                rows.append(
                    {"view": name, "column": column, "type": column_type, "meaning": _meaning(name, column)}
                )
    finally:
        connection.close()
    return pl.DataFrame(
        rows, schema={"view": pl.String, "column": pl.String, "type": pl.String, "meaning": pl.String}
    )


def view_description(view: str) -> str:
    return _VIEW_DESCRIPTIONS[view]
