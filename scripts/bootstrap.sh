#!/usr/bin/env bash
# Create .venv and install dpop with its test tools. Idempotent: a second run is quick.
#   --with-browser   also install Debian's chromium (root + apt-get) for the report's rendering test
# torch is pinned to the CPU build that lies on this machine's disk; on a GPU machine install your
# own torch into .venv first (e.g. the CUDA wheel) and this script leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
VENV_PY=.venv/bin/python
"$VENV_PY" -m pip install -q --upgrade pip
if ! "$VENV_PY" -c "import torch" 2>/dev/null; then
    "$VENV_PY" -m pip install -q "torch==2.13.0"
fi
"$VENV_PY" -m pip install -q -e ".[dev]"
if [ "${1:-}" = "--with-browser" ]; then
    sh scripts/install_chromium.sh
fi
