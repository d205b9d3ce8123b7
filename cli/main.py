"""The `dpop` command line. Each module in `cli/commands/` defines `register(app)` and adds its
commands; heavy libraries are imported inside the commands so `dpop --help` stays fast."""

from __future__ import annotations

import importlib
import pkgutil

import typer

import cli.commands

app = typer.Typer(
    name="dpop",
    help="Data-centric preference optimisation: ingest, curate and shard preference pairs; train with DPO-Positive.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module_info in sorted(pkgutil.iter_modules(cli.commands.__path__), key=lambda m: m.name):
    if module_info.name.startswith("_"):
        continue
    importlib.import_module(f"cli.commands.{module_info.name}").register(app)


if __name__ == "__main__":
    app()
