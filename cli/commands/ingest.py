"""`dpop ingest`: preference files, folders or dataset names to canonical pairs in the workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.commands._common import WorkspaceOption, clean_errors, console, err_console

CANONICAL_FIELDS = ("prompt", "chosen", "rejected", "system", "chosen_score", "rejected_score")


def parse_column_map(text: str | None) -> dict[str, str]:
    """`prompt=question,chosen=good` -> {"prompt": "question", "chosen": "good"}."""
    if not text:
        return {}
    mapping = {}
    for item in text.split(","):
        canonical, sep, original = (part.strip() for part in item.partition("="))
        if not sep or not canonical or not original:
            raise ValueError(f"--map: {item!r} is not NAME=COLUMN (e.g. prompt=question,chosen=good)")
        if canonical in mapping:
            raise ValueError(f"--map: {canonical} is mapped twice ({mapping[canonical]} and {original})")
        if original in mapping.values():
            raise ValueError(f"--map: column {original} is mapped to two names")
        mapping[canonical] = original
    return mapping


# Long only for its typer option declarations (one per flag, with its help); the body is short.
def ingest(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Files (.jsonl, .json, .gz, .parquet, .csv, .arrow), folders, or Hugging Face dataset names."
        ),
    ],
    workspace: WorkspaceOption = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", "-f", help="Format name instead of detection (see docs/ingest.md)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Source name (default: the file stem).")
    ] = None,
    column_map: Annotated[
        str | None,
        typer.Option(
            "--map",
            help="Column mapping CANONICAL=COLUMN,... e.g. prompt=question,chosen=good,rejected=bad "
            "(applied at once: chosen=rejected,rejected=chosen swaps).",
        ),
    ] = None,
    max_field_chars: Annotated[
        int, typer.Option("--max-field-chars", help="Reject a text field longer than this (field_too_large).")
    ] = 100_000,
) -> None:
    """Read preference data, write canonical pairs and rejections, and print a summary per file."""
    with clean_errors():
        from rich.table import Table

        from cli.commands._workspace import writable_workspace
        from pipeline.ingest import FORMATS, IngestOptions, ingest_source

        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}")
        if max_field_chars < 1:
            raise ValueError(
                f"--max-field-chars must be a positive number of characters, not {max_field_chars}"
            )
        options = IngestOptions(column_map=parse_column_map(column_map), max_field_chars=max_field_chars)
        ws = writable_workspace(workspace)

        def note(message: str) -> None:
            err_console.print(f"[yellow]note:[/] {message}", highlight=False)

        results = []
        for source in sources:
            with console.status(f"ingesting {source} ..."):
                results += ingest_source(source, ws, fmt=fmt, name=name, options=options, on_note=note)

        table = Table(title=f"Ingested into {ws.root}")
        table.add_column("file", overflow="fold")
        table.add_column("format", overflow="fold")
        for column in ("read", "kept", "pairs", "rejected"):
            table.add_column(column, justify="right")
        table.add_column("rejected by reason", overflow="fold")
        for result in results:
            label = result.source_uri.removeprefix("file://")
            reasons = ", ".join(f"{reason} {count:,}" for reason, count in result.rejected_by_reason.items())
            table.add_row(
                (Path(label).name if label.startswith("/") else label)
                + (" (reused)" if result.reused else ""),
                result.format,
                f"{result.rows_read:,}",
                f"{result.rows_kept:,}",
                f"{result.pairs_written:,}",
                f"{result.rows_rejected:,}",
                reasons or "-",
            )
        console.print(table)


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
