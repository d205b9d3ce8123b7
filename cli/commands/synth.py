"""`dpop synth math`: write MetaMath-style low-edit preference pairs (the embedded demo data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.commands._common import clean_errors, console

synth_app = typer.Typer(help="Generate synthetic preference pairs.", no_args_is_help=True)


@synth_app.command("math")
def math(
    n: Annotated[int, typer.Option("--n", "-n", help="Number of pairs to write.", min=1)] = 1000,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output JSONL file (prompt, chosen, rejected).")
    ] = Path("math_pairs.jsonl"),
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same file.")] = 0,
) -> None:
    """Arithmetic word problems with step-by-step answers; the rejected copy has one intermediate
    result wrong and the same final answer (as in the Smaug paper's MetaMath pairs)."""
    with clean_errors():
        from demo.synth_math import write_math_pairs

        path = write_math_pairs(out, n, seed)
        console.print(f"wrote {n} pairs to [bold]{path}[/] (seed {seed}); ingest with `dpop ingest {path}`")


def register(app: typer.Typer) -> None:
    app.add_typer(synth_app, name="synth")
