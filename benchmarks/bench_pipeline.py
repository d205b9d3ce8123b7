"""Benchmark the data pipeline against the raw kernel, the tokenizer alone and a naive baseline.

Side by side in one process, on the same N pairs (resampled from the real data in ../shared/data when
present, each copy's prompt made unique so curation keeps it; synthetic otherwise):

1. raw kernel: rapidfuzz.process.cpdist(chosen, rejected, scorer=Levenshtein.distance, workers=-1)
2. our score stage: pipeline.score.score_pairs as the build runs it (char distance, lengths, word
   counts, margins; `word_edit_distance` is computed only when a filter reads it), and 2b the same with
   `word_edit_distance`
3. our whole build: ingest (JSONL file) -> score -> curate -> tokenise -> shard, and 3b the build
   stage alone (after the ingest)
4. naive baseline as most scripts do it: datasets.Dataset.map with a per-row Python function
   (rapidfuzz per pair for char and word distance, chat template + tokenizer per row)
5. the tokenizer-only limit: every distinct text the build tokenises (the rendered prompts, chosen,
   rejected) through the same tokenizer, batched (1,024 texts a call, as the build), on every core,
   and nothing else: what the build would cost if everything but its tokenizer were free

Then peak RSS of (3) alone, in fresh subprocesses, at 100k and 1M pairs (add 10M with --rss-sizes:
its source is written gzipped, about 4 GB, and the build needs about 40 GB of disk), each child's
memory sampled every 2 s (RSS, anonymous, file-backed: `trace` in the JSON). The load average is
recorded with every row: the machine is shared, compare ratios from one run.
Prints a rich table and writes benchmarks/results/bench_pipeline.json.

    python benchmarks/bench_pipeline.py --n 100000 --naive-n 20000 --rss-sizes 100000,1000000
    python benchmarks/bench_pipeline.py --rss-only --rss-sizes 10000000      # merged into the JSON
"""

from __future__ import annotations

import argparse
import gzip
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
GZIP_FROM = 2_000_000  # RSS sources of this many pairs or more are written gzipped (disk)


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (other jobs share the machine)."""
    return [round(x, 2) for x in os.getloadavg()]


class Timer:
    """Wall and CPU seconds (this process, every thread) of a block. CPU time moves far less than wall
    time with the machine's load, so it tells what a quiet machine would show: work that keeps both
    cores busy takes about CPU / 2 seconds there."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu() - self.cpu


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
    opener = gzip.open if path.name.endswith(".gz") else open
    kwargs = {"compresslevel": 1} if path.name.endswith(".gz") else {}
    with opener(path, "wt", encoding="utf-8", **kwargs) as handle:
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
    """Stage (3): ingest the JSONL file, then build; returns timing, counts and load averages."""
    from pipeline.build import build_dataset
    from pipeline.ingest import ingest_source
    from pipeline.workspace import Workspace

    ws = Workspace.open(workdir)
    load_before = load()
    with Timer() as ingest:
        ingests = ingest_source(source, ws)
    ingest_rss = peak_rss_mib()
    with Timer() as build:
        result = build_dataset(ws, CONFIG, tokenizer, ingests)
    return {
        "seconds": ingest.wall + build.wall,
        "ingest_seconds": ingest.wall,
        "build_seconds": build.wall,
        "cpu_seconds": ingest.cpu + build.cpu,
        "ingest_cpu_seconds": ingest.cpu,
        "build_cpu_seconds": build.cpu,
        "peak_rss_after_ingest_mib": ingest_rss,
        "rows_in": result.rows_in,
        "rows_kept": result.rows_kept,
        "dataset_id": result.dataset_id,
        "load": [load_before, load()],
    }


def naive_map(rows: list[dict], tokenizer_path: Path) -> Timer:
    """Stage (4): the per-row script most people write. Returns its timer."""
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
    with Timer() as timer:
        dataset.map(per_row, load_from_cache_file=False, keep_in_memory=True)
    return timer


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


def tokenizer_only(rows: list[dict], tokenizer_path: Path) -> dict:
    """Row (5), the limit: the distinct texts the build tokenises (prompts rendered by the chat
    template, untimed), encoded by the same Rust tokenizer in calls of 1,024 texts as the build makes
    them, on every core; the ids are not even read out."""
    from pipeline.tokenize import _TOKENIZE_CHUNK, FastTokenizer

    tokenizer = FastTokenizer(tokenizer_path)
    prompts = tokenizer.render([row["prompt"] for row in rows])
    texts = list(dict.fromkeys([*prompts, *(r["chosen"] for r in rows), *(r["rejected"] for r in rows)]))
    load_before = load()
    with Timer() as timer:
        for first in range(0, len(texts), _TOKENIZE_CHUNK):
            tokenizer.backend.encode_batch_fast(
                texts[first : first + _TOKENIZE_CHUNK], add_special_tokens=False
            )
    return {
        "seconds": timer.wall,
        "cpu_seconds": timer.cpu,
        "texts": len(texts),
        "chars": sum(map(len, texts)),
        "load": [load_before, load()],
    }


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


