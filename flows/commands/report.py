"""`dpop report RUN_ID`: the HTML report of a training run (curves, funnel, edit ratios, lineage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands._common import WorkspaceOption, clean_errors, console


def report(
    run_id: Annotated[str, typer.Argument(help="The run id (a folder under <workspace>/runs/).")],
    workspace: WorkspaceOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default: <workspace>/runs/RUN_ID/report)."),
    ] = None,
    open_page: Annotated[bool, typer.Option("--open", help="Open the page in a browser.")] = False,
) -> None:
    """Write the run's report: index.html plus PNG figures, in one self-contained folder."""
    with clean_errors():
        from flows.commands._workspace import writable_workspace
        from pipeline.report import build_report

        with console.status("drawing the figures"):
            index = build_report(writable_workspace(workspace), run_id, out)
        console.print(f"report: [bold]{index}[/]")
        if open_page:
            import webbrowser

            webbrowser.open(index.as_uri())


def register(app: typer.Typer) -> None:
    app.command("report")(report)
