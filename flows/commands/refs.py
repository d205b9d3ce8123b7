"""`dpop refs`: store the reference model's log-probs in a new dataset version (training then loads no reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands._common import WorkspaceOption, clean_errors, console


def refs(
    workspace: WorkspaceOption = None,
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help="Tokenised dataset version id (from `dpop build`).")
    ] = ...,
    model: Annotated[
        Path, typer.Option("--model", "-m", help="Reference model folder (save_pretrained, safetensors).")
    ] = ...,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Pairs per forward pass (default 64).")
    ] = None,
) -> None:
    """Compute ref_chosen_logps / ref_rejected_logps with the reference model; print the new dataset id."""
    with clean_errors():
        from dpop.refs import compute_reference_logps
        from flows.commands._workspace import writable_workspace

        new_id = compute_reference_logps(writable_workspace(workspace), dataset, model, batch_size=batch_size)
        console.print(f"reference log-probs of {dataset} stored in dataset version:")
        console.print(new_id, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("refs")(refs)
