#!/bin/sh
# Install Debian's chromium for the report test (tests/test_report.py opens the page headless).
# Does nothing when chromium is already there; needs root (CI containers run as root).
set -eu
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium || command -v chromium-browser)"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "chromium is missing and this script needs root to apt-get install it; the report test will skip" >&2
    exit 0
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
