"""`dpop report RUN_ID [RUN_ID …]`: the HTML report of one run, or of several side by side (curves,
final values, per source and edit bucket, the pair inspector, funnel, lineage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.commands._common import WorkspaceOption, clean_errors, console


def report(
    run_ids: Annotated[
        list[str],
        typer.Argument(help="Run ids (folders under <workspace>/runs/); several are compared side by side."),
    ],
    workspace: WorkspaceOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output folder (default: <workspace>/runs/RUN_ID/report, or <workspace>/reports/cmp-… for several).",
        ),
    ] = None,
    alone: Annotated[
        bool,
        typer.Option("--alone", help="One run without the other runs of its `dpop run --losses` comparison."),
    ] = False,
    open_page: Annotated[bool, typer.Option("--open", help="Open the page in a browser.")] = False,
) -> None:
    """Write the report: index.html, inspector.html and PNG figures, in one self-contained folder. Runs
    that share no dataset are refused."""
    with clean_errors():
        from cli.commands._workspace import writable_workspace
        from pipeline.report import build_report

        with console.status("drawing the figures"):
            index = build_report(writable_workspace(workspace), run_ids, out, compare=not alone)
        console.print(f"report: [bold]{index}[/]")
        console.print(f"pair inspector: [bold]{index.parent / 'inspector.html'}[/]")
        if open_page:
            import webbrowser

            webbrowser.open(index.as_uri())


def register(app: typer.Typer) -> None:
    app.command("report")(report)
