"""Benchmark our DPOP trainer against TRL's DPOTrainer: the same rows, in the same order, side by side.

Same tiny Llama (4 layers, hidden 256, vocab 2,048, random init from one seed), fp32 on CPU, AdamW,
batch 8, no gradient checkpointing. Two data sets built by `dpop build` from ../shared/data (synthetic
maths pairs where it is absent):

* `hh-rlhf`: Anthropic HH-RLHF harmless-base, multi-turn dialogues (prompts longer than the answers);
* `gsm8k`: GSM8K questions with a correct and a wrong model solution (short prompts, long answers).

Each data set is shuffled once (seed 0) and cut to the `steps x batch` rows the runs consume; every
configuration reads exactly those rows in that order (a sequential sampler), so they all train on the
same "real" tokens. Configurations:

1. `trl`: TRL `DPOTrainer(loss_type="sigmoid", precompute_ref_log_probs=True)`, its fastest set-up
   (reference pass in __init__, counted as set-up);
2. `ours_padded`, `ours_padding_free`, `ours_shared_prompt`: `DPOPTrainer` with stored reference
   log-probs (`dpop refs`, timed separately) and `packing` = none / padding_free / shared_prompt;
3. `trl_live` (only with --configs): TRL with the reference forward in every step.

Each run is a fresh subprocess. Reported per configuration: real tokens/s (the pairs' tokens as two
sequences each, prompt counted twice: the same for every trainer at equal rows), computed tokens/s
(positions the model ran, padding included), padding share (pad positions / computed positions),
seconds per step (median; the first step is a warm-up and not counted; a step is the time between two
step ends, so batch collation is in it), peak memory (VmHWM of the worker, read from /proc at its
end), set-up time. The machine is shared and noisy: `--repeats` rounds run every configuration in turn
(ABCD ABCD …), ratios to TRL are taken within a round and their median reported, and the load average
is recorded around every run. Prints tables (and a markdown one for docs/training.md) and writes
benchmarks/results/bench_trainer.json.

    python benchmarks/bench_trainer.py --steps 6 --batch-size 8 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("DPOP_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = {
    "hh-rlhf": {
        "file": "anthropics_hh-rlhf/harmless-base/test.jsonl.gz",
        "about": "HH-RLHF harmless-base: multi-turn dialogues, long prompts",
        "tokenize": {"max_length": 512, "max_prompt_length": 384},
    },
    "gsm8k": {
        "file": "openai_grade-school-math/example_model_solutions.jsonl",
        "about": "GSM8K right vs wrong solutions: short prompts, long answers",
        "tokenize": {"max_length": 512, "max_prompt_length": 256},
    },
}
CONFIGS = ("trl", "ours_padded", "ours_padding_free", "ours_shared_prompt")
ALL_CONFIGS = (*CONFIGS, "trl_live")
PACKING = {"ours_padded": "none", "ours_padding_free": "padding_free", "ours_shared_prompt": "shared_prompt"}
LABELS = {
    "trl": "TRL DPOTrainer, precompute_ref_log_probs",
    "trl_live": "TRL DPOTrainer, reference in the loop",
    "ours_padded": "ours, padded (packing: none)",
    "ours_padding_free": "ours, padding_free",
    "ours_shared_prompt": "ours, shared_prompt",
}


# ----------------------------------------------------------------------------- set-up (parent)
def prepare(args: argparse.Namespace, root: Path) -> dict:
    """Ingest, train the tiny tokenizer and model, build each data set, cut it to the shuffled rows
    the runs consume, and store their reference log-probs."""
    from demo.tiny_model import make_tiny_model
    from demo.tiny_tokenizer import tokenizer_texts_from_pairs, train_tiny_tokenizer
    from pipeline.ingest import ingest_source
    from pipeline.workspace import Workspace

    ws = Workspace.open(root / "ws")
    ingests = {}
    for name in args.datasets:
        path = SHARED / DATASETS[name]["file"]
        if path.is_file():
            ingests[name] = ingest_source(path, ws)
    if not ingests:
        from demo.synth_math import write_math_pairs

        source = write_math_pairs(root / "synthetic.jsonl", 4 * args.steps * args.batch_size, seed=0)
        ingests["synthetic"] = ingest_source(source, ws)
    texts = tokenizer_texts_from_pairs([r.pairs_path for rs in ingests.values() for r in rs], max_texts=8000)
    tokenizer = train_tiny_tokenizer(texts, root / "tokenizer", vocab_size=args.vocab_size)
    model = make_tiny_model(tokenizer, root / "model", num_layers=4, hidden_size=256, num_heads=4, seed=0)
    datasets = {name: prepare_dataset(ws, name, results, model, args) for name, results in ingests.items()}
    return {"workspace": str(ws.root), "model": str(model), "datasets": datasets}


def prepare_dataset(ws, name: str, ingests: list, model: Path, args: argparse.Namespace) -> dict:
    import numpy as np
    import pyarrow as pa

    from dpop.refs import compute_reference_logps
    from pipeline.build import build_dataset
    from pipeline.shards import load_manifest, open_split, write_manifest, write_split

    tokenize = DATASETS.get(name, {}).get("tokenize", {"max_length": 512, "max_prompt_length": 256})
    built = build_dataset(ws, {"tokenize": tokenize, "split": {"eval_fraction": 0.0}}, model, ingests=ingests)
    table = open_split(ws, built.dataset_id, "train")
    rows = args.steps * args.batch_size
    if table.num_rows < rows:
        sys.exit(f"{name}: {table.num_rows} rows after the build, the runs need {rows}")
    # one shuffle, cut to the rows the runs consume: every configuration reads these, in this order
    order = np.random.default_rng(0).permutation(table.num_rows)[:rows]
    subset = table.take(pa.array(order))
    subset_id = f"bench-{built.dataset_id}-{rows}"
    subset_dir = ws.dataset_dir(subset_id)
    if not (subset_dir / "manifest.json").is_file():
        manifest = load_manifest(ws, built.dataset_id)
        infos = write_split(subset_dir, "train", pa.Table.from_batches(subset.to_batches(), subset.schema))
        manifest.pop("contract", None)
        manifest.update(
            dataset_id=subset_id,
            parents=[{"id": built.dataset_id, "kind": "dataset", "relation": "subset_of"}],
            splits={"train": {"rows": rows, "shards": [info.as_dict() for info in infos]}},
        )
        write_manifest(subset_dir, manifest)
    started = time.perf_counter()
    ref_id = compute_reference_logps(ws, subset_id, model, progress=False)
    refs_seconds = time.perf_counter() - started
    lengths = {
        c: np.array([len(v) for v in subset.column(c).to_pylist()])
        for c in ("prompt_ids", "chosen_ids", "rejected_ids")
    }
    real = int((2 * lengths["prompt_ids"] + lengths["chosen_ids"] + lengths["rejected_ids"]).sum())
    return {
        "about": DATASETS.get(name, {}).get("about", "synthetic maths pairs (../shared/data absent)"),
        "dataset_id": subset_id,
        "ref_dataset_id": ref_id,
        "rows": rows,
        "tokenize": tokenize,
        "mean_tokens": {column: float(values.mean()) for column, values in lengths.items()},
        "prompt_share": float(2 * lengths["prompt_ids"].sum() / real),
        "real_tokens": real,
        "refs_seconds": refs_seconds,
        "refs_real_tokens_per_second": real / refs_seconds,
    }


# ----------------------------------------------------------------------------- workers (subprocesses)
class StepMeter:
    """Tokens of every training batch (from the trainer's compute_loss) and the time between step
    ends (data loading, collation, forward, backward, optimizer: the whole loop)."""

    def __init__(self):
        self.real: list[int] = []  # the pairs' tokens as two sequences each (equal across trainers)
        self.fed: list[int] = []  # non-pad positions the model ran
        self.computed: list[int] = []  # positions the model ran, padding included
        self.step_ends: list[float] = []
        self.cpu_ends: list[float] = []  # CPU seconds of this process (all threads): steadier under load
        self.started = self.cpu_started = 0.0

    def add_ours(self, inputs) -> None:
        real = int(inputs["sequence_lengths"].sum())
        pairs = inputs["sequence_lengths"].shape[0] // 2
        shared = "attention_mask" in inputs and inputs["attention_mask"].dim() == 4
        # the shared prompt is run once: rejected's copy of it is not fed
        fed = real - int(inputs["prompt_lengths"][pairs:].sum()) if shared else real
        self._add(real, fed, inputs["input_ids"].numel())

    def add_trl(self, inputs) -> None:
        real = int(inputs["attention_mask"].sum())
        self._add(real, real, inputs["attention_mask"].numel())

    def _add(self, real: int, fed: int, computed: int) -> None:
        self.real.append(real)
        self.fed.append(fed)
        self.computed.append(computed)

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class StepTimes(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                meter.started, meter.cpu_started = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                meter.step_ends.append(time.perf_counter())
                meter.cpu_ends.append(time.process_time())

        return StepTimes()

    def summary(self) -> dict:
        """Steps 2..N (step 1 warms up): durations between step ends, and their tokens."""
        durations = _steps([self.started, *self.step_ends])
        cpu = _steps([self.cpu_started, *self.cpu_ends])[1:]
        measured, seconds = durations[1:], sum(durations[1:])
        real, fed, computed = sum(self.real[1:]), sum(self.fed[1:]), sum(self.computed[1:])
        return {
            "steps": len(durations),
            "first_step_seconds": durations[0],
            "seconds_per_step": statistics.median(measured),
            "seconds_per_step_mean": seconds / len(measured),
            "cpu_seconds_per_step": statistics.median(cpu),
            "real_tokens_per_cpu_second": real / sum(cpu),
            "real_tokens_per_second": real / seconds,
            "computed_tokens_per_second": computed / seconds,
            "padding_share": 1 - fed / computed,
            "real_tokens_all_steps": sum(self.real),
            "computed_tokens_per_step": computed / len(measured),
        }


def _steps(ends: list[float]) -> list[float]:
    return [b - a for a, b in zip(ends, ends[1:], strict=False)]


def peak_memory_mb() -> float:
    """VmHWM of this process (its own peak resident set; ru_maxrss would include the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(name: str, setup: dict, dataset: str, args: argparse.Namespace) -> dict:
    import torch

    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    meter = StepMeter()
    data = setup["datasets"][dataset]
    if name.startswith("ours"):
        result = run_ours(setup, data, args, meter, PACKING[name])
    else:
        result = run_trl(setup, data, args, meter, precompute=name == "trl")
    return {
        "config": name,
        "label": LABELS[name],
        "dataset": dataset,
        **meter.summary(),
        **result,
        "peak_memory_mb": peak_memory_mb(),
        "threads": torch.get_num_threads(),
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }


def run_ours(setup: dict, data: dict, args: argparse.Namespace, meter: StepMeter, packing: str) -> dict:
    import tempfile

    import torch
    from transformers import AutoTokenizer

    from dpop.config import TrainConfig
    from dpop.data import ShardDataset
    from dpop.logps import PairCollator
    from dpop.model_io import load_causal_lm
    from dpop.trainer import DPOPTrainer
    from pipeline.workspace import Workspace

    class Trainer(DPOPTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

        def compute_loss(self, model, inputs, *rest, **kwargs):
            if model.training:
                meter.add_ours(inputs)
            return super().compute_loss(model, inputs, *rest, **kwargs)

    started = time.perf_counter()
    dataset = ShardDataset.open(Workspace.open(setup["workspace"]), data["ref_dataset_id"], "train")
    tokenizer = AutoTokenizer.from_pretrained(setup["model"])
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            output_dir=out,
            loss="dpop",
            beta=0.1,
            penalty_lambda=50.0,
            packing=packing,
            group_by_length=False,  # the sequential sampler above: the same order as TRL's
            learning_rate=args.learning_rate,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            logging_steps=args.steps,
            save_strategy="no",
            optim="adamw_torch",
            disable_tqdm=True,
            seed=42,
        )
        trainer = Trainer(
            model=load_causal_lm(setup["model"]),
            args=config,
            train_dataset=dataset,
            data_collator=PairCollator(pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id),
            processing_class=tokenizer,
            callbacks=[meter.callback()],
        )
        setup_seconds = time.perf_counter() - started
        output = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "packing": trainer.data_collator.packing,
        "train_seconds": output.metrics["train_runtime"],
        "setup_seconds": setup_seconds,
        "final_loss": losses[-1] if losses else None,
    }


def run_trl(setup: dict, data: dict, args: argparse.Namespace, meter: StepMeter, precompute: bool) -> dict:
    import tempfile

    import torch
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

        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

        def compute_loss(self, model, inputs, *rest, **kwargs):
            if model.training:
                meter.add_trl(inputs)
            return super().compute_loss(model, inputs, *rest, **kwargs)

    ws = Workspace.open(setup["workspace"])
    table = open_split(ws, data["dataset_id"], "train").select(["prompt_ids", "chosen_ids", "rejected_ids"])
    with tempfile.TemporaryDirectory() as out:
        config = trl.DPOConfig(
            output_dir=out,
            loss_type="sigmoid",
            beta=0.1,
            max_length=data["tokenize"]["max_length"],  # the build cut to it already: nothing is truncated
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
            callbacks=[meter.callback()],
        )
        setup_seconds = time.perf_counter() - started
        output = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "packing": "none",
        "train_seconds": output.metrics["train_runtime"],
        "setup_seconds": setup_seconds,
        "final_loss": losses[-1] if losses else None,
    }


