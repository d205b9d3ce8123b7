"""Benchmark the data pipeline against the raw kernel and a naive per-row baseline.

Side by side in one process, on the same N pairs (resampled from the real data in ../shared/data when
present, each copy's prompt made unique so curation keeps it; synthetic otherwise):

1. raw kernel: rapidfuzz.process.cpdist(chosen, rejected, scorer=Levenshtein.distance, workers=-1)
2. our score stage: pipeline.score.score_pairs (char + word distances, lengths, margins)
3. our whole build: ingest (JSONL file) -> score -> curate -> tokenise -> shard
4. naive baseline as most scripts do it: datasets.Dataset.map with a per-row Python function
   (rapidfuzz per pair for char and word distance, chat template + tokenizer per row)

Then peak RSS of (3) alone, in fresh subprocesses, at 100k and 1M pairs (streaming check).
Prints a rich table and writes benchmarks/results/bench_pipeline.json.

    python benchmarks/bench_pipeline.py --n 100000 --naive-n 20000 --rss-sizes 100000,1000000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("DPOP_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results" / "bench_pipeline.json"
REAL_FILES = [
    "openai_grade-school-math/example_model_solutions.jsonl",
    "anthropics_hh-rlhf/harmless-base/test.jsonl.gz",
    "hiyouga_LLaMA-Factory/dpo_en_demo.json",
]
CONFIG = {
    "filters": {"max_pairs_per_prompt": 4},
    "split": {"eval_fraction": 0.02},
    "tokenize": {"max_length": 2048, "max_prompt_length": 1024},
    "shards": {"rows_per_shard": 50_000},
}


def seed_pairs() -> tuple[list[dict], str]:
    """Canonical pairs to resample from: the real files through our ingest, else synthetic ones."""
    import polars as pl

    from pipeline.ingest import ingest_source
    from pipeline.workspace import Workspace

    files = [SHARED / name for name in REAL_FILES if (SHARED / name).is_file()]
    if files:
        ws = Workspace.open(tempfile.mkdtemp(prefix="bench-seed-"))
        rows = []
        for path in files:
            for result in ingest_source(path, ws):
                frame = pl.read_parquet(result.pairs_path, columns=["prompt", "chosen", "rejected"])
                rows.extend(frame.to_dicts())
        shutil.rmtree(ws.root, ignore_errors=True)
        return rows, "real (" + ", ".join(REAL_FILES) + ")"
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    rows = []
    for _ in range(5000):
        chosen = " ".join(rng.choices(words, k=rng.randint(20, 120)))
        tokens = chosen.split()
        tokens[rng.randrange(len(tokens))] = rng.choice(words)
        rows.append(
            {
                "prompt": [{"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(5, 60)))}],
                "chosen": chosen,
                "rejected": " ".join(tokens),
            }
        )
    return rows, "synthetic"


def write_source(path: Path, seeds: list[dict], n: int, seed: int = 0) -> None:
    """n pairs resampled from seeds as TRL-conversational JSONL. Each copy gets a unique tag at the end
    of its prompt and of both responses (edit distance unchanged), so no copy is a duplicate and no
    text repeats more than in the real data: a resampled benchmark must not reward caching."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(n):
            row = seeds[rng.randrange(len(seeds))]
            prompt = [dict(m) for m in row["prompt"]]
            prompt[-1]["content"] = f"{prompt[-1]['content']} (#{index})"
            tag = f" (#{index})"
            record = {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": row["chosen"] + tag}],
                "rejected": [{"role": "assistant", "content": row["rejected"] + tag}],
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def load_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            rows.append(
                {
                    "prompt": record["prompt"],
                    "chosen": record["chosen"][0]["content"],
                    "rejected": record["rejected"][0]["content"],
                }
            )
    return rows


def run_build(source: Path, tokenizer: Path, workdir: Path) -> dict:
    """Stage (3): ingest the JSONL file, then build; returns timing and counts."""
    from pipeline.build import build_dataset
    from pipeline.ingest import ingest_source
    from pipeline.workspace import Workspace

    ws = Workspace.open(workdir)
    start = time.perf_counter()
    ingests = ingest_source(source, ws)
    ingested = time.perf_counter()
    ingest_rss = peak_rss_mib()
    result = build_dataset(ws, CONFIG, tokenizer, ingests)
    end = time.perf_counter()
    return {
        "seconds": end - start,
        "ingest_seconds": ingested - start,
        "build_seconds": end - ingested,
        "peak_rss_after_ingest_mib": ingest_rss,
        "rows_in": result.rows_in,
        "rows_kept": result.rows_kept,
        "dataset_id": result.dataset_id,
    }


def naive_map(rows: list[dict], tokenizer_path: Path) -> float:
    """Stage (4): the per-row script most people write. Returns seconds."""
    from datasets import Dataset, disable_progress_bars
    from rapidfuzz.distance import Levenshtein
    from transformers import AutoTokenizer

    disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    tokenizer.model_max_length = sys.maxsize  # same as our stage: no length warning
    eos = tokenizer.eos_token_id

    def per_row(row: dict) -> dict:
        distance = Levenshtein.distance(row["chosen"], row["rejected"])
        longest = max(len(row["chosen"]), len(row["rejected"]))
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        return {
            "edit_distance": distance,
            "edit_ratio": distance / longest if longest else 0.0,
            "word_edit_distance": Levenshtein.distance(row["chosen"].split(), row["rejected"].split()),
            "prompt_ids": tokenizer(prompt, add_special_tokens=False)["input_ids"],
            "chosen_ids": tokenizer(row["chosen"], add_special_tokens=False)["input_ids"] + [eos],
            "rejected_ids": tokenizer(row["rejected"], add_special_tokens=False)["input_ids"] + [eos],
        }

    dataset = Dataset.from_list(rows)
    start = time.perf_counter()
    dataset.map(per_row, load_from_cache_file=False, keep_in_memory=True)
    return time.perf_counter() - start


def naive_tokenizer_seconds(rows: list[dict], tokenizer_path: Path) -> float:
    """The tokenizer calls of (4) alone, in a plain loop: the part of (4) that is the same Rust
    tokenizer work our build does, so (4) / this bounds what batching can save."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    tokenizer.model_max_length = sys.maxsize
    start = time.perf_counter()
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        tokenizer(prompt, add_special_tokens=False)
        tokenizer(row["chosen"], add_special_tokens=False)
        tokenizer(row["rejected"], add_special_tokens=False)
    return time.perf_counter() - start


def peak_rss_mib() -> float:
    """This process's peak RSS. Linux: VmHWM of its own address space; `ru_maxrss` would also count the
    parent's size at fork (it survives exec), which overstates a child started from a big parent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(source: str, tokenizer: str, workdir: str) -> None:
    """Run stage (3) alone and print its timing and peak RSS as JSON (called in a fresh process)."""
    stats = run_build(Path(source), Path(tokenizer), Path(workdir))
    stats["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(stats))


def measure_rss(seeds: list[dict], n: int, tokenizer: Path, scratch: Path) -> dict:
    source = scratch / f"rss-{n}.jsonl"
    write_source(source, seeds, n, seed=n)
    workdir = scratch / f"rss-ws-{n}"
    command = [sys.executable, __file__, "--rss-child", str(source), str(tokenizer), str(workdir)]
    output = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if output.returncode != 0:
        raise RuntimeError(f"RSS run at {n} failed:\n{output.stderr[-3000:]}")
    stats = json.loads(output.stdout.strip().splitlines()[-1])
    shutil.rmtree(workdir, ignore_errors=True)
    source.unlink()
    return {"n": n, **stats}


def rss_only(sizes: str, vocab_size: int) -> None:
    from rich.console import Console

    scratch = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        seeds, _ = seed_pairs()
        tokenizer = bench_tokenizer(seeds, scratch / "tokenizer", vocab_size)
        rss = [measure_rss(seeds, int(n), tokenizer, scratch) for n in sizes.split(",") if n.strip()]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    result["rss"] = rss
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_rss(Console(), rss)


def bench_tokenizer(seeds: list[dict], out: Path, vocab_size: int) -> Path:
    """The tokenizer both sides use: a byte-level BPE trained on the seed pairs. With an 8k-16k
    vocabulary it needs about 3.2 characters a token on this data, close to a real LLM tokenizer
    (3-4 on English); the 512-token test tokenizer needs 1.8, almost twice the tokens, which inflates
    the Rust tokenizer's share of both sides."""
    from demo.tiny_tokenizer import train_tiny_tokenizer

    return train_tiny_tokenizer(tokenizer_texts(seeds), out, vocab_size=vocab_size)


def chars_per_token(tokenizer_path: Path, texts: list[str]) -> float:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    ids = tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    return sum(map(len, texts)) / max(1, sum(len(e.ids) for e in ids))


def tokenizer_texts(seeds: list[dict]) -> list[str]:
    texts = [m["content"] for row in seeds[:5000] for m in row["prompt"]]
    return texts + [row["chosen"] for row in seeds[:5000]] + [row["rejected"] for row in seeds[:5000]]


def print_rss(console, rss: list[dict]) -> None:
    from rich.table import Table

    if not rss:
        return
    rss_table = Table(title="Peak RSS of the whole build (fresh process each)")
    for column in ("pairs", "seconds", "pairs/s", "peak RSS MiB"):
        rss_table.add_column(column, justify="right")
    for item in rss:
        rss_table.add_row(
            f"{item['n']:,}",
            f"{item['seconds']:.1f}",
            f"{item['n'] / item['seconds']:,.0f}",
            f"{item['peak_rss_mib']:,.0f}",
        )
    console.print(rss_table)
    if len(rss) >= 2:
        ratio = rss[-1]["peak_rss_mib"] / rss[0]["peak_rss_mib"]
        console.print(f"RSS ratio {rss[-1]['n']:,} / {rss[0]['n']:,}: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="pairs for stages 1-3")
    parser.add_argument("--naive-n", type=int, default=20_000, help="pairs for the slow naive baseline (4)")
    parser.add_argument(
        "--rss-sizes", default="100000,1000000", help="comma-separated sizes for RSS runs ('' = none)"
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=8192,
        help="BPE vocabulary of the benchmark tokenizer (both sides use it; 512 = the test tokenizer)",
    )
    parser.add_argument(
        "--rss-only", action="store_true", help="only the RSS runs, merged into the existing JSON result"
    )
    parser.add_argument(
        "--rss-child", nargs=3, metavar=("SOURCE", "TOKENIZER", "WORKDIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    if args.rss_only:
        rss_only(args.rss_sizes, args.vocab_size)
        return

    import pyarrow as pa
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein
    from rich.console import Console
    from rich.table import Table

    from pipeline.score import score_pairs

    console = Console()
    scratch = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        seeds, origin = seed_pairs()
        tokenizer = bench_tokenizer(seeds, scratch / "tokenizer", args.vocab_size)
        source = scratch / "pairs.jsonl"
        write_source(source, seeds, args.n)
        rows = load_rows(source)
        chosen, rejected = [r["chosen"] for r in rows], [r["rejected"] for r in rows]
        token_density = chars_per_token(tokenizer, chosen[:5000])
        console.print(
            f"{args.n:,} pairs from {origin}; mean chosen length {sum(map(len, chosen)) / len(chosen):.0f} chars; "
            f"tokenizer: byte-level BPE, vocab {args.vocab_size:,}, {token_density:.2f} chars/token"
        )

        start = time.perf_counter()
        process.cpdist(chosen, rejected, scorer=Levenshtein.distance, workers=-1)
        kernel_s = time.perf_counter() - start

        table = pa.Table.from_pylist(rows)
        start = time.perf_counter()
        score_pairs(table)
        score_s = time.perf_counter() - start
        del table

        build = run_build(source, tokenizer, scratch / "ws")
        naive_rows = rows[: args.naive_n]
        del rows, chosen, rejected
        naive_s = naive_map(naive_rows, tokenizer)
        naive_tokenizer_s = naive_tokenizer_seconds(naive_rows, tokenizer)

        throughput = {
            "kernel": args.n / kernel_s,
            "score": args.n / score_s,
            "build": args.n / build["seconds"],
            "naive": len(naive_rows) / naive_s,
        }
        rss = [measure_rss(seeds, int(n), tokenizer, scratch) for n in args.rss_sizes.split(",") if n.strip()]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    out = Table(title=f"Pipeline throughput ({origin.split(' ')[0]} data, {os.cpu_count()} CPU cores)")
    for column in ("stage", "pairs", "seconds", "pairs/s", "ratio"):
        out.add_column(column, justify="left" if column == "stage" else "right")
    out.add_row(
        "1 raw cpdist kernel",
        f"{args.n:,}",
        f"{kernel_s:.2f}",
        f"{throughput['kernel']:,.0f}",
        "1.00x kernel",
    )
    out.add_row(
        "2 score_pairs",
        f"{args.n:,}",
        f"{score_s:.2f}",
        f"{throughput['score']:,.0f}",
        f"{throughput['score'] / throughput['kernel']:.2f}x kernel",
    )
    out.add_row(
        "3 build (ingest..shards)",
        f"{args.n:,}",
        f"{build['seconds']:.2f}",
        f"{throughput['build']:,.0f}",
        f"{throughput['build'] / throughput['naive']:.1f}x naive",
    )
    out.add_row(
        "4 naive Dataset.map",
        f"{len(naive_rows):,}",
        f"{naive_s:.2f}",
        f"{throughput['naive']:,.0f}",
        "1.0x naive",
    )
    console.print(out)
    console.print(
        f"build: ingest {build['ingest_seconds']:.1f} s + score/curate/tokenise/shard {build['build_seconds']:.1f} s; "
        f"{build['rows_kept']:,} of {build['rows_in']:,} pairs kept"
    )
    console.print(
        f"naive: its per-row chat template + tokenizer calls alone take {naive_tokenizer_s:.2f} s "
        f"of its {naive_s:.2f} s ({naive_tokenizer_s / naive_s:.0%})"
    )
    print_rss(console, rss)
    result = {
        "data": origin,
        "n": args.n,
        "naive_n": len(naive_rows),
        "cpu_count": os.cpu_count(),
        "tokenizer": {"vocab_size": args.vocab_size, "chars_per_token": token_density},
        "seconds": {
            "kernel": kernel_s,
            "score": score_s,
            "build": build["seconds"],
            "naive": naive_s,
            "naive_tokenizer_only": naive_tokenizer_s,
        },
        "pairs_per_second": throughput,
        "ratios": {
            "score_vs_kernel": throughput["score"] / throughput["kernel"],
            "build_vs_naive": throughput["build"] / throughput["naive"],
        },
        "build": build,
        "rss": rss,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
