"""`dpop init`: write a commented default `dpop.yaml` for `dpop run --config`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.commands._common import clean_errors, console


def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("dpop.yaml"),
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented default config (data, tiny model, SFT warm-up, curation, training)."""
    with clean_errors():
        from demo.defaults import DEFAULT_CONFIG_YAML
        from pipeline.atomic import write_text_atomic

        if path.exists() and not force:
            raise ValueError(f"{path} exists; use --force to overwrite it")
        write_text_atomic(path, DEFAULT_CONFIG_YAML)
        console.print(f"wrote {path}; edit it, then run `dpop run --config {path}`")


def register(app: typer.Typer) -> None:
    app.command("init")(init)
