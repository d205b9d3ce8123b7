"""`dpop export DATASET_ID --format trl|parquet|hf --out DIR`: a dataset version as TRL and `datasets` read
it, with a dataset card; `--push-to-hub REPO` uploads it (pipeline/export.py)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cli.commands._common import WorkspaceOption, clean_errors, console


class ExportFormat(str, Enum):
    trl = "trl"
    parquet = "parquet"
    hf = "hf"


class ExportStyle(str, Enum):
    conversational = "conversational"
    standard = "standard"


def export(
    dataset_id: Annotated[
        str, typer.Argument(help="A dataset version id (or a unique prefix): ds-…, ds-…-ref-….")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (created; must be empty).")],
    output_format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            "-f",
            help="trl: data/*.parquet in the Hub layout, load_dataset(DIR); parquet: one file per split; "
            "hf: save_to_disk.",
        ),
    ] = ExportFormat.trl,
    style: Annotated[
        ExportStyle,
        typer.Option(
            "--style",
            help="conversational: prompt = messages, chosen/rejected = one assistant message; standard: "
            "text, the prompt rendered with the dataset's chat template.",
        ),
    ] = ExportStyle.conversational,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out folder.")] = False,
    push_to_hub: Annotated[
        str | None,
        typer.Option(
            "--push-to-hub", metavar="REPO", help="Also upload to this Hub dataset repo (owner/name)."
        ),
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the Hub repo private.")] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Export the kept pairs of a dataset version (train/test splits) with a dataset card (README.md)."""
    with clean_errors():
        from cli.commands._workspace import existing_workspace
        from pipeline.export import export_dataset, push_export

        ws = existing_workspace(workspace)
        with console.status("exporting"):
            result = export_dataset(ws, dataset_id, out, output_format.value, style.value, overwrite)
        splits = ", ".join(f"{name} {rows:,}" for name, rows in result.rows.items())
        console.print(
            f"exported {sum(result.rows.values()):,} pairs of {result.dataset_id} ({splits}) as "
            f"{result.format} ({result.style}) to [bold]{result.out_dir}[/]",
            highlight=False,
            soft_wrap=True,
        )
        console.print(
            f"licences: {', '.join(result.licenses)}; card: {result.card}", highlight=False, soft_wrap=True
        )
        if push_to_hub:
            with console.status(f"pushing to {push_to_hub}"):
                url = push_export(result, push_to_hub, private=private)
            console.print(f"pushed: {url}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
