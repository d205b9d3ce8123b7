"""`dpop model tiny`: a tiny randomly initialised Llama (demo/tiny_model.py) for demos and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.commands._common import clean_errors, console


def tiny(
    tokenizer: Annotated[
        Path, typer.Option("--tokenizer", "-t", help="Tokenizer folder (e.g. from `dpop tokenizer train`).")
    ] = ...,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to write the model and tokenizer to.")
    ] = ...,
    layers: Annotated[int, typer.Option("--layers", help="Transformer blocks.")] = 2,
    hidden: Annotated[int, typer.Option("--hidden", help="Hidden size.")] = 64,
    heads: Annotated[int, typer.Option("--heads", help="Attention heads.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random initial weights.")] = 0,
) -> None:
    """Write a tiny randomly initialised Llama model (safetensors) beside a copy of the tokenizer."""
    with clean_errors():
        from demo.tiny_model import make_tiny_model

        path = make_tiny_model(
            tokenizer, out, num_layers=layers, hidden_size=hidden, num_heads=heads, seed=seed
        )
        console.print(f"tiny Llama model ({layers} layers, hidden {hidden}) written to {path}")


def register(app: typer.Typer) -> None:
    model_app = typer.Typer(help="Model utilities.", no_args_is_help=True)
    model_app.command("tiny")(tiny)
    app.add_typer(model_app, name="model")
