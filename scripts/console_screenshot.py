"""docs/console.png: the console of a `dpop run`, as a user's terminal shows it at the end.

    .venv/bin/python scripts/console_screenshot.py [--out docs/console.png] [--] [dpop run options]

Runs `dpop run` (the given options, else the embedded default) in a fresh temporary workspace, with its
output going to a pipe (so no live bars: the lines they leave behind and the summary, in colour), turns
the ANSI text into an SVG with rich and the SVG into a PNG with headless chromium
(`scripts/install_chromium.sh`). Prints the run's wall time."""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

REPO = Path(__file__).resolve().parents[1]
WIDTH = 140


def run_dpop(options: list[str], workspace: Path) -> tuple[str, float]:
    # colours as in a terminal, but no live display (its refreshes would all land in the pipe)
    env = {**os.environ, "FORCE_COLOR": "1", "TTY_INTERACTIVE": "0", "COLUMNS": str(WIDTH)}
    command = [sys.executable, "-m", "cli.main", "run", "-w", str(workspace), *options]
    started = time.monotonic()
    done = subprocess.run(command, cwd=workspace.parent, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"dpop run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout, seconds


def screenshot(ansi: str, title: str, out: Path) -> None:
    console = Console(record=True, width=WIDTH, force_terminal=True, file=io.StringIO())
    console.print(Text.from_ansi(ansi.rstrip()))
    with tempfile.TemporaryDirectory() as tmp:
        svg = Path(tmp) / "console.svg"
        console.save_svg(str(svg), title=title)
        # the PNG is the SVG at WIDTH * 10 pixels wide: its height follows from the SVG's own aspect ratio
        _, _, view_width, view_height = (
            float(v) for v in re.search(r'viewBox="([^"]+)"', svg.read_text())[1].split()
        )
        height = round(WIDTH * 10 * view_height / view_width)
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            sys.exit("no chromium: bash scripts/install_chromium.sh")
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--screenshot={out.resolve()}", f"--window-size={WIDTH * 10},{height}", svg.as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "console.png")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="dpop run options (after --)")
    args = parser.parse_args()
    options = [o for o in args.options if o != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        ansi, seconds = run_dpop(options, Path(tmp) / "ws")
    screenshot(ansi, " ".join(["dpop run", *options]), args.out)
    print(f"dpop run took {seconds:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
