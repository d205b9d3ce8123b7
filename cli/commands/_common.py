"""Helpers shared by CLI commands: the workspace option and turning known errors into clean exits."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)

WorkspaceOption = Annotated[
    Path | None,
    typer.Option(
        "--workspace", "-w", help="Workspace folder (default: $DPOP_WORKSPACE or ./dpop-workspace)."
    ),
]

VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Show the libraries' own logs, progress bars and warnings (Prefect, transformers, Dask).",
    ),
]


@contextlib.contextmanager
def clean_errors() -> Iterator[None]:
    """Show expected failures (bad input, bad config) as one red line and exit 1, not a stack trace."""
    try:
        yield
    except (
        ValueError,
        FileNotFoundError,
        NotADirectoryError,
        PermissionError,
        RuntimeError,
        KeyError,
    ) as error:
        # soft_wrap: one line however wide the terminal (the terminal wraps it, logs keep it whole)
        err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(1)