# ----------------------------------------------------------------------------- rounds and report
# (header, cell) of the report's tables: the printed one and the markdown one for docs/training.md
COLUMNS = (
    ("trainer", lambda row: row["label"]),
    ("real tok/s", lambda row: f"{row['real_tokens_per_second']:,.0f}"),
    ("computed tok/s", lambda row: f"{row['computed_tokens_per_second']:,.0f}"),
    ("s/step", lambda row: f"{row['seconds_per_step']:.2f}"),
    ("padding", lambda row: f"{row['padding_share']:.0%}"),
    ("VmHWM MB", lambda row: f"{row['peak_memory_mb']:,.0f}"),
    ("set-up s", lambda row: f"{row['setup_seconds']:.1f}"),
    ("real tok/s vs TRL", lambda row: _ratio(row["real_tokens_vs_trl"])),
    ("s/step vs TRL", lambda row: _ratio(row["seconds_per_step_vs_trl"])),
    ("real tok/CPU-s vs TRL", lambda row: _ratio(row["real_tokens_per_cpu_second_vs_trl"])),
)


def run_worker(name: str, dataset: str, setup: dict, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--dataset-name",
        dataset,
        "--setup",
        json.dumps(setup),
    ]
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    command += ["--learning-rate", str(args.learning_rate)]
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        sys.exit(f"{name} on {dataset} failed:\n{completed.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def summarise(runs: list[dict], configs: list[str]) -> list[dict]:
    """Per configuration: medians over rounds, and the median of its within-round ratios to TRL."""
    rows = []
    rounds = sorted({run["round"] for run in runs})
    for name in configs:
        mine = [run for run in runs if run["config"] == name]
        if not mine:
            continue
        ratios, step_ratios, cpu_ratios = [], [], []
        for number in rounds:
            this = next((r for r in mine if r["round"] == number), None)
            trl = next((r for r in runs if r["config"] == "trl" and r["round"] == number), None)
            if this and trl:
                ratios.append(this["real_tokens_per_second"] / trl["real_tokens_per_second"])
                step_ratios.append(this["seconds_per_step"] / trl["seconds_per_step"])
                cpu_ratios.append(this["real_tokens_per_cpu_second"] / trl["real_tokens_per_cpu_second"])

        def median(key: str, mine: list[dict] = mine) -> float:
            return statistics.median(run[key] for run in mine)

        rows.append(
            {
                "config": name,
                "label": LABELS[name],
                "packing": mine[0]["packing"],
                "real_tokens_per_second": median("real_tokens_per_second"),
                "computed_tokens_per_second": median("computed_tokens_per_second"),
                "seconds_per_step": median("seconds_per_step"),
                "padding_share": median("padding_share"),
                "computed_tokens_per_step": median("computed_tokens_per_step"),
                "peak_memory_mb": median("peak_memory_mb"),
                "setup_seconds": median("setup_seconds"),
                "real_tokens_all_steps": mine[0]["real_tokens_all_steps"],
                "real_tokens_vs_trl": statistics.median(ratios) if ratios else None,
                "seconds_per_step_vs_trl": statistics.median(step_ratios) if step_ratios else None,
                "real_tokens_per_cpu_second": median("real_tokens_per_cpu_second"),
                "cpu_seconds_per_step": median("cpu_seconds_per_step"),
                "real_tokens_per_cpu_second_vs_trl": statistics.median(cpu_ratios) if cpu_ratios else None,
                "real_tokens_vs_trl_per_round": ratios,
                "rounds": len(mine),
            }
        )
    return rows


def print_tables(setup: dict, results: dict, args: argparse.Namespace, machine: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)  # a log file has no terminal width
    for dataset, rows in results.items():
        data = setup["datasets"][dataset]
        mean = data["mean_tokens"]
        title = (
            f"{dataset}: {data['rows']} pairs (prompt/chosen/rejected {mean['prompt_ids']:.0f}/"
            f"{mean['chosen_ids']:.0f}/{mean['rejected_ids']:.0f} tokens, prompt {data['prompt_share']:.0%} of "
            f"the real tokens), batch {args.batch_size}, {args.steps} steps, {args.repeats} round(s)"
        )
        table = Table(title=title)
        for index, (header, _) in enumerate(COLUMNS):
            table.add_column(header, justify="right" if index else "left", no_wrap=not index)
        for row in rows:
            table.add_row(*(cell(row) for _, cell in COLUMNS))
        console.print(table)
        console.print(
            f"ours: reference log-probs stored once by `dpop refs` in {data['refs_seconds']:.1f}s "
            f"({data['refs_real_tokens_per_second']:,.0f} real tokens/s; not in the training loop)"
        )
    console.print(f"machine: {machine['description']}; load average over the run {machine['load_average']}")
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [
        "| data | " + " | ".join(header for header, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for dataset, rows in results.items():
        lines += [f"| {dataset} | " + " | ".join(cell(row) for _, cell in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def machine_description() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    model_name = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
        if Path("/proc/cpuinfo").is_file()
        else cpu
    )
    return f"{os.cpu_count()} CPU(s), {model_name}, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6, help="steps per run; the first is a warm-up")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every configuration in turn")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"some of {', '.join(DATASETS)}")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"some of {', '.join(ALL_CONFIGS)}")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--root", type=Path, default=RESULTS / "bench_trainer_ws")
    parser.add_argument("--worker", choices=ALL_CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--dataset-name", help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.datasets = [name for name in args.datasets.split(",") if name]
    args.configs = [name for name in args.configs.split(",") if name]
    unknown = [n for n in args.datasets if n not in DATASETS] + [
        n for n in args.configs if n not in ALL_CONFIGS
    ]
    if unknown or args.steps < 2:
        parser.error(
            f"unknown data set or configuration {unknown}" if unknown else "--steps must be at least 2"
        )
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        result = worker(args.worker, json.loads(args.setup), args.dataset_name, args)
        print("RESULT " + json.dumps(result), flush=True)
        return

    RESULTS.mkdir(parents=True, exist_ok=True)
    loads = [os.getloadavg()[0]]
    setup = prepare(args, args.root)
    runs = []
    for number in range(args.repeats):
        for dataset in setup["datasets"]:
            for name in args.configs:
                run = run_worker(name, dataset, setup, args) | {"round": number}
                loads.append(run["load_average_1min"][1])
                runs.append(run)
                print(
                    f"round {number + 1} {dataset:8} {name:20} {run['real_tokens_per_second']:8,.0f} real tok/s "
                    f"{run['seconds_per_step']:6.2f} s/step  load {run['load_average_1min'][1]:.1f}",
                    flush=True,
                )
    results = {
        dataset: summarise([run for run in runs if run["dataset"] == dataset], args.configs)
        for dataset in setup["datasets"]
    }
    for dataset, rows in results.items():
        real = {row["real_tokens_all_steps"] for row in rows}
        if len(real) != 1:  # equal rows must mean equal real tokens
            sys.exit(f"{dataset}: the configurations trained on different tokens: {sorted(real)}")
    machine = {
        "description": machine_description(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "load_average": f"{min(loads):.1f}-{max(loads):.1f} (1 min)",
    }
    print_tables(setup, results, args, machine)
    out = RESULTS / "bench_trainer.json"
    args_record = {
        key: value for key, value in vars(args).items() if key not in ("worker", "setup", "dataset_name")
    }
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "setup": setup,
                "args": args_record | {"root": str(args.root)},
                "runs": runs,
                "results": results,
            },
            indent=2,
        )
    )
    shutil.rmtree(args.root / "ws" / "runs", ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
