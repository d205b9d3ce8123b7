"""`dpop sql`: one read-only SQL query over the workspace views (pipeline/sql.py)."""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.commands._common import WorkspaceOption, clean_errors, console
from cli.commands._workspace import existing_workspace

CELL_CHARS = 200  # longest text a table cell holds before the terminal width cuts it further
FIT_COLUMN = 12  # the width a column needs to be worth showing; wider text is cut with an ellipsis


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def sql(
    query: Annotated[
        str | None,
        typer.Argument(
            help="One SELECT (or PIVOT, DESCRIBE, SUMMARIZE, EXPLAIN) over the views pairs, pairs_history, "
            "ingested_pairs, rejections, rejections_history, ingests, datasets, shards, runs, models, metrics, "
            "lineage, artifacts, sources. With --schema: a view name (optional).",
            show_default=False,
        ),
    ] = None,
    workspace: WorkspaceOption = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format (parquet needs --out).")
    ] = OutputFormat.table,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the result to this file.")] = None,
    limit: Annotated[
        int, typer.Option("--max-rows", help="Rows shown by the table format (files get every row).")
    ] = 50,
    timeout: Annotated[
        float,
        typer.Option("--timeout", help="Seconds before the query is stopped (0: no limit).", min=0),
    ] = 60.0,
    memory_limit: Annotated[
        str | None,
        typer.Option(
            "--memory-limit",
            help="DuckDB's memory limit, e.g. 8GB or 50% (of RAM); default 25% of RAM, at most 4GB.",
        ),
    ] = None,
    schema: Annotated[
        bool,
        typer.Option("--schema", help="List the views (or one view) and their columns with their meaning."),
    ] = False,
) -> None:
    """Query the workspace with SQL (read-only: statements that write, attach, copy, load or SET are refused)."""
    with clean_errors():
        import duckdb

        from pipeline.sql import describe_views, parse_memory_limit
        from pipeline.sql import query as run_query

        ws = existing_workspace(workspace)
        if schema:
            _print_schema(describe_views(ws, query), query)
            return
        if query is None:
            raise ValueError('give a query, e.g. dpop sql "SELECT count(*) FROM pairs", or --schema')
        if output_format is OutputFormat.parquet and out is None:
            raise ValueError("--format parquet writes a file: give --out FILE")
        try:
            frame = run_query(
                ws, query, timeout=timeout or None, memory_limit=parse_memory_limit(memory_limit)
            )
        except duckdb.OutOfMemoryException as error:
            raise ValueError(f"{_first_line(error)} (raise it with --memory-limit)") from None
        except duckdb.Error as error:  # DuckDB's own message (syntax error, unknown column, ...)
            raise ValueError(str(error).strip()) from None
        _emit(frame, output_format, out, limit)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _emit(frame, output_format: OutputFormat, out: Path | None, limit: int) -> None:
    """Files and csv/json/parquet get the values as they are (for machines); the table is for reading."""
    from pipeline.atomic import atomic_file

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
    return json.dumps(frame.to_dicts(), default=str, ensure_ascii=False)


def _print_table(frame, limit: int) -> None:
    """One line per row, cut with an ellipsis to the terminal's width; the columns that fit are shown
    (the others are named below: --format csv/json, or fewer columns, shows them)."""
    from rich.table import Table

    rows = [[_cell(value) for value in row] for row in frame.head(limit).iter_rows()]
    widths = column_widths(frame.columns, rows, console.width)
    table = Table(show_lines=False)
    for name, width in zip(frame.columns, widths, strict=False):
        table.add_column(name, width=width, overflow="ellipsis", no_wrap=True)
    for row in rows:
        table.add_row(*row[: len(widths)])
    console.print(table, highlight=False, markup=False)
    shown = min(limit, frame.height)
    notes = [f"showing {shown}; --max-rows or --out for all"] if shown < frame.height else []
    if len(widths) < frame.width:
        hidden = frame.columns[len(widths) :]
        notes.append(f"{len(hidden)} more columns not shown: {', '.join(hidden)}")
    count = f"{frame.height} row" + ("" if frame.height == 1 else "s")
    console.print(count + (f" ({'; '.join(notes)})" if notes else ""), highlight=False)


def column_widths(names: list[str], rows: list[list[str]], width: int) -> list[int]:
    """Widths of the leading columns that fit in `width` characters (at least one column): each gets
    up to FIT_COLUMN, then the space left goes to the columns that need more, narrowest need first."""
    natural = [max([len(name), 1, *(len(row[i]) for row in rows)]) for i, name in enumerate(names)]
    widths: list[int] = []
    used = 1  # the table's left border
    for need in natural:
        start = min(need, FIT_COLUMN)
        if widths and used + start + 3 > width:  # 3: padding and border
            break
        widths.append(start)
        used += start + 3
    spare = max(width - used, 0)
    order = sorted(range(len(widths)), key=lambda i: natural[i])
    for position, index in enumerate(order):  # fill the narrowest needs first, share the rest evenly
        extra = min(natural[index] - widths[index], spare // (len(order) - position))
        widths[index] += extra
        spare -= extra
    return widths


def _print_schema(frame, view: str | None) -> None:
    from rich.table import Table

    from pipeline.sql import view_description

    for name in dict.fromkeys(frame["view"].to_list()):
        table = Table(title=f"{name}: {view_description(name)}", title_justify="left", show_lines=False)
        table.add_column("column", no_wrap=True)
        table.add_column("type", overflow="fold", max_width=30)
        table.add_column("meaning", overflow="fold")
        for _, column, column_type, meaning in frame.filter(frame["view"] == name).iter_rows():
            table.add_row(column, column_type, meaning)
        console.print(table, highlight=False, markup=False)
    if view is None:
        console.print("dpop sql --schema VIEW for one view", highlight=False)


def _cell(value: Any) -> str:
    """A value as one short line: long text cut, newlines shown as ⏎, nested values summarised."""
    return _one_line(_summary(value))


def _summary(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, list):
        return _list_summary(value)
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"{key}: {_summary(item)}" for key, item in list(value.items())[:4])
            + (", …}" if len(value) > 4 else "}")
        )
    return str(value)


def _list_summary(items: list) -> str:
    if items and all(isinstance(item, dict) and "role" in item and "content" in item for item in items):
        # a chat prompt: how many messages, then the last one (what the response answers)
        last = items[-1]
        label = "msg" if len(items) == 1 else "msgs"
        return f"[{len(items)} {label}] {last['role']}: {last['content']}"
    shown = ", ".join(_summary(item) for item in items[:8])
    return f"[{len(items)}] {shown}" + (", …" if len(items) > 8 else "")


def _one_line(text: str) -> str:
    text = " ⏎ ".join(part.strip() for part in text.splitlines()) if "\n" in text else text
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def register(app: typer.Typer) -> None:
    app.command("sql")(sql)
