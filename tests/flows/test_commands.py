"""`dpop sql` and `dpop lineage` from the command line: formats, refusals and errors as one clean line."""

from __future__ import annotations

import json

import polars as pl
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_sql_formats(workspace, tmp_path):
    sql = "SELECT 1 AS one, 'a' AS letter UNION ALL SELECT 2, 'b' ORDER BY one"
    shown = runner.invoke(app, ["sql", sql, "-w", str(workspace.root)])
    assert shown.exit_code == 0 and "2 rows" in shown.output
    as_csv = runner.invoke(app, ["sql", sql, "-w", str(workspace.root), "--format", "csv"])
    assert as_csv.output.splitlines() == ["one,letter", "1,a", "2,b"]
    as_json = runner.invoke(app, ["sql", sql, "-w", str(workspace.root), "--format", "json"])
    assert json.loads(as_json.output) == [{"one": 1, "letter": "a"}, {"one": 2, "letter": "b"}]
    out = tmp_path / "result.parquet"
    written = runner.invoke(
        app, ["sql", sql, "-w", str(workspace.root), "--format", "parquet", "--out", str(out)]
    )
    assert written.exit_code == 0
    assert pl.read_parquet(out)["letter"].to_list() == ["a", "b"]


def test_sql_views_exist_on_an_empty_workspace(workspace):
    result = runner.invoke(
        app, ["sql", "SELECT count(*) AS n FROM pairs", "-w", str(workspace.root), "-f", "csv"]
    )
    assert result.output.splitlines() == ["n", "0"]


def test_sql_refuses_writes_and_shows_duckdb_errors(workspace):
    refused = runner.invoke(app, ["sql", "COPY (SELECT 1) TO 'x.csv'", "-w", str(workspace.root)])
    assert refused.exit_code == 1 and "refused: COPY statements are not allowed" in refused.output
    bad = runner.invoke(app, ["sql", "SELECT nope FROM pairs", "-w", str(workspace.root)])
    assert bad.exit_code == 1 and 'Referenced column "nope" not found' in bad.output
    parquet = runner.invoke(app, ["sql", "SELECT 1", "-w", str(workspace.root), "-f", "parquet"])
    assert parquet.exit_code == 1 and "--out" in parquet.output


def test_lineage_unknown_id(workspace):
    result = runner.invoke(app, ["lineage", "model-nope", "-w", str(workspace.root)])
    assert result.exit_code == 1 and "no artefact with id 'model-nope'" in result.output


def test_read_only_commands_do_not_create_a_workspace(tmp_path):
    missing = tmp_path / "nowhere"
    for args in (["sql", "SELECT 1"], ["lineage", "x"]):
        result = runner.invoke(app, [*args, "-w", str(missing)])
        assert result.exit_code == 1 and "no workspace at" in result.output
    assert not missing.exists()
