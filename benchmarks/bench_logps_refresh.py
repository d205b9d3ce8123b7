"""Benchmark: reference log-probs of a refreshed dataset (10% new pairs) against a full pass.

A dataset is refreshed when new data arrives: a new build, a new dataset version, most of its pairs the
same as before. Today's tools recompute every log-prob then (TRL keys its precomputed reference
log-probs on the whole dataset's fingerprint). `dpop refs` / `dpop logps` look each pair up in the
workspace's per-pair cache (token ids digest, model id, precision) and run the model on the new pairs
only. Measured, in one process, on the demo's synthetic maths pairs built into real dataset versions:

1. full pass: `dpop refs` on the refreshed version in a workspace whose cache is cold (what every run
   cost before the cache, and what a tool keyed on the dataset's fingerprint pays on any change);
2. first version: `dpop refs` on the original N pairs (cold cache: fills it);
3. refresh: `dpop refs` on the refreshed version (N + 10% new pairs) in that workspace (warm cache).

The target: (3) costs at most 15% of (1). The values of (3) are checked against (1) (max abs diff).
Every row records the load average: the machine is shared, compare ratios from one run.
Prints a rich table and writes benchmarks/results/bench_logps_refresh.json.

    python benchmarks/bench_logps_refresh.py --n 2000 --new 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "bench_logps_refresh.json"
CURATION = {
    "split": {"eval_fraction": 0.05},
    "tokenize": {"max_length": 384, "max_prompt_length": 192},
    "filters": {"duplicate_pair": True},
}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def write_pairs(path: Path, pairs: list) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for pair in pairs:
            handle.write(
                json.dumps({"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}) + "\n"
            )
    return path


def build(ws, files: list[Path], tokenizer: Path) -> str:
    from pipeline.build import build_dataset
    from pipeline.ingest import ingest_source

    ingests = [result for path in files for result in ingest_source(path, ws)]
    return build_dataset(ws, CURATION, tokenizer, ingests=ingests).dataset_id


def timed_refs(ws, dataset_id: str, model: Path, batch_size: int) -> tuple[str, float, dict]:
    from dpop.refs import compute_reference_logps
    from pipeline.stage import read_record

    start = time.perf_counter()
    ref_id = compute_reference_logps(ws, dataset_id, model, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    record = read_record(ws.dataset_dir(ref_id))
    return ref_id, seconds, dict(record.counts)


def stored(ws, dataset_id: str):
    import numpy as np

    from dpop.data import ShardDataset

    values = []
    for split in ("train", "eval"):
        table = ShardDataset.open(ws, dataset_id, split).table
        values.append(
            np.stack([table.column(c).to_numpy() for c in ("ref_chosen_logps", "ref_rejected_logps")])
        )
    return np.concatenate(values, axis=1)


def setup(args, root: Path) -> tuple[Path, Path, list[Path], list[Path]]:
    """The tokenizer and model (trained / initialised on the pairs) and the two sources: the original
    pairs, and the new ones (the refresh ingests both)."""
    from demo.synth_math import generate_pairs
    from demo.tiny_model import make_tiny_model
    from demo.tiny_tokenizer import train_tiny_tokenizer

    new = int(round(args.n * args.new))
    pairs = list(generate_pairs(args.n + new, seed=args.seed))
    old_file = write_pairs(root / "pairs.jsonl", pairs[: args.n])
    new_file = write_pairs(root / "new_pairs.jsonl", pairs[args.n :])
    texts = [f"{p.prompt} {p.chosen} {p.rejected}" for p in pairs[:2000]]
    tokenizer = train_tiny_tokenizer(texts, root / "tokenizer", vocab_size=768)
    model = make_tiny_model(
        tokenizer, root / "model", num_layers=args.layers, hidden_size=args.hidden, num_heads=args.heads
    )
    return tokenizer, model, [old_file], [old_file, new_file]


def run(args) -> dict:
    import numpy as np
    import torch

    from pipeline.workspace import Workspace

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-logps-"))
    try:
        tokenizer, model, first_files, refreshed_files = setup(args, root)
        cold = Workspace.open(root / "cold")
        refreshed_cold = build(cold, refreshed_files, tokenizer)
        load_full = load()
        full_id, full_s, full_counts = timed_refs(cold, refreshed_cold, model, args.batch_size)
        warm = Workspace.open(root / "warm")
        first = build(warm, first_files, tokenizer)
        load_first = load()
        _, first_s, first_counts = timed_refs(warm, first, model, args.batch_size)
        refreshed = build(warm, refreshed_files, tokenizer)
        assert refreshed == refreshed_cold, "the same sources and config must give the same dataset id"
        load_refresh = load()
        refresh_id, refresh_s, refresh_counts = timed_refs(warm, refreshed, model, args.batch_size)
        diff = float(np.abs(stored(warm, refresh_id) - stored(cold, full_id)).max())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = [
        {
            "case": "full pass (refreshed version, cold cache)",
            "seconds": full_s,
            **full_counts,
            "load": load_full,
        },
        {"case": "first version (cold cache)", "seconds": first_s, **first_counts, "load": load_first},
        {
            "case": "refresh (+new pairs, warm cache)",
            "seconds": refresh_s,
            **refresh_counts,
            "load": load_refresh,
        },
    ]
    return {
        "pairs_first": first_counts["rows_in"],
        "pairs_refreshed": refresh_counts["rows_in"],
        "new_pairs": refresh_counts["computed"],
        "refresh_over_full": refresh_s / full_s,
        "max_abs_diff_vs_full_pass": diff,
        "rows": rows,
        "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads},
        "batch_size": args.batch_size,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def show(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"reference log-probs: refresh vs full pass ({result['machine']})")
    for column in ("case", "seconds", "pairs", "computed", "from cache", "load (1, 5, 15 min)"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for row in result["rows"]:
        table.add_row(
            row["case"],
            f"{row['seconds']:.2f}",
            f"{row['rows_in']:,}",
            f"{row['computed']:,}",
            f"{row['cached']:,}",
            ", ".join(map(str, row["load"])),
        )
    console = Console()
    console.print(table)
    console.print(
        f"refresh / full pass: {result['refresh_over_full']:.1%} of the time for {result['new_pairs']:,} new of "
        f"{result['pairs_refreshed']:,} pairs (target <= 15%); max |refresh - full pass| "
        f"{result['max_abs_diff_vs_full_pass']:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="pairs of the first version")
    parser.add_argument("--new", type=float, default=0.1, help="new pairs in the refresh, as a share of n")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args)
    show(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
