"""`dpop sql` for people and machines: the table fits the terminal with nested values summarised while
csv/json keep every value; `--schema`; `--timeout` and `--memory-limit` fail in one line; a damaged
catalog fails every command in one line naming the file, and `dpop catalog rebuild` mends it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.commands._common import console
from cli.commands.sql import CELL_CHARS, _cell, column_widths
from cli.main import app
from pipeline.ingest import ingest_source
from pipeline.workspace import Workspace

runner = CliRunner()

NESTED = (
    "SELECT [{'role': 'system', 'content': 'Be brief.'}, "
    "{'role': 'user', 'content': 'How do I bake bread at home?\nStep by step please.'}] AS prompt, "
    "repeat('long answer ', 40) AS chosen, {'a': 1, 'b': 'two'} AS meta, [3, 1, 4, 1, 5, 9, 2, 6, 5, 3] AS ids, "
    "1 / 3 AS ratio"
)


def _dpop(*args: str):
    return runner.invoke(app, list(args))


def test_table_fits_the_terminal_and_summarises_nested_values(workspace):
    result = _dpop("sql", NESTED, "-w", str(workspace.root))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= console.width for line in lines), max(len(line) for line in lines)
    assert "[2 msgs] user" in result.output and "Step by step" not in result.output
    assert "…" in result.output  # long text cut with an ellipsis
    assert "1 row" in result.output


def test_cells_are_one_short_line():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I\nbake?"}]
    assert _cell(prompt) == "[2 msgs] user: How do I ⏎ bake?"
    assert _cell([{"role": "user", "content": "Hi"}]) == "[1 msg] user: Hi"
    assert _cell({"a": 1, "b": [1, 2]}) == "{a: 1, b: [2] 1, 2}"
    assert _cell(list(range(20))) == "[20] 0, 1, 2, 3, 4, 5, 6, 7, …"
    assert _cell(None) == "" and _cell(1 / 3) == "0.333333"
    long = _cell("word " * 100)
    assert len(long) == CELL_CHARS and long.endswith("…")


def test_wide_tables_name_the_columns_left_out(workspace):
    columns = ", ".join(f"'value {i}' AS column_{i}" for i in range(30))
    result = _dpop("sql", f"SELECT {columns}", "-w", str(workspace.root))
    assert result.exit_code == 0, result.output
    assert "column_0" in result.output and "more columns not shown" in result.output
    assert all(len(line) <= console.width for line in result.output.splitlines()[:5])


def test_machine_formats_keep_every_value(workspace):
    as_json = _dpop("sql", NESTED, "-w", str(workspace.root), "--format", "json")
    [row] = json.loads(as_json.output)
    assert row["prompt"][1]["content"] == "How do I bake bread at home?\nStep by step please."
    assert row["chosen"] == "long answer " * 40 and row["ids"] == [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    as_csv = _dpop(
        "sql", "SELECT repeat('x', 500) AS text, 1 / 3 AS ratio", "-w", str(workspace.root), "-f", "csv"
    )
    assert as_csv.output.splitlines() == ["text,ratio", "x" * 500 + ",0.3333333333333333"]


def test_column_widths_share_the_terminal():
    rows = [["a" * 100, "b" * 5, "c" * 30]]
    widths = column_widths(["text", "short", "medium"], rows, 60)
    assert widths[1] == 5 and sum(widths) + 3 * len(widths) + 1 <= 60
    assert column_widths(["only"], [["z" * 500]], 40) == [36]


def test_schema_lists_views_with_the_contract_meaning(workspace):
    everything = _dpop("sql", "--schema", "-w", str(workspace.root))
    assert everything.exit_code == 0, everything.output
    for view in ("pairs", "pairs_history", "rejections_history", "metrics", "lineage"):
        assert f"{view}:" in everything.output
    pairs = _dpop("sql", "--schema", "pairs", "-w", str(workspace.root))
    assert (
        "First 128 bits" in pairs.output and "source_row" in pairs.output and "metrics:" not in pairs.output
    )
    unknown = _dpop("sql", "--schema", "nope", "-w", str(workspace.root))
    assert unknown.exit_code == 1 and "no view 'nope'" in unknown.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["SELECT count(*) FROM range(100000000) a, range(100000000) b", "--timeout", "0.5"],
            "stopped after 0.5 s",
        ),
        (["SELECT 1", "--memory-limit", "12XB"], "memory limit '12XB' is not a size"),
        (
            ["SELECT len(list(range)) FROM range(30000000)", "--memory-limit", "64MiB"],
            "Out of Memory Error",
        ),
        (["SELECT current_setting('temp_directory')"], "current_setting is not available here"),
        ([], "give a query"),
    ],
)
def test_limits_and_refusals_fail_in_one_line(workspace, args, message):
    result = _dpop("sql", *args, "-w", str(workspace.root))
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith("error:") and message in line


def test_a_damaged_catalog_fails_every_command_in_one_line_then_rebuild_mends_it(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "2 + 2?", "chosen": "4", "rejected": "5"}) + "\n")
    [ingested] = ingest_source(data, ws)
    ws.catalog_path.write_bytes(b"\0" * 10_000)
    # A new file: ingesting the same file again is a reused stage, which reads and writes no catalog.
    fresh = tmp_path / "more.jsonl"
    fresh.write_text(json.dumps({"prompt": "3 + 3?", "chosen": "6", "rejected": "7"}) + "\n")
    commands = [
        ["sql", "SELECT count(*) FROM sources"],
        ["lineage", f"pairs-{ingested.ingest_id}"],
        ["ingest", str(fresh)],
    ]
    for command in commands:
        result = _dpop(*command, "-w", str(ws.root))
        assert result.exit_code == 1, (command, result.output)
        assert "Traceback" not in result.output
        [line] = result.output.strip().splitlines()
        assert str(ws.catalog_path) in line and "dpop catalog rebuild" in line, line

    rebuilt = _dpop("catalog", "rebuild", "-w", str(ws.root))
    assert rebuilt.exit_code == 0, rebuilt.output
    # both ingests: the second one finished its files before its catalog write failed
    assert "from 2 records: 6 artefacts, 4 edges" in rebuilt.output, rebuilt.output
    assert "catalog.duckdb.corrupt-" in rebuilt.output
    [aside] = Path(ws.root).glob("catalog.duckdb.corrupt-*")
    assert aside.read_bytes() == b"\0" * 10_000
    after = _dpop(
        "sql", "SELECT source_uri, rows FROM sources ORDER BY source_uri", "-w", str(ws.root), "-f", "csv"
    )
    assert after.output.splitlines() == ["source_uri,rows", f"{fresh.as_uri()},1", f"{ingested.source_uri},1"]
    lineage = _dpop("lineage", f"pairs-{ingested.ingest_id}", "-w", str(ws.root))
    assert lineage.exit_code == 0 and "pairs.jsonl" in lineage.output


def test_rebuild_needs_an_existing_workspace(tmp_path):
    result = _dpop("catalog", "rebuild", "-w", str(tmp_path / "nowhere"))
    assert result.exit_code == 1 and "no workspace at" in result.output
    assert not (tmp_path / "nowhere").exists()