TRACE_SECONDS = 2.0  # how often an RSS run's memory is sampled from outside


def memory_sample(pid: int) -> dict[str, float] | None:
    """The process's RSS split into anonymous memory and file-backed pages (the build's memory-mapped
    Arrow files: clean page cache, counted in RSS, that the kernel can drop), MiB; None once gone."""
    wanted = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        name, _, rest = line.partition(":")
        if name in wanted:
            values[wanted[name]] = round(int(rest.split()[0]) / 1024, 1)
    return values


def traced(command: list[str]) -> tuple[subprocess.CompletedProcess, list[list[float]]]:
    """Run `command`, sampling its memory every TRACE_SECONDS: [[seconds, rss, anon, file, load1]].
    The peak alone does not say which phase holds it nor whether it is reclaimable page cache."""
    start = time.perf_counter()
    trace = []
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, cwd=ROOT)
        while child.poll() is None:
            sample = memory_sample(child.pid)
            if sample and sample.get("rss"):  # none before the child's exec is under way
                elapsed = round(time.perf_counter() - start, 1)
                trace.append([elapsed, sample["rss"], sample["anon"], sample["file"], load()[0]])
            time.sleep(TRACE_SECONDS)
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(command, child.returncode, stdout.read(), stderr.read()), trace


def measure_rss(seeds: list[dict], n: int, tokenizer: Path, scratch: Path) -> dict:
    source = scratch / (f"rss-{n}.jsonl.gz" if n >= GZIP_FROM else f"rss-{n}.jsonl")
    write_source(source, seeds, n, seed=n)
    workdir = scratch / f"rss-ws-{n}"
    command = [sys.executable, __file__, "--rss-child", str(source), str(tokenizer), str(workdir)]
    try:
        output, trace = traced(command)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        source.unlink()
    if output.returncode != 0:
        raise RuntimeError(f"RSS run at {n} failed:\n{output.stderr[-3000:]}")
    stats = json.loads(output.stdout.strip().splitlines()[-1])
    peaks = {
        f"max_{name}_mib": max((s[i] for s in trace), default=None) for i, name in ((2, "anon"), (3, "file"))
    }
    return {"n": n, "source": source.name, **stats, **peaks, "trace": trace}


def rss_only(sizes: str, vocab_size: int) -> None:
    """Only the RSS runs; each replaces the stored run of the same size in the JSON result."""
    from rich.console import Console

    scratch = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        seeds, _ = seed_pairs()
        tokenizer = bench_tokenizer(seeds, scratch / "tokenizer", vocab_size)
        rss = [measure_rss(seeds, int(n), tokenizer, scratch) for n in sizes.split(",") if n.strip()]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    by_size = {item["n"]: item for item in result.get("rss", [])}
    by_size.update({item["n"]: item for item in rss})
    result["rss"] = [by_size[n] for n in sorted(by_size)]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_rss(Console(), result["rss"])


def bench_tokenizer(seeds: list[dict], out: Path, vocab_size: int) -> Path:
    """The tokenizer both sides use: a byte-level BPE trained on the seed pairs. With an 8k-16k
    vocabulary it needs about 3.2 characters a token on this data, close to a real LLM tokenizer
    (3-4 on English); the 512-token test tokenizer needs 1.8, almost twice the tokens, which inflates
    the Rust tokenizer's share of both sides."""
    from demo.tiny_tokenizer import train_tiny_tokenizer

    return train_tiny_tokenizer(tokenizer_texts(seeds), out, vocab_size=vocab_size)


def chars_per_token(tokenizer_path: Path, texts: list[str]) -> float:
    from pipeline.tokenize import FastTokenizer

    values, _ = FastTokenizer(tokenizer_path).encode(texts)
    return sum(map(len, texts)) / max(1, len(values))


def tokenizer_texts(seeds: list[dict]) -> list[str]:
    texts = [m["content"] for row in seeds[:5000] for m in row["prompt"]]
    return texts + [row["chosen"] for row in seeds[:5000]] + [row["rejected"] for row in seeds[:5000]]


