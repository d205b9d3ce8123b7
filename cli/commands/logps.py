"""`dpop logps`: store any model's log-probs of a dataset's pairs (a table keyed by pair id), computing
only the pairs the workspace's per-pair cache has not seen under that model and precision."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.commands._common import WorkspaceOption, clean_errors, console

DatasetOption = Annotated[
    str,
    typer.Option(
        "--dataset", "-d", help="Dataset version id (from `dpop build`, `dpop refs`, `dpop select`)."
    ),
]
DtypeOption = Annotated[
    str,
    typer.Option("--dtype", help="float32 | bfloat16 | float16: the dtype the weights are loaded in."),
]
AutocastOption = Annotated[
    str, typer.Option("--autocast", help="none | bfloat16 | float16: mixed precision of the forward pass.")
]


def logps(
    workspace: WorkspaceOption = None,
    dataset: DatasetOption = ...,
    model: Annotated[
        Path,
        typer.Option(
            "--model",
            "-m",
            help="Model folder (save_pretrained, safetensors): a reference, a probe, any checkpoint.",
        ),
    ] = ...,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Pairs per forward pass (default 64).")
    ] = None,
    dtype: DtypeOption = "float32",
    autocast: AutocastOption = "none",
) -> None:
    """Compute the summed log-probs of chosen and rejected under MODEL for every pair of the dataset;
    print how many were computed and how many came from the cache, and the log-probs table's id."""
    with clean_errors():
        from cli.commands._workspace import writable_workspace
        from dpop.model_io import Precision
        from dpop.model_logps import compute_model_logps

        precision = Precision(dtype, None if autocast == "none" else autocast)
        record = compute_model_logps(writable_workspace(workspace), dataset, model, precision, batch_size)
        summary = record.summary
        state = (
            "reused"
            if record.reused
            else f"computed {summary['computed']:,}, from the cache {summary['cached']:,}"
        )
        console.print(
            f"log-probs of {dataset} under {summary['model']} ({precision.label}): {state} "
            f"-> {record.output('logps').path}"
        )
        console.print(record.id, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("logps")(logps)
