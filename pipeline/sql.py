"""SQL over a workspace: read-only DuckDB views of every table the stages write.

Views (each works on an empty or partial workspace: no files yet gives an empty view with the right
columns):

    pairs           kept, scored pairs of every dataset version (+ dataset_id), with provenance
    ingested_pairs  canonical pairs of every ingest (+ ingest_id), before curation
    rejections      ingest, curate and tokenize rejections (+ ingest_id or dataset_id)
    ingests         one row per ingest of a source file version (ingest.json)
    datasets        one row per dataset version (manifest.json + catalog)
    shards          token-level rows of every dataset version (+ dataset_id, split, shard)
    runs            training runs (catalog + their dataset, base and reference models)
    models          models: base/reference models and trained outputs (+ run that produced them)
    metrics         training metrics per step, long form: run_id, step, epoch, split, metric, value
    lineage         catalog edges parent -> child with both kinds
    artifacts       every catalog record; sources: the `source_file` records

Why everything is handed to DuckDB as Arrow objects instead of `read_parquet` views: the connection
then needs no file access at all, so it runs with `enable_external_access = false` (no reading
arbitrary files, no COPY TO, no ATTACH) and a locked configuration. Parquet files are scanned lazily
through `pyarrow.dataset` (projection and filter push-down still apply); Arrow shards are memory-mapped.
The catalog is copied out under its lock (it is small) rather than attached, so a long query never
blocks a running flow from recording its artefacts.
"""

from __future__ import annotations

import json
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
    "ingested_pairs",
    "rejections",
    "ingests",
    "datasets",
    "shards",
    "runs",
    "models",
    "metrics",
    "lineage",
    "artifacts",
    "sources",
)

# Statement kinds a query may be; everything else (writes, ATTACH, COPY, SET, PRAGMA, INSTALL/LOAD,
# CALL, EXPORT, transactions, ...) is refused before it reaches the engine.
_ALLOWED = {duckdb.StatementType.SELECT}


class ReadOnlyError(ValueError):
    """A statement that would write, attach, copy, load or change settings."""


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


def _rejections(ws: Workspace) -> tuple[Any, Any]:
    """(ingest rejections with ingest_id, curate/tokenize rejections with dataset_id)."""
    schema = load_contract("rejection").schema()
    ingest = _parquet_view(
        _complete(ws.sources_dir, "rejections.parquet"), ws.sources_dir, "ingest_id", schema
    )
    curate = _parquet_view(
        _complete(ws.datasets_dir, "rejections.parquet"), ws.datasets_dir, "dataset_id", schema
    )
    return ingest, curate


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # a file being replaced right now; the next query sees it


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


