"""The up-to-date `dpop run`: how long the no-op run of the default demo takes, and where the time goes.

    python benchmarks/bench_noop.py [--workspace DIR] [--repeats 5]

Needs a workspace where the default demo ran (`dpop run -w DIR`; run first when the folder is absent).
Times the no-op `dpop run -w DIR` as a user runs it (a fresh process each time; the median of
`--repeats`), then its parts: the interpreter alone, importing the CLI, and, in this process, the same
steps `dpop run` takes: the command line to its `ChainSpec` (`cli.commands.run.chain_spec`: paths and
the raw dpop.yaml, the spec every entry point builds), the probe (`flows.chain.probe`: the ingest stages
hash their files, every other stage's record is read) and the summary. Checks that neither Prefect nor
torch was imported. Writes benchmarks/results/bench_noop.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "bench_noop.json"


def wall(command: list[str], repeats: int) -> float:
    """Median wall time of a command in a fresh process."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def in_process(workspace: Path) -> dict[str, float]:
    """The steps of the no-op `dpop run`, timed in this process."""
    steps, started = {}, time.perf_counter()
    from cli.commands.run import chain_spec
    from flows.chain import probe, summary
    from pipeline.workspace import Workspace

    steps["imports of the run path"] = time.perf_counter() - started
    started = time.perf_counter()
    spec = chain_spec(None, None, None, dict.fromkeys(("n", "steps", "sft_steps", "seed")), None, False)
    steps["command line to ChainSpec"] = time.perf_counter() - started
    started = time.perf_counter()
    result = probe(Workspace.open(workspace), spec)
    steps["probe (every stage found done)"] = time.perf_counter() - started
    if result is None:
        raise SystemExit(
            f"{workspace}: not every stage of the default demo is done; run `dpop run -w {workspace}`"
        )
    started = time.perf_counter()
    summary(result)
    steps["summary"] = time.perf_counter() - started
    loaded = [name for name in ("prefect", "torch", "transformers") if name in sys.modules]
    if loaded:
        raise SystemExit(f"the no-op path imported {', '.join(loaded)}")
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=ROOT / ".bench-noop-workspace")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dpop = [sys.executable, "-m", "cli.main", "run", "-w", str(args.workspace)]
    if not (args.workspace / "runs").is_dir():
        subprocess.run(dpop, cwd=ROOT, check=True)  # the default demo, once
    results = {
        "no-op dpop run (fresh process)": wall(dpop, args.repeats),
        "python -c pass": wall([sys.executable, "-c", "pass"], args.repeats),
        "import cli.main (the CLI and its commands)": wall(
            [sys.executable, "-c", "import cli.main"], args.repeats
        ),
        **in_process(args.workspace),
    }
    width = max(map(len, results))
    for name, seconds in results.items():
        print(f"{name:<{width}}  {seconds:6.2f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"workspace": str(args.workspace), "seconds": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
