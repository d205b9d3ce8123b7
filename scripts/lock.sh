#!/usr/bin/env bash
# requirements.lock: the exact version of every package that `pip install -e ".[dev]"` installs, resolved in a
# fresh virtual environment within pyproject.toml's ranges. scripts/bootstrap.sh installs with it as pip
# constraints, so an install months from now gets the versions CI passed with.
#
#   bash scripts/lock.sh             keep the locked versions; resolve only what the lock lacks (a new dependency)
#   bash scripts/lock.sh --upgrade   the newest versions pyproject.toml allows (a deliberate upgrade: then run
#                                    `bash scripts/bootstrap.sh && .venv/bin/python -m pytest -q` and commit the lock)
#   bash scripts/lock.sh --check     install from the lock into a fresh environment; fail unless `pip freeze`
#                                    there equals the lock (torch aside)
#
# Not in the lock: torch (the bootstrap installs torch==2.13.0, the CPU build; a GPU machine keeps its own),
# nvidia-*/triton (torch's GPU runtime) and dpop itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
LOCK=requirements.lock
TORCH_CPU="torch==2.13.0"
mode="${1:-}"
case "$mode" in
    "" | --upgrade | --check) ;;
    *) echo "usage: bash scripts/lock.sh [--upgrade | --check]" >&2; exit 2 ;;
esac
if [ "$mode" != "--upgrade" ] && [ ! -f "$LOCK" ]; then
    if [ "$mode" = "--check" ]; then echo "no $LOCK to check" >&2; exit 1; fi
    mode=--upgrade  # nothing to keep yet
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
py="$work/venv/bin/python"
if [ "$mode" = "--upgrade" ]; then
    echo "resolving the newest versions pyproject.toml allows in a fresh environment"
    "$py" -m pip install -q --upgrade pip setuptools
    "$py" -m pip install -q "$TORCH_CPU"
    "$py" -m pip install -q -e ".[dev]"
else
    echo "installing from $LOCK into a fresh environment"
    "$py" -m pip install -q -c "$LOCK" pip setuptools
    "$py" -m pip install -q "$TORCH_CPU"
    "$py" -m pip install -q -c "$LOCK" -e ".[dev]"
fi
"$py" -m pip check

if [ "$mode" = "--check" ]; then
    "$py" -m pip freeze --all | "$py" scripts/lockfile.py write "$work/fresh.lock" >/dev/null
    if diff <(grep -v '^#' "$LOCK") <(grep -v '^#' "$work/fresh.lock"); then
        echo "ok: a fresh environment installed from $LOCK has exactly the locked versions ($(grep -vc '^#' "$LOCK") packages)"
    else
        echo "the fresh environment differs from $LOCK (< lock, > installed)" >&2
        exit 1
    fi
else
    "$py" -m pip freeze --all | "$py" scripts/lockfile.py write "$LOCK"
    git --no-pager diff --stat -- "$LOCK" 2>/dev/null || true
fi