def _datasets(ws: Workspace) -> pa.Table:
    fields = [
        ("dataset_id", pa.string()),
        ("dataset_dir", pa.string()),
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
    for path in _complete(ws.datasets_dir, "manifest.json"):
        manifest = _read_json(path)
        splits = manifest.get("splits") or {}
        train = (splits.get("train") or {}).get("rows")
        evaluation = (splits.get("eval") or {}).get("rows")
        tokenizer = manifest.get("tokenizer") or {}
        reference = manifest.get("reference_model") or {}
        rows.append(
            {
                "dataset_id": manifest.get("dataset_id", path.parent.name),
                "dataset_dir": str(path.parent),
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


def _shards(ws: Workspace) -> tuple[dict[str, pa.Table], str]:
    """Each shard memory-mapped and registered on its own, and the `shards` view as their UNION ALL with
    dataset_id, split and shard as SQL constants: nothing is copied or materialised per query."""
    from pipeline.shards import SPLITS, open_shard, shard_schema

    schema = shard_schema()
    tables: dict[str, pa.Table] = {"_shard_empty": schema.empty_table()}
    selects = [
        "SELECT *, NULL::VARCHAR AS dataset_id, NULL::VARCHAR AS split, NULL::VARCHAR AS shard FROM _shard_empty"
    ]
    for manifest_path in _complete(ws.datasets_dir, "manifest.json"):
        manifest = _read_json(manifest_path)
        dataset_id = manifest.get("dataset_id", manifest_path.parent.name)
        for split in SPLITS:
            for info in ((manifest.get("splits") or {}).get(split) or {}).get("shards", []):
                path = manifest_path.parent / info["file"]
                if not path.is_file():
                    continue
                name = f"_shard_{len(tables)}"
                tables[name] = open_shard(path).select(schema.names)
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
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a run still writing
                step, epoch, split = event.get("step"), event.get("epoch"), event.get("split")
                for name, value in event.items():
                    if name in ("step", "epoch", "split") or isinstance(value, bool):
                        continue
                    if isinstance(value, int | float):
                        rows.append(
                            {
                                "run_id": path.parent.name,
                                "step": step,
                                "epoch": epoch,
                                "split": split,
                                "metric": name,
                                "value": float(value),
                            }
                        )
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def _catalog_tables(ws: Workspace) -> tuple[pa.Table, pa.Table]:
    artifacts_schema = pa.schema(
        [
            ("id", pa.string()),
            ("kind", pa.string()),
            ("uri", pa.string()),
            ("rows", pa.int64()),
            ("created_at", pa.timestamp("us", tz="UTC")),
            ("meta", pa.string()),
        ]
    )
    edges_schema = pa.schema(
        [("parent_id", pa.string()), ("child_id", pa.string()), ("relation", pa.string())]
    )
    if not ws.catalog_path.exists():
        return artifacts_schema.empty_table(), edges_schema.empty_table()
    with Catalog(ws).connect(read_only=True) as connection:
        has = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('artifacts', 'edges')"
        ).fetchall()[0][0]
        if has < 2:
            return artifacts_schema.empty_table(), edges_schema.empty_table()
        artifacts = connection.sql(
            "SELECT id, kind, uri, rows, created_at, CAST(meta AS VARCHAR) AS meta FROM artifacts"
        ).to_arrow_table()
        edges = connection.sql("SELECT parent_id, child_id, relation FROM edges").to_arrow_table()
    return artifacts.cast(artifacts_schema), edges.cast(edges_schema)


_DERIVED_VIEWS = """
CREATE VIEW artifacts AS SELECT id, kind, uri, rows, created_at, meta::JSON AS meta FROM _artifacts;
CREATE VIEW sources AS
    SELECT id AS source_sha256, uri AS source_uri, rows, created_at,
           meta->>'format' AS format, meta->>'name' AS source_name, TRY_CAST(meta->>'size' AS BIGINT) AS size, meta
    FROM artifacts WHERE kind = 'source_file';
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
CREATE VIEW pairs AS SELECT * FROM _pairs;
CREATE VIEW ingested_pairs AS SELECT * FROM _ingested_pairs;
CREATE VIEW rejections AS
    SELECT *, CAST(NULL AS VARCHAR) AS dataset_id FROM _ingest_rejections
    UNION ALL BY NAME
    SELECT *, CAST(NULL AS VARCHAR) AS ingest_id FROM _curate_rejections;
CREATE VIEW ingests AS SELECT * FROM _ingests;
CREATE VIEW datasets AS
    SELECT d.*, a.created_at FROM _datasets d LEFT JOIN _artifacts a ON a.id = d.dataset_id;
CREATE VIEW metrics AS SELECT * FROM _metrics;
"""


def connect_views(workspace: Workspace | str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory, locked-down DuckDB connection with the workspace views (see the module docstring)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    connection = duckdb.connect(":memory:")
    pair_schema = load_contract("preference_pair").schema()
    ingest_rejections, curate_rejections = _rejections(ws)
    artifacts, edges = _catalog_tables(ws)
    registered = {
        "_pairs": _parquet_view(
            _complete(ws.datasets_dir, "pairs.parquet"), ws.datasets_dir, "dataset_id", pair_schema
        ),
        "_ingested_pairs": _parquet_view(
            _complete(ws.sources_dir, "pairs.parquet"), ws.sources_dir, "ingest_id", pair_schema
        ),
        "_ingest_rejections": ingest_rejections,
        "_curate_rejections": curate_rejections,
        "_ingests": _ingests(ws),
        "_datasets": _datasets(ws),
        "_metrics": _metrics(ws),
        "_artifacts": artifacts,
        "_edges": edges,
    }
    shard_tables, shards_view = _shards(ws)
    registered.update(shard_tables)
    for name, source in registered.items():
        connection.register(name, source)
    connection.execute(_DERIVED_VIEWS)
    connection.execute(shards_view)
    # From here on the connection can read only what was registered above, and no statement can undo it.
    connection.execute("SET enable_external_access = false")
    connection.execute("SET autoinstall_known_extensions = false")
    connection.execute("SET autoload_known_extensions = false")
    connection.execute("SET lock_configuration = true")
    return connection


def check_read_only(sql: str) -> None:
    """Raise ReadOnlyError unless `sql` is exactly one SELECT-like statement (DuckDB's parser decides)."""
    statements = duckdb.extract_statements(sql)  # a syntax error raises DuckDB's own ParserException
    if not statements:
        raise ReadOnlyError("empty query: give one SELECT statement")
    if len(statements) > 1:
        raise ReadOnlyError(f"one statement per query, got {len(statements)}")
    kind = statements[0].type
    if kind not in _ALLOWED:
        raise ReadOnlyError(
            f"refused: {kind.name} statements are not allowed; the workspace views are read-only "
            "(only SELECT / FROM / WITH / DESCRIBE / SUMMARIZE queries)"
        )


def query(workspace: Workspace | str | Path, sql: str) -> pl.DataFrame:
    """Run one read-only query over the workspace views and return a Polars DataFrame."""
    check_read_only(sql)
    connection = connect_views(workspace)
    try:
        return connection.sql(sql).pl()
    finally:
        connection.close()
