"""How commands open a workspace: read-only commands (`dpop sql`, `dpop lineage`) open an existing one;
commands that write open it through `writable_workspace`, the one place that runs before any write."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.atomic import sweep_temporaries
from pipeline.workspace import DEFAULT_WORKSPACE, Workspace


def existing_workspace(path: Path | None) -> Workspace:
    folder = Path(path or os.environ.get("DPOP_WORKSPACE", DEFAULT_WORKSPACE)).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no workspace at {folder.resolve()} (give one with --workspace or $DPOP_WORKSPACE)"
        )
    return Workspace.open(folder)


def writable_workspace(path: Path | None) -> Workspace:
    """Open (creating it if needed) the workspace a command writes to, after removing what killed
    commands left half-written: `.tmp-*` files and folders whose writer process is gone. Temporaries
    of commands still running (in this workspace at the same time) are left alone."""
    from cli.commands._common import err_console

    workspace = Workspace.open(path)
    swept = sweep_temporaries(workspace.root)
    if swept:
        err_console.print(f"removed {swept} unfinished temporary file(s) left by interrupted commands")
    return workspace
