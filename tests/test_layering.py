"""The layering of docs/architecture.md, checked on what each layer actually imports: `pipeline` never
loads torch or prefect (data work starts fast and runs where no GPU is), `dpop` and `demo` never load
prefect (the trainer runs under `accelerate launch` / `torchrun` on its own), and neither `pipeline`
nor `dpop` loads the embedded demo (`demo` sits above them, below `flows`); `flows` never loads the
command line (`cli`, the top layer)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[str]:
    found = pkgutil.walk_packages([str(REPO / package)], prefix=f"{package}.")
    return [package] + [info.name for info in found if not info.name.rsplit(".", 1)[-1].startswith("_")]


def _loaded_after_import(modules: list[str], forbidden: list[str]) -> list[str]:
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(' '.join(m for m in {forbidden!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    return result.stdout.split()


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("pipeline", ["torch", "prefect", "demo"]),
        ("dpop", ["prefect", "demo"]),
        ("demo", ["prefect"]),
        ("flows", ["cli.main", "cli.commands"]),
    ],
)
def test_layer_does_not_load_forbidden_libraries(package, forbidden):
    modules = _modules(package)
    assert len(modules) > 3
    assert _loaded_after_import(modules, forbidden) == []
