#!/usr/bin/env bash
# Create .venv and install dpop with its test tools at the versions in requirements.lock (pip constraints:
# the versions CI passed with), so an install months from now resolves the same. Idempotent: when .venv
# already has exactly the locked versions, nothing is installed and a second run takes about a second.
#   --with-browser   also install Debian's chromium (root + apt-get) for the report's rendering test
# torch is not in the lock: where none is installed, the CPU build that lies on this machine's disk
# (torch==2.13.0); on a GPU machine install your own torch into .venv first (e.g. the CUDA wheel) and this
# script leaves it alone (the packages that torch pins itself are then left to it).
# New versions: `bash scripts/lock.sh --upgrade`, then the tests (docs/ecosystem.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
LOCK=requirements.lock
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
VENV_PY=.venv/bin/python
# The lock and pyproject.toml as installed last time: when neither changed and every locked version is
# in place, there is nothing to do (pip would spend ~20 s resolving and rebuilding the editable install).
stamp=.venv/.dpop-installed
wanted="$(cat pyproject.toml "$LOCK" scripts/lockfile.py | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ] && "$VENV_PY" scripts/lockfile.py check "$LOCK" 2>/dev/null; then
    echo ".venv is up to date with $LOCK"
else
    "$VENV_PY" -m pip install -q -c "$LOCK" pip setuptools
    if ! "$VENV_PY" -c "import torch" 2>/dev/null; then
        "$VENV_PY" -m pip install -q -c "$LOCK" "torch==2.13.0"  # its own dependencies at locked versions
    fi
    constraints=.venv/dpop-constraints.txt  # the lock, less what a GPU machine's own torch decides
    "$VENV_PY" scripts/lockfile.py constraints "$LOCK" "$constraints"
    "$VENV_PY" -m pip install -q -c "$constraints" -e ".[dev]"
    if "$VENV_PY" scripts/lockfile.py check "$LOCK"; then
        echo "$wanted" > "$stamp"
        echo ".venv has the versions of $LOCK"
    else
        echo "warning: .venv differs from $LOCK (above); run 'bash scripts/lock.sh' if a dependency was added" >&2
    fi
fi
if [ "${1:-}" = "--with-browser" ]; then
    sh scripts/install_chromium.sh
fi
