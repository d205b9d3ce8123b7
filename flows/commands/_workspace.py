"""Read-only commands (`dpop sql`, `dpop lineage`) open an existing workspace instead of creating one."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.workspace import DEFAULT_WORKSPACE, Workspace


def existing_workspace(path: Path | None) -> Workspace:
    folder = Path(path or os.environ.get("DPOP_WORKSPACE", DEFAULT_WORKSPACE)).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no workspace at {folder.resolve()} (give one with --workspace or $DPOP_WORKSPACE)"
        )
    return Workspace.open(folder)
