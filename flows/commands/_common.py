"""Helpers shared by CLI commands: the workspace option and turning known errors into clean exits."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

WorkspaceOption = Annotated[
    Path | None,
    typer.Option(
        "--workspace", "-w", help="Workspace folder (default: $DPOP_WORKSPACE or ./dpop-workspace)."
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
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, markup=True)
        sys.exit(1)