def print_rss(console, rss: list[dict]) -> None:
    from rich.table import Table

    if not rss:
        return
    rss_table = Table(title="Peak RSS of the whole build, ingest included (fresh process each)")
    columns = (
        "pairs",
        "source",
        "seconds",
        "pairs/s",
        "peak RSS MiB",
        "anon / file MiB",
        "load (1/5/15 min)",
    )
    for column in columns:
        rss_table.add_column(column, justify="right")
    for item in rss:
        rss_table.add_row(
            f"{item['n']:,}",
            item.get("source", "jsonl"),
            f"{item['seconds']:.1f}",
            f"{item['n'] / item['seconds']:,.0f}",
            f"{item['peak_rss_mib']:,.0f}",
            f"{item['max_anon_mib']:,.0f} / {item['max_file_mib']:,.0f}" if item.get("max_anon_mib") else "",
            "/".join(f"{x:.1f}" for x in item.get("load", [[]])[0]),
        )
    console.print(rss_table)
    if len(rss) >= 2:
        for item in rss[1:]:
            ratio = item["peak_rss_mib"] / rss[0]["peak_rss_mib"]
            console.print(f"RSS ratio {item['n']:,} / {rss[0]['n']:,}: {ratio:.2f}x")


def measure(args: argparse.Namespace, scratch: Path, console) -> tuple[dict, list[dict], Path]:
    """Rows (1)-(5) on args.n pairs (the naive one on args.naive_n); also the seeds and tokenizer."""
    import pyarrow as pa
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    from pipeline.score import score_pairs

    seeds, origin = seed_pairs()
    tokenizer = bench_tokenizer(seeds, scratch / "tokenizer", args.vocab_size)
    source = scratch / "pairs.jsonl"
    write_source(source, seeds, args.n)
    rows = load_rows(source)
    chosen, rejected = [r["chosen"] for r in rows], [r["rejected"] for r in rows]
    density = chars_per_token(tokenizer, chosen[:5000])
    console.print(
        f"{args.n:,} pairs from {origin}; mean chosen length {sum(map(len, chosen)) / len(chosen):.0f} chars; "
        f"tokenizer: byte-level BPE, vocab {args.vocab_size:,}, {density:.2f} chars/token; load {load()}"
    )
    out = {"data": origin, "n": args.n, "cpu_count": os.cpu_count(), "load": {"start": load()}}
    out["tokenizer"] = {"vocab_size": args.vocab_size, "chars_per_token": density}
    seconds, cpu = out["seconds"], out["cpu_seconds"] = {}, {}
    with Timer() as timer:
        process.cpdist(chosen, rejected, scorer=Levenshtein.distance, workers=-1)
    seconds["kernel"], cpu["kernel"] = timer.wall, timer.cpu
    table = pa.Table.from_pylist(rows)
    for name, words in (("score", False), ("score_with_word_distance", True)):
        with Timer() as timer:
            score_pairs(table, word_distance=words)
        seconds[name], cpu[name] = timer.wall, timer.cpu
    del table, chosen, rejected
    out["load"]["score"] = load()
    out["tokenizer_only"] = limit = tokenizer_only(rows, tokenizer)
    seconds["tokenizer_only"], cpu["tokenizer_only"] = limit["seconds"], limit["cpu_seconds"]
    naive_rows = rows[: args.naive_n]
    del rows  # the build does not run beside a heap of 100k parsed rows (the garbage collector walks it)
    out["build"] = build = run_build(source, tokenizer, scratch / "ws")
    seconds["build"], seconds["build_stage"] = build["seconds"], build["build_seconds"]
    cpu["build"], cpu["build_stage"] = build["cpu_seconds"], build["build_cpu_seconds"]
    out["naive_n"] = len(naive_rows)
    timer = naive_map(naive_rows, tokenizer)
    seconds["naive"], cpu["naive"] = timer.wall, timer.cpu
    seconds["naive_tokenizer_only"] = naive_tokenizer_seconds(naive_rows, tokenizer)
    out["load"]["end"] = load()
    return out, seeds, tokenizer


def rates(out: dict) -> dict:
    """Pairs per second of each row, and the ratios the targets are stated in."""
    seconds, n = out["seconds"], out["n"]
    per_second = {name: n / value for name, value in seconds.items() if not name.startswith("naive")}
    per_second["naive"] = out["naive_n"] / seconds["naive"]
    out["pairs_per_second"] = per_second
    out["ratios"] = {
        "score_vs_kernel": per_second["score"] / per_second["kernel"],
        "score_with_word_distance_vs_kernel": per_second["score_with_word_distance"] / per_second["kernel"],
        "word_distance_cost_vs_kernel": (seconds["score_with_word_distance"] - seconds["score"])
        / seconds["kernel"],
        "build_vs_naive": per_second["build"] / per_second["naive"],
        "build_vs_tokenizer_only": per_second["build"] / per_second["tokenizer_only"],
        "build_stage_vs_tokenizer_only": per_second["build_stage"] / per_second["tokenizer_only"],
    }
    # The same ratios from CPU seconds a pair (all threads), which the load moves far less: what an
    # idle machine would show if the multi-threaded rows kept every core busy (wall = CPU / cores)
    # while the naive script runs on one core (wall = CPU). An upper bound for the build.
    cpu, pairs, cores = out["cpu_seconds"], {"naive": out["naive_n"]}, out["cpu_count"]
    per_pair = {name: value / pairs.get(name, n) * 1e6 for name, value in cpu.items()}
    out["cpu_us_per_pair"] = per_pair
    out["idle_machine_estimate"] = {
        "score_vs_kernel": per_pair["kernel"] / per_pair["score"],
        "build_vs_naive": per_pair["naive"] * cores / per_pair["build"],
        "build_vs_tokenizer_only": per_pair["tokenizer_only"] / per_pair["build"],
        "build_stage_vs_tokenizer_only": per_pair["tokenizer_only"] / per_pair["build_stage"],
    }
    return out


