"""Benchmark our DPOP trainer against TRL's DPOTrainer, side by side in one run.

Same tiny Llama (4 layers, hidden 256, random init from one seed), same pairs (from ../shared/data
when present, synthetic maths pairs otherwise), tokenised once by our build into dpop_shard rows,
which TRL's DPOTrainer takes as they are (its tokenised column names), same batch size, max length,
steps, optimizer and learning rate, fp32 on CPU:

1. ours: `dpop.train` on the shards with stored reference log-probs (`dpop refs`, timed separately)
2. TRL `DPOTrainer(loss_type="sigmoid", precompute_ref_log_probs=True)` (reference pass in __init__)
3. TRL `DPOTrainer(loss_type="sigmoid", precompute_ref_log_probs=False)` (reference forward every step)

Each configuration runs in its own subprocess (clean peak RSS). Reported: train tokens/s (real,
non-pad tokens of both sequences of every pair consumed by the training loop / training-loop wall
time), seconds/step, padding share, peak RSS, and set-up time (TRL's precompute pass; our refs).
Prints a rich table and writes benchmarks/results/bench_trainer.json. The per-step loss agreement
with TRL (λ = 0, 1e-4 over 10 steps) is a test: tests/dpop/test_trl_agreement.py.

    python benchmarks/bench_trainer.py --pairs 2000 --steps 20 --batch-size 8 --max-length 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("DPOP_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
REAL_FILES = [
    "anthropics_hh-rlhf/harmless-base/test.jsonl.gz",
    "hiyouga_LLaMA-Factory/dpo_en_demo.json",
    "WeOpenML_PandaLM/testset-v1.json",
]
CONFIGS = ("ours", "trl_precompute", "trl_live")
LABELS = {
    "ours": "ours, stored refs",
    "trl_precompute": "TRL, precompute=True",
    "trl_live": "TRL, precompute=False",
}


# ----------------------------------------------------------------------------- set-up (parent)
def prepare(args: argparse.Namespace, root: Path) -> dict:
    """Ingest, build, cut to `pairs` train rows, make the tiny model, store reference log-probs."""
    import pyarrow as pa

    from demo.tiny_model import make_tiny_model
    from demo.tiny_tokenizer import train_tiny_tokenizer
    from dpop.refs import compute_reference_logps
    from pipeline.build import build_dataset
    from pipeline.ingest import ingest_source
    from pipeline.shards import load_manifest, open_split, write_manifest, write_split
    from pipeline.workspace import Workspace

    ws = Workspace.open(root / "ws")
    sources = [SHARED / name for name in REAL_FILES if (SHARED / name).is_file()]
    if sources:
        data_source = "real: " + ", ".join(REAL_FILES)
        for path in sources:
            ingest_source(path, ws)
    else:
        from demo.synth_math import write_math_pairs

        data_source = "synthetic maths pairs (../shared/data absent)"
        ingest_source(write_math_pairs(root / "synthetic.jsonl", int(args.pairs * 1.3), seed=0), ws)

    import polars as pl

    texts = []
    for pairs_file in sorted(ws.sources_dir.rglob("pairs.parquet")):
        frame = pl.read_parquet(pairs_file, columns=["chosen", "rejected"])
        texts += frame["chosen"].to_list()[:1500] + frame["rejected"].to_list()[:1500]
    tokenizer = train_tiny_tokenizer(texts, root / "tokenizer", vocab_size=args.vocab_size)
    model = make_tiny_model(tokenizer, root / "model", num_layers=4, hidden_size=256, num_heads=4, seed=0)

    config = {
        "tokenize": {"max_length": args.max_length, "max_prompt_length": args.max_length // 2},
        "split": {"eval_fraction": 0.0},
    }
    built = build_dataset(ws, config, model)
    table = open_split(ws, built.dataset_id, "train").slice(0, args.pairs)
    subset_id = f"bench-{built.dataset_id}-{table.num_rows}"
    subset_dir = ws.dataset_dir(subset_id)
    if not (subset_dir / "manifest.json").is_file():
        manifest = load_manifest(ws, built.dataset_id)
        infos = write_split(subset_dir, "train", pa.Table.from_batches(table.to_batches(), table.schema))
        manifest.pop("contract", None)
        manifest.update(
            dataset_id=subset_id,
            parents=[{"id": built.dataset_id, "kind": "dataset", "relation": "subset_of"}],
            splits={"train": {"rows": table.num_rows, "shards": [info.as_dict() for info in infos]}},
        )
        write_manifest(subset_dir, manifest)
    started = time.perf_counter()
    ref_id = compute_reference_logps(ws, subset_id, model, progress=False)
    refs_seconds = time.perf_counter() - started
    return {
        "workspace": str(ws.root),
        "dataset_id": subset_id,
        "ref_dataset_id": ref_id,
        "model": str(model),
        "pairs": table.num_rows,
        "data_source": data_source,
        "ours_refs_seconds": refs_seconds,
    }


# ----------------------------------------------------------------------------- workers (subprocesses)
class TokenCounter:
    """Counts the real and padded tokens of the batches the training loop computes a loss on."""

    def __init__(self):
        self.real = 0
        self.padded = 0
        self.steps = 0

    def add(self, model, inputs) -> None:
        if model.training:
            self.real += int(inputs["attention_mask"].sum())
            self.padded += int(inputs["attention_mask"].numel())


def worker(name: str, setup: dict, args: argparse.Namespace) -> dict:
    import torch

    torch.manual_seed(0)
    counter = TokenCounter()
    if name == "ours":
        result = run_ours(setup, args, counter)
    else:
        result = run_trl(setup, args, counter, precompute=name == "trl_precompute")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    train_seconds = result["train_seconds"]
    return {
        "config": name,
        "label": LABELS[name],
        "steps": args.steps,
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / args.steps,
        "train_tokens": counter.real,
        "tokens_per_second": counter.real / train_seconds,
        "padding_share": 1 - counter.real / counter.padded if counter.padded else 0.0,
        "setup_seconds": result["setup_seconds"],
        "peak_rss_mb": peak_rss_mb,
        "final_loss": result["final_loss"],
        "threads": torch.get_num_threads(),
        "load_average_1min_at_end": os.getloadavg()[0],  # the machine is shared: context for the numbers
    }


def run_ours(setup: dict, args: argparse.Namespace, counter: TokenCounter) -> dict:
    from dpop import trainer as trainer_module
    from dpop.config import TrainConfig
    from dpop.train import train

    original = trainer_module.DPOPTrainer.compute_loss

    def counting_compute_loss(self, model, inputs, *rest, **kwargs):
        counter.add(model, inputs)
        return original(self, model, inputs, *rest, **kwargs)

    trainer_module.DPOPTrainer.compute_loss = counting_compute_loss
    config = TrainConfig(
        loss="dpop",
        beta=0.1,
        penalty_lambda=50.0,
        learning_rate=args.learning_rate,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        logging_steps=args.steps,
        save_steps=10**9,
        optim="adamw_torch",
        disable_tqdm=True,
    )
    run_id = f"bench-{int(time.time())}"
    started = time.perf_counter()
    result = train(setup["workspace"], setup["ref_dataset_id"], setup["model"], config, run_id=run_id)
    total = time.perf_counter() - started
    train_seconds = result.final_metrics["train_runtime"]
    shutil.rmtree(result.run_dir, ignore_errors=True)
    return {
        "train_seconds": train_seconds,
        "setup_seconds": total - train_seconds,
        "final_loss": result.final_metrics.get("loss"),
    }


def run_trl(setup: dict, args: argparse.Namespace, counter: TokenCounter, precompute: bool) -> dict:
    import tempfile

    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer

    from dpop.model_io import load_causal_lm
    from pipeline.shards import open_split
    from pipeline.workspace import Workspace

    class PretokenizedDPOTrainer(trl.DPOTrainer):
        """Our shards hold TRL's tokenised columns already: skip TRL's text tokenisation."""

        def _prepare_dataset(self, dataset, *rest, **kwargs):
            return dataset

        def compute_loss(self, model, inputs, *rest, **kwargs):
            counter.add(model, inputs)
            return super().compute_loss(model, inputs, *rest, **kwargs)

    ws = Workspace.open(setup["workspace"])
    table = open_split(ws, setup["dataset_id"], "train").select(["prompt_ids", "chosen_ids", "rejected_ids"])
    with tempfile.TemporaryDirectory() as out:
        config = trl.DPOConfig(
            output_dir=out,
            loss_type="sigmoid",
            beta=0.1,
            max_length=args.max_length,
            precompute_ref_log_probs=precompute,
            precompute_ref_batch_size=64,  # large no-grad batches, as `dpop refs` uses
            gradient_checkpointing=False,  # TRL's default is on; ours is off: compare like with like
            bf16=False,
            use_cpu=True,
            learning_rate=args.learning_rate,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            logging_steps=args.steps,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            optim="adamw_torch",
            seed=42,
        )
        started = time.perf_counter()
        trainer = PretokenizedDPOTrainer(
            model=load_causal_lm(setup["model"]),  # safetensors only, as every load in dpop
            args=config,
            train_dataset=Dataset(table),
            processing_class=AutoTokenizer.from_pretrained(setup["model"]),
        )
        setup_seconds = time.perf_counter() - started
        output = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "train_seconds": output.metrics["train_runtime"],
        "setup_seconds": setup_seconds,
        "final_loss": losses[-1] if losses else None,
    }


# ----------------------------------------------------------------------------- report
def print_table(setup: dict, rows: list[dict], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    title = (
        f"DPO trainers on CPU (fp32): {setup['pairs']} pairs ({setup['data_source'].split(':')[0]}), tiny Llama "
        f"4x256, batch {args.batch_size}, max length {args.max_length}, {args.steps} steps"
    )
    table = Table(title=title)
    for column in ("trainer", "tokens/s", "s/step", "padding", "peak RSS MB", "set-up s", "vs ours"):
        table.add_column(
            column, justify="left" if column == "trainer" else "right", no_wrap=column == "trainer"
        )
    ours = next(row for row in rows if row["config"] == "ours")
    for row in rows:
        table.add_row(
            row["label"],
            f"{row['tokens_per_second']:,.0f}",
            f"{row['seconds_per_step']:.3f}",
            f"{row['padding_share']:.0%}",
            f"{row['peak_rss_mb']:,.0f}",
            f"{row['setup_seconds']:.1f}",
            f"{ours['tokens_per_second'] / row['tokens_per_second']:.2f}x",
        )
    console.print(table)
    console.print(
        f"ours: reference log-probs stored once by `dpop refs` in {setup['ours_refs_seconds']:.1f}s "
        "(not in the training loop; TRL's precompute pass is its set-up time)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--root", type=Path, default=RESULTS / "bench_trainer_ws")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, json.loads(args.setup), args)), flush=True)
        return

    RESULTS.mkdir(parents=True, exist_ok=True)
    setup = prepare(args, args.root)
    rows = []
    for name in args.configs.split(","):
        command = [sys.executable, __file__, "--worker", name, "--setup", json.dumps(setup)]
        command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
        command += ["--max-length", str(args.max_length), "--learning-rate", str(args.learning_rate)]
        env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
        completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
        if completed.returncode != 0 or not lines:
            sys.exit(f"{name} failed:\n{completed.stderr[-4000:]}")
        rows.append(json.loads(lines[-1][len("RESULT ") :]))
    print_table(setup, rows, args)
    trl_best = max(
        (row for row in rows if row["config"] != "ours"),
        key=lambda row: row["tokens_per_second"],
        default=None,
    )
    ours = next((row for row in rows if row["config"] == "ours"), None)
    summary = {}
    if trl_best and ours:
        summary = {
            "speedup_vs_fastest_trl": ours["tokens_per_second"] / trl_best["tokens_per_second"],
            "fastest_trl": trl_best["config"],
            "rss_ratio_vs_fastest_trl": ours["peak_rss_mb"] / trl_best["peak_rss_mb"],
        }
    out = RESULTS / "bench_trainer.json"
    out.write_text(
        json.dumps(
            {
                "setup": setup,
                "args": vars(args) | {"root": str(args.root)},
                "results": rows,
                "summary": summary,
            },
            indent=2,
        )
    )
    print(json.dumps(summary))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
