"""`dpop refs`: store the reference model's log-probs in a new dataset version (training then loads no reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.commands._common import WorkspaceOption, clean_errors, console


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
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="float32 | bfloat16 | float16: the dtype the weights are loaded in; the training "
            "config's model_dtype.",
        ),
    ] = "float32",
    autocast: Annotated[
        str,
        typer.Option(
            "--autocast",
            help="none | bfloat16 | float16: mixed precision, as training with bf16: true / fp16: true.",
        ),
    ] = "none",
) -> None:
    """Compute ref_chosen_logps / ref_rejected_logps with the reference model, in the precision the policy
    will train in (--dtype, --autocast); print the new dataset id."""
    with clean_errors():
        from cli.commands._workspace import writable_workspace
        from dpop.model_io import Precision
        from dpop.refs import compute_reference_logps

        precision = Precision(dtype, None if autocast == "none" else autocast)
        new_id = compute_reference_logps(
            writable_workspace(workspace), dataset, model, batch_size=batch_size, dtype=precision
        )
        console.print(f"reference log-probs of {dataset} ({precision.label}) stored in dataset version:")
        console.print(new_id, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("refs")(refs)
