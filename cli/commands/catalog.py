"""`dpop catalog rebuild`: recreate the workspace catalog from the records on disk (pipeline/catalog_rebuild.py)."""

from __future__ import annotations

import typer

from cli.commands._common import WorkspaceOption, clean_errors, console, err_console
from cli.commands._workspace import existing_workspace

catalog_app = typer.Typer(help="The workspace catalog (catalog.duckdb).", no_args_is_help=True)


@catalog_app.command("rebuild")
def rebuild(workspace: WorkspaceOption = None) -> None:
    """Recreate catalog.duckdb from the workspace files (stage records, ingest.json, manifests, run.json,
    sft.json); the old file is kept as catalog.duckdb.corrupt-<time>."""
    with clean_errors():
        from pipeline.catalog_rebuild import rebuild_catalog

        result = rebuild_catalog(existing_workspace(workspace))
        for note in result.skipped:
            err_console.print(f"[yellow]skipped[/] {note}", highlight=False, markup=True, soft_wrap=True)
        console.print(
            f"rebuilt {result.path} from {result.records} records: "
            f"{result.artifacts} artefacts, {result.edges} edges",
            highlight=False,
            soft_wrap=True,
        )
        if result.moved_aside is not None:
            console.print(f"the old file is kept as {result.moved_aside}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(catalog_app, name="catalog")
