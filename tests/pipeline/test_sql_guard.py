"""`pipeline.sql` stays in its box: reads that DuckDB parses oddly still work, writes stay refused in any
wrapping, settings that hold paths are hidden and point at a private folder, the working directory's
`.tmp/` is out of reach, and a query is bounded in time and memory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sql import (
    MAX_DEFAULT_MEMORY,
    QueryTimeout,
    ReadOnlyError,
    check_read_only,
    connect_views,
    default_memory_limit,
    default_threads,
    parse_memory_limit,
    query,
)

KEYED = "(SELECT * FROM (VALUES ('a', 1), ('b', 2), ('a', 3)) t(k, v))"


@pytest.mark.parametrize(
    ("sql", "rows"),
    [
        (f"PIVOT {KEYED} ON k USING sum(v)", 1),  # columns from the data: DuckDB parses it as 2 statements
        (f"SELECT * FROM (PIVOT {KEYED} ON k USING sum(v))", 1),
        (f"WITH p AS (PIVOT {KEYED} ON k USING sum(v)) SELECT * FROM p", 1),
        (f"(PIVOT {KEYED} ON k USING sum(v))", 1),
        (f"PIVOT {KEYED} ON k IN ('a', 'b') USING sum(v)", 1),
        ("UNPIVOT (SELECT 1 AS a, 2 AS b) ON a, b INTO NAME name VALUE value", 2),
        ("DESCRIBE pairs", 22),
        ("DESCRIBE SELECT 1 AS one", 1),
        ("SUMMARIZE SELECT 1 AS one", 1),
        ("SUMMARIZE pairs", 22),
        ("EXPLAIN SELECT count(*) FROM pairs", 1),
        ("EXPLAIN ANALYZE SELECT count(*) FROM pairs", 1),
        (f"EXPLAIN PIVOT {KEYED} ON k USING sum(v)", 1),
        ("EXPLAIN (FORMAT json) SELECT 1", 1),
        ("FROM pairs SELECT count(*)", 1),
        ("SHOW TABLES", None),
        ("SELECT 1 AS query, 'current_setting' AS name", 1),  # the names as plain words are fine
    ],
)
def test_reads_that_must_work(workspace, sql, rows):
    frame = query(workspace, sql)
    assert rows is None or frame.height == rows


@pytest.mark.parametrize(
    "sql",
    [
        f"CREATE TABLE x AS PIVOT {KEYED} ON k USING sum(v)",
        f"CREATE VIEW v AS SELECT * FROM {KEYED}",
        f"COPY (PIVOT {KEYED} ON k USING sum(v)) TO 'out.csv'",
        f"INSERT INTO pairs PIVOT {KEYED} ON k USING sum(v)",
        "EXPLAIN ANALYZE CREATE TABLE z AS SELECT 1",
        "EXPLAIN COPY (SELECT 1) TO 'out.csv'",
        "EXPLAIN ANALYZE INSERT INTO pairs SELECT * FROM pairs",
        "WITH x AS (INSERT INTO pairs SELECT * FROM pairs RETURNING *) SELECT * FROM x",
        "WITH x AS (DELETE FROM pairs RETURNING *) SELECT count(*) FROM x",
        "WITH x AS (SELECT 1) INSERT INTO pairs SELECT * FROM pairs",
        "EXPLAIN",
    ],
)
def test_writes_refused_in_any_wrapping(workspace, sql):
    with pytest.raises((ReadOnlyError, duckdb.ParserException)):
        query(workspace, sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT current_setting('temp_directory')",
        "SELECT system.main.current_setting('home_directory')",
        "SELECT \"current_setting\"('extension_directory')",
        "SELECT 'secret_directory'.current_setting()",
        "SELECT name, value FROM duckdb_settings()",
        "SELECT * FROM system.main.duckdb_settings()",
        "SELECT * FROM pg_catalog.pg_settings",
        "SELECT * FROM duckdb_extensions()",
        "SELECT * FROM duckdb_temporary_files()",
        "SELECT * FROM duckdb_databases()",
        "SELECT * FROM duckdb_secrets()",
        "SELECT * FROM query('SELECT current_setting(''temp_directory'')')",
        "SELECT * FROM query_table('pairs')",
        "SELECT * FROM json_execute_serialized_sql('{}')",
    ],
)
def test_settings_and_paths_are_hidden(workspace, sql):
    with pytest.raises(ReadOnlyError, match="not available here"):
        query(workspace, sql)


def test_no_setting_holds_a_user_path(workspace, tmp_path, monkeypatch):
    """Even read directly (past the guard), every path-valued setting points into the private folder."""
    monkeypatch.chdir(tmp_path)
    connection = connect_views(workspace)
    try:
        settings = dict(connection.execute("SELECT name, value FROM duckdb_settings()").fetchall())
    finally:
        connection.close()
    private = Path(settings["temp_directory"]).parent
    assert private.name.startswith("tmp") and private.parent.name.startswith("dpop-sql-")
    for name in ("home_directory", "secret_directory", "temp_directory", "allowed_directories"):
        assert str(private) in settings[name], name
    user_paths = {str(tmp_path), str(workspace.root), os.path.expanduser("~"), os.getcwd()}
    for name, value in settings.items():
        assert not any(path in (value or "") for path in user_paths), (name, value)


def test_working_directory_tmp_is_unreachable(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.txt").write_text("secret")
    for sql in (
        "SELECT content FROM read_text('.tmp/secret.txt')",
        "SELECT * FROM glob('.tmp/*')",
        f"SELECT * FROM glob('{tmp_path}/.tmp/*')",
        "SELECT * FROM read_csv('.tmp/secret.txt')",
    ):
        with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
            query(workspace, sql)


def test_a_runaway_query_stops_at_its_time_limit(workspace):
    started = time.perf_counter()
    with pytest.raises(QueryTimeout, match="stopped after 0.5 s"):
        query(workspace, "SELECT count(*) FROM range(100000000) a, range(100000000) b", timeout=0.5)
    assert time.perf_counter() - started < 10
    assert query(workspace, "SELECT 42 AS answer", timeout=0.5).item() == 42  # a quick one is unaffected


def test_memory_limit_and_threads_are_set_and_enforced(workspace):
    connection = connect_views(workspace, memory_limit="256MiB", threads=1)
    try:
        limit, threads = connection.execute(
            "SELECT current_setting('memory_limit'), current_setting('threads')"
        ).fetchone()
    finally:
        connection.close()
    assert limit in ("256.0 MiB", "268.4 MB") and int(threads) == 1
    with pytest.raises(duckdb.OutOfMemoryException):
        # one 240 MB list: nothing to spill, so the limit itself stops it
        query(workspace, "SELECT len(list(range)) FROM range(30000000)", memory_limit="64MiB", threads=1)


def test_defaults_keep_a_shared_machine_responsive():
    assert 64 * 1024**2 <= default_memory_limit() <= MAX_DEFAULT_MEMORY
    assert 1 <= default_threads() <= 4


@given(
    st.integers(min_value=100, max_value=10**6),
    st.sampled_from([("MB", 1000**2), ("MiB", 1024**2), ("GB", 1000**3), ("gib", 1024**3)]),
    st.sampled_from(["", " "]),
)
def test_memory_limit_sizes_parse(number, unit, space):
    name, factor = unit
    assert parse_memory_limit(f"{number}{space}{name}") == number * factor


@pytest.mark.parametrize("text", ["12XB", "lots", "-1GB", "0%", "150%", "1MB", ""])
def test_bad_memory_limits_name_the_value(text):
    with pytest.raises(ValueError, match="memory limit"):
        parse_memory_limit(text)


# Property: whatever read or write sits at the core, wrapping it (EXPLAIN, EXPLAIN ANALYZE, a CTE in
# front, parentheses) never turns a write into something the guard lets through, nor a read into a refusal.
READS = [
    "SELECT count(*) FROM pairs",
    f"PIVOT {KEYED} ON k USING sum(v)",
    "UNPIVOT (SELECT 1 AS a, 2 AS b) ON a, b INTO NAME n VALUE v",
    "FROM pairs",
]
WRITES = [
    "INSERT INTO pairs SELECT * FROM pairs",
    "DELETE FROM pairs",
    "UPDATE pairs SET chosen = 'x'",
    "CREATE TABLE t AS SELECT 1",
    f"CREATE TABLE t AS PIVOT {KEYED} ON k USING sum(v)",
    "COPY (SELECT 1) TO 'x.csv'",
    "DROP VIEW pairs",
    "ATTACH 'x.duckdb' AS x",
    "SET threads = 1",
    "PRAGMA version",
    "CALL pragma_version()",
    "LOAD httpfs",
]


def _wrap(core: str, wrapper: str) -> str:
    return {
        "bare": core,
        "explain": f"EXPLAIN {core}",
        "analyze": f"EXPLAIN ANALYZE {core}",
        "cte": f"WITH c AS (SELECT 1 AS one) {core}",
        "comment": f"/* note */ {core} -- done",
        "parens": f"({core})",
    }[wrapper]


WRAPPERS = st.sampled_from(["bare", "explain", "analyze", "cte", "comment", "parens"])


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(WRITES), WRAPPERS)
def test_wrapped_writes_are_refused(core, wrapper):
    sql = _wrap(core, wrapper)
    try:
        check_read_only(sql)
    except (ReadOnlyError, duckdb.ParserException):
        return
    pytest.fail(f"accepted a write: {sql}")


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(READS), st.sampled_from(["bare", "explain", "analyze", "comment"]))
def test_wrapped_reads_are_accepted(core, wrapper):
    check_read_only(_wrap(core, wrapper))