def print_result(console, out: dict) -> None:
    from rich.table import Table

    seconds, speed, ratio, n = out["seconds"], out["pairs_per_second"], out["ratios"], out["n"]
    table = Table(
        title=f"Pipeline throughput ({out['data'].split(' ')[0]} data, {out['cpu_count']} CPU cores)"
    )
    for column in ("stage", "pairs", "seconds", "pairs/s", "ratio", "CPU µs/pair"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    rows = [
        ("1 raw cpdist kernel", "kernel", n, "1.00x kernel"),
        ("2 score_pairs (as the build runs it)", "score", n, f"{ratio['score_vs_kernel']:.2f}x kernel"),
        (
            "2b score_pairs + word_edit_distance",
            "score_with_word_distance",
            n,
            f"{ratio['score_with_word_distance_vs_kernel']:.2f}x kernel",
        ),
        (
            "3 build (ingest..shards)",
            "build",
            n,
            f"{ratio['build_vs_naive']:.1f}x naive, {ratio['build_vs_tokenizer_only']:.2f}x limit",
        ),
        (
            "3b build stage (after ingest)",
            "build_stage",
            n,
            f"{ratio['build_stage_vs_tokenizer_only']:.2f}x limit",
        ),
        ("4 naive Dataset.map", "naive", out["naive_n"], "1.0x naive"),
        ("5 tokenizer only (the limit)", "tokenizer_only", n, "1.00x limit"),
    ]
    per_pair = out.get("cpu_us_per_pair", {})
    for label, key, pairs, text in rows:
        cpu = f"{per_pair[key]:,.0f}" if key in per_pair else ""
        table.add_row(label, f"{pairs:,}", f"{seconds[key]:.2f}", f"{speed[key]:,.0f}", text, cpu)
    console.print(table)
    if "idle_machine_estimate" in out:
        estimate = out["idle_machine_estimate"].items()
        console.print(
            "from CPU time, on an idle machine with every core busy (an upper bound for the build): "
            + ", ".join(f"{name.replace('_', ' ')} {value:.2f}x" for name, value in estimate)
        )
    build = out["build"]
    console.print(
        f"build: ingest {build['ingest_seconds']:.1f} s + score/curate/tokenise/shard {build['build_seconds']:.1f} s; "
        f"{build['rows_kept']:,} of {build['rows_in']:,} pairs kept; word distance costs "
        f"{ratio['word_distance_cost_vs_kernel']:.2f}x the kernel's time"
    )
    console.print(
        f"naive: its per-row chat template + tokenizer calls alone take {seconds['naive_tokenizer_only']:.2f} s "
        f"of its {seconds['naive']:.2f} s ({seconds['naive_tokenizer_only'] / seconds['naive']:.0%})"
    )
    console.print(f"load average (1/5/15 min): {out['load']}")
    print_rss(console, out["rss"])


def save(out: dict) -> None:
    """Write the result; RSS runs of other sizes stored before (a 10M run takes hours: `--rss-only`)
    are kept."""
    stored = json.loads(RESULTS.read_text()).get("rss", []) if RESULTS.is_file() else []
    by_size = {item["n"]: item for item in stored}
    by_size.update({item["n"]: item for item in out["rss"]})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({**out, "rss": [by_size[n] for n in sorted(by_size)]}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="pairs for rows 1-3 and 5")
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
    from rich.console import Console

    console = Console()
    scratch = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        out, seeds, tokenizer = measure(args, scratch, console)
        out = rates(out)
        out["rss"] = []
        save(out)  # the rows are kept even if an RSS run fails
        sizes = [int(n) for n in args.rss_sizes.split(",") if n.strip()]
        for n in sizes:
            out["rss"].append(measure_rss(seeds, n, tokenizer, scratch))
            save(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_result(console, json.loads(RESULTS.read_text()))
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
