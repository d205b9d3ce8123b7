"""`dpop sql`: one read-only SQL query over the workspace views (pipeline/sql.py)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from flows.commands._common import WorkspaceOption, clean_errors, console
from flows.commands._workspace import existing_workspace


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def sql(
    query: Annotated[
        str,
        typer.Argument(
            help="One SELECT over the views pairs, ingested_pairs, rejections, ingests, datasets, shards, runs, "
            "models, metrics, lineage, artifacts, sources."
        ),
    ],
    workspace: WorkspaceOption = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format (parquet needs --out).")
    ] = OutputFormat.table,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the result to this file.")] = None,
    limit: Annotated[
        int, typer.Option("--max-rows", help="Rows shown by the table format (files get every row).")
    ] = 50,
) -> None:
    """Query the workspace with SQL (read-only: statements that write, attach, copy, load or SET are refused)."""
    with clean_errors():
        import duckdb

        from pipeline.atomic import atomic_file
        from pipeline.sql import query as run_query

        if output_format is OutputFormat.parquet and out is None:
            raise ValueError("--format parquet writes a file: give --out FILE")
        try:
            frame = run_query(existing_workspace(workspace), query)
        except duckdb.Error as error:  # DuckDB's own message (syntax error, unknown column, ...)
            raise ValueError(str(error).strip()) from None
        if out is not None:
            with atomic_file(out) as tmp:
                if output_format is OutputFormat.parquet:
                    frame.write_parquet(tmp)
                elif output_format is OutputFormat.json:
                    tmp.write_text(_json(frame), encoding="utf-8")
                else:  # csv, and table written to a file as csv
                    frame.write_csv(tmp)
            console.print(f"wrote {frame.height} rows to {out}")
        elif output_format is OutputFormat.csv:
            typer.echo(frame.write_csv(), nl=False)
        elif output_format is OutputFormat.json:
            typer.echo(_json(frame))
        else:
            _print_table(frame, limit)


def _json(frame) -> str:
    import json

    return json.dumps(frame.to_dicts(), default=str, ensure_ascii=False)


def _print_table(frame, limit: int) -> None:
    from rich.table import Table

    table = Table(show_lines=False)
    for name in frame.columns:
        table.add_column(name, overflow="fold")
    for row in frame.head(limit).iter_rows():
        table.add_row(*("" if value is None else _cell(value) for value in row))
    console.print(table)
    shown = min(limit, frame.height)
    console.print(
        f"{frame.height} rows"
        + (f" (showing {shown}; --max-rows or --out for all)" if shown < frame.height else "")
    )


def _cell(value) -> str:
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."


def register(app: typer.Typer) -> None:
    app.command("sql")(sql)
