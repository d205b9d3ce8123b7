"""The training half of `benchmarks/gpu_check.sh`: our trainer against TRL on one GPU, bf16.

A Llama-shaped model from a config (random weights from one seed: speed does not need trained ones;
default ~1.1B parameters: hidden 2048, 22 layers, 32 heads / 4 KV heads, vocab 32,000) trains for
`--steps` steps on the same synthetic low-edit pairs in the same order (HH-RLHF-like lengths: long
prompts, a rejected answer that shares a prefix with the chosen one), in bf16 mixed precision:

1. the reference pass, in the policy's precision (`precision_for_training`: reference dtype = policy
   dtype) on the training layout and batches, its log-probs stored in the rows (a dpop refs dataset);
   `dpop refs`' own pass (`split_reference_logps`, padded token-budget batches) is timed too, and how
   far its values are from the training layout's is reported;
2. ours (`DPOPTrainer`) with each `packing` (none, padding_free, shared_prompt; the trainer falls back
   where the attention implementation cannot, and says so);
3. TRL's `DPOTrainer(precompute_ref_log_probs=True)` (its fastest set-up).

Reported per run: real tokens/s (the pairs' tokens as two sequences each: equal for every run),
computed tokens/s (positions run, padding included), seconds/step (median, after `--warmup` steps),
MFU = 6 · N · fed tokens/s / peak (N: parameters without the input embedding; fed: non-pad positions
the model ran; peak: the GPU's dense bf16 peak, H200/H100 989 TFLOP/s), peak GPU memory; then the
check: at step 1 the policy is the reference, so every pair's chosen log-ratio must be 0 (within
`--ratio-tolerance`). FlashAttention 2 when `flash_attn` imports, else sdpa.

`--cpu-smoke` runs the same code on CPU with a tiny model and a few steps (minutes), so the GPU run
is correct by construction. Writes gpu_check.json to `--out` (default $OUT, else benchmarks/results)
and prints a table. Exit status 1 when the log-ratio check fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
PACKINGS = ("none", "padding_free", "shared_prompt")
# A ~1.1B Llama (TinyLlama's shape) and a tiny one for the CPU smoke run.
GPU_MODEL = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32_000)  # fmt: skip
SMOKE_MODEL = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=512)  # fmt: skip
# (prompt, chosen) token ranges, HH-RLHF-like: prompts longer than answers
GPU_LENGTHS = ((256, 1024), (64, 512))
SMOKE_LENGTHS = ((16, 64), (8, 32))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU, same code path")
    parser.add_argument("--steps", type=int, default=None, help="training steps (GPU 20, smoke 4)")
    parser.add_argument("--warmup", type=int, default=None, help="steps not timed (GPU 3, smoke 1)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--layers", type=int, default=None, help="override the model's layer count")
    parser.add_argument("--packings", default=",".join(PACKINGS))
    parser.add_argument("--no-trl", action="store_true", help="skip TRL's DPOTrainer")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="bf16 dense peak (default: by GPU name)"
    )
    parser.add_argument("--ratio-tolerance", type=float, default=1e-3, help="nats, per pair, at step 1")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    )
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke
    args.steps = args.steps or (4 if smoke else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 3)
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")
    args.packings = [p for p in args.packings.split(",") if p]
    if any(p not in PACKINGS for p in args.packings):
        parser.error(f"--packings: some of {', '.join(PACKINGS)}")
    return args


# ----------------------------------------------------------------------------- model and data
def attention_implementation(device: torch.device) -> str:
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return "sdpa"
        return "flash_attention_2"
    return "sdpa"


def model_config(args: argparse.Namespace) -> Any:
    from transformers import LlamaConfig

    shape = dict(SMOKE_MODEL if args.cpu_smoke else GPU_MODEL)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    return LlamaConfig(**shape, max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def new_model(config: Any, implementation: str, device: torch.device) -> torch.nn.Module:
    """The same random weights every time (one seed, initialised on the device: no 4 GB copy)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation=implementation, dtype=torch.float32
        )
    return model


def weights_fingerprint(model: torch.nn.Module) -> float:
    return float(sum(p.detach().float().sum().item() for p in list(model.parameters())[:4]))


def make_rows(args: argparse.Namespace, vocab: int) -> list[dict]:
    """Low-edit pairs: rejected keeps a prefix of chosen and goes its own way after it."""
    rng = np.random.default_rng(0)
    (p_low, p_high), (r_low, r_high) = SMOKE_LENGTHS if args.cpu_smoke else GPU_LENGTHS
    rows = []
    for _ in range(args.steps * args.batch_size):
        prompt = rng.integers(3, vocab, rng.integers(p_low, p_high + 1)).tolist()
        chosen = rng.integers(3, vocab, rng.integers(r_low, r_high + 1)).tolist() + [2]
        common = int(rng.integers(0, len(chosen) - 1))
        tail = rng.integers(3, vocab, rng.integers(max(1, r_low - common), r_high + 1)).tolist()
        rejected = chosen[:common] + tail + [2]
        rows.append(
            {
                "prompt_ids": prompt,
                "chosen_ids": chosen,
                "rejected_ids": rejected,
                "common_prefix_len": common,
            }
        )
    return rows


def real_tokens(rows: list[dict]) -> int:
    return sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)


def shard_dataset(rows: list[dict]) -> Any:
    """The rows as a dpop_shard table (what `dpop build` + `dpop refs` write), memory-resident."""
    import pyarrow as pa

    from dpop.data import ShardDataset

    tokens = pa.list_(pa.int32())
    columns = {
        name: pa.array([r[name] for r in rows], tokens)
        for name in ("prompt_ids", "chosen_ids", "rejected_ids")
    }
    columns["common_prefix_len"] = pa.array([r["common_prefix_len"] for r in rows], pa.int32())
    for name in ("ref_chosen_logps", "ref_rejected_logps"):
        columns[name] = pa.array([r.get(name) for r in rows], pa.float32())
    return ShardDataset(pa.table(columns), name="gpu-check pairs")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- reference passes
def reference_pass(
    model, rows, collator, batch_size, precision, device
) -> tuple[np.ndarray, np.ndarray, float]:
    """Reference log-probs in the training layout and batches, through the training forward itself
    (grad enabled, no backward: attention kernels are chosen as in training), so step 1 runs the
    same arithmetic and the log-ratio is 0, not rounding."""
    from dpop.logps import pair_logps

    forward = precision.forward_of(model.train(), device.type)
    chosen, rejected = [], []
    synchronize(device)
    started = time.perf_counter()
    with torch.enable_grad():
        for start in range(0, len(rows), batch_size):
            batch = collator(rows[start : start + batch_size])
            result = pair_logps(forward, {key: value.to(device) for key, value in batch.items()})
            chosen.append(result.chosen.detach().float().cpu().numpy())
            rejected.append(result.rejected.detach().float().cpu().numpy())
            del result
    synchronize(device)
    return np.concatenate(chosen), np.concatenate(rejected), time.perf_counter() - started


def dpop_refs_pass(model, rows, precision, device) -> tuple[np.ndarray, float]:
    """`dpop refs`' own pass (padded, length-sorted token-budget batches): its speed, its chosen values."""
    from dpop.refs import split_reference_logps

    forward = precision.forward_of(model.eval(), device.type)
    synchronize(device)
    started = time.perf_counter()
    chosen, _ = split_reference_logps(forward, shard_dataset(rows), 0, 64, device)
    synchronize(device)
    return chosen, time.perf_counter() - started


# ----------------------------------------------------------------------------- training runs
class Meter:
    """Tokens per training batch and step-end times (synchronised: GPU work is asynchronous)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.real: list[int] = []
        self.fed: list[int] = []
        self.computed: list[int] = []
        self.ends: list[float] = []

    def callback(self) -> Any:
        from transformers import TrainerCallback

        meter = self

        class StepEnds(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                synchronize(meter.device)
                meter.ends.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kwargs):
                synchronize(meter.device)
                meter.ends.append(time.perf_counter())

        return StepEnds()

    def add(self, real: int, fed: int, computed: int) -> None:
        self.real.append(real)
        self.fed.append(fed)
        self.computed.append(computed)

    def summary(self, warmup: int) -> dict:
        durations = np.diff(self.ends)[warmup:]
        seconds = float(durations.sum())
        return {
            "seconds_per_step": float(statistics.median(durations)),
            "real_tokens_per_second": sum(self.real[warmup:]) / seconds,
            "fed_tokens_per_second": sum(self.fed[warmup:]) / seconds,
            "computed_tokens_per_second": sum(self.computed[warmup:]) / seconds,
            "padding_share": 1 - sum(self.fed[warmup:]) / sum(self.computed[warmup:]),
        }


def train_config(args: argparse.Namespace, out: str, device: torch.device, **extra: Any) -> Any:
    from dpop.config import TrainConfig

    return TrainConfig(
        output_dir=out,
        use_cpu=device.type == "cpu",  # the smoke run stays on CPU on a GPU machine too
        bf16=True,  # switched off with a warning on a CPU without bf16: the reference follows (precision_for_training)
        loss="dpop",
        penalty_lambda=50.0,
        learning_rate=1e-5,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        group_by_length=False,  # a sequential sampler below: the same order for every run
        logging_steps=args.steps,
        save_strategy="no",
        disable_tqdm=True,
        **extra,
    )


def run_ours(args, config, implementation, device, rows, packing: str) -> dict:
    from dpop.logps import PairCollator
    from dpop.trainer import DPOPTrainer

    meter, first_ratios = Meter(device), []

    class Trainer(DPOPTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

        def compute_loss(self, model, inputs, *rest, **kwargs):
            if model.training:
                real = int(inputs["sequence_lengths"].sum())
                shared = inputs.get("attention_mask") is not None and inputs["attention_mask"].dim() == 4
                pairs = inputs["sequence_lengths"].shape[0] // 2
                fed = real - int(inputs["prompt_lengths"][pairs:].sum()) if shared else real
                meter.add(real, fed, inputs["input_ids"].numel())
            return super().compute_loss(model, inputs, *rest, **kwargs)

    with tempfile.TemporaryDirectory() as out:
        model = new_model(config, implementation, device)
        trainer = Trainer(
            model=model,
            args=train_config(args, out, device, packing=packing),
            train_dataset=shard_dataset(rows),
            data_collator=PairCollator(pad_token_id=0),
            callbacks=[meter.callback()],
        )
        loss_fn = trainer.loss_fn

        def recording_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, **kwargs):
            if not first_ratios:  # step 1: the policy is the reference
                first_ratios.extend((policy_chosen.detach().float() - ref_chosen.float()).cpu().tolist())
            return loss_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, **kwargs)

        trainer.loss_fn = recording_loss
        reset_peak(device)
        trainer.train()
        result = {
            "trainer": "ours",
            "packing": packing,
            "packing_used": trainer.data_collator.packing,
            **meter.summary(args.warmup),
            "peak_gpu_memory_gb": peak_gb(device),
            "first_step_chosen_log_ratios": first_ratios,
        }
        del trainer, model
    release()
    return result


def run_trl(args, config, implementation, device, rows, bf16: bool) -> dict:
    import trl
    from datasets import Dataset

    meter = Meter(device)

    class PretokenizedDPOTrainer(trl.DPOTrainer):
        def _prepare_dataset(self, dataset, *rest, **kwargs):
            return dataset  # TRL's tokenised columns already

        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

        def compute_loss(self, model, inputs, *rest, **kwargs):
            if model.training:
                real = int(inputs["attention_mask"].sum())
                meter.add(real, real, inputs["attention_mask"].numel())
            return super().compute_loss(model, inputs, *rest, **kwargs)

    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    with tempfile.TemporaryDirectory() as out:
        trl_config = trl.DPOConfig(
            output_dir=out,
            loss_type="sigmoid",
            beta=0.1,
            max_length=None,
            precompute_ref_log_probs=True,
            precompute_ref_batch_size=args.batch_size,
            gradient_checkpointing=False,
            bf16=bf16,  # as ours (a CPU without bf16: both in float32)
            use_cpu=device.type != "cuda",
            learning_rate=1e-5,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            logging_steps=args.steps,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        model = new_model(config, implementation, device)
        synchronize(device)
        started = time.perf_counter()
        trainer = PretokenizedDPOTrainer(
            model=model,
            args=trl_config,
            train_dataset=Dataset.from_list([{c: r[c] for c in columns} for r in rows]),
            processing_class=_placeholder_tokenizer(config),
            callbacks=[meter.callback()],
        )
        synchronize(device)
        reference_seconds = time.perf_counter() - started
        reset_peak(device)
        trainer.train()
        result = {
            "trainer": "trl",
            "packing": "none",
            "packing_used": "none",
            **meter.summary(args.warmup),
            "peak_gpu_memory_gb": peak_gb(device),
            "reference_pass_seconds": reference_seconds,
        }
        del trainer, model
    release()
    return result


def _placeholder_tokenizer(config: Any) -> Any:
    """TRL wants a tokenizer for pad/eos ids only (the rows are token ids already)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, 16)}}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- report
def peak_flops(args: argparse.Namespace, device: torch.device) -> tuple[float | None, str]:
    if args.peak_tflops:
        return args.peak_tflops * 1e12, f"{args.peak_tflops:g} TFLOP/s (--peak-tflops)"
    if device.type != "cuda":
        return None, "no GPU: MFU not computed"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12, f"{tflops:g} TFLOP/s ({name}, dense bf16)"
    return None, f"unknown peak for {name}: pass --peak-tflops"


def add_mfu(results: list[dict], flops_params: int, peak: float | None) -> None:
    for result in results:
        result["mfu"] = 6 * flops_params * result["fed_tokens_per_second"] / peak if peak else None


def check_first_step(results: list[dict], tolerance: float) -> tuple[bool, str]:
    ratios = [abs(x) for r in results if r["trainer"] == "ours" for x in r["first_step_chosen_log_ratios"]]
    if not ratios:
        return True, "no run of ours: log-ratio check skipped"
    worst = max(ratios)
    verdict = "OK" if worst <= tolerance else "FAILED"
    return worst <= tolerance, (
        f"first-step chosen log-ratio (policy = reference, same precision): max |r_w| = {worst:.2e} nats over "
        f"{len(ratios)} pairs, tolerance {tolerance:g}: {verdict}"
    )


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    table = Table(title=report["title"])
    for column in (
        "trainer",
        "packing",
        "real tok/s",
        "computed tok/s",
        "s/step",
        "padding",
        "MFU",
        "peak GPU GB",
    ):
        table.add_column(column, justify="left" if column in ("trainer", "packing") else "right")
    for r in report["runs"]:
        packing = r["packing_used"] + (
            "" if r["packing_used"] == r["packing"] else f" (asked {r['packing']})"
        )
        table.add_row(
            r["trainer"],
            packing,
            f"{r['real_tokens_per_second']:,.0f}",
            f"{r['computed_tokens_per_second']:,.0f}",
            f"{r['seconds_per_step']:.3f}",
            f"{r['padding_share']:.0%}",
            "—" if r["mfu"] is None else f"{r['mfu']:.1%}",
            "—" if r["peak_gpu_memory_gb"] is None else f"{r['peak_gpu_memory_gb']:.1f}",
        )
    console.print(table)
    for line in report["notes"]:
        console.print(line)


def main(argv: list[str] | None = None) -> int:
    from dpop.logps import PairCollator, has_local_attention, resolve_packing
    from dpop.model_io import precision_for_training

    args = parse_args(argv)
    device = torch.device("cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda")
    if not args.cpu_smoke and device.type != "cuda":
        print("no CUDA GPU visible: run with --cpu-smoke, or on a machine with one", file=sys.stderr)
        return 2
    config = model_config(args)
    implementation = attention_implementation(device)
    rows = make_rows(args, config.vocab_size)
    with tempfile.TemporaryDirectory() as out:
        precision = precision_for_training(
            train_config(args, out, device)
        )  # the policy's: the reference's too

    model = new_model(config, implementation, device).eval()
    params = sum(p.numel() for p in model.parameters())
    flops_params = params - model.get_input_embeddings().weight.numel()
    fingerprint = weights_fingerprint(model)
    refs_chosen, refs_seconds = dpop_refs_pass(model, rows, precision, device)
    references = {}
    for packing in args.packings:
        used, _ = resolve_packing(packing, implementation, has_local_attention(config))  # as the trainer does
        collator = PairCollator(
            0, packing=used, varlen="flash" in implementation, additive_mask=implementation != "sdpa"
        )
        references[packing] = reference_pass(model, rows, collator, args.batch_size, precision, device)
    del model
    release()

    runs = []
    for packing in args.packings:
        chosen, rejected, _ = references[packing]
        stored = [
            dict(row, ref_chosen_logps=float(c), ref_rejected_logps=float(r))
            for row, c, r in zip(rows, chosen, rejected, strict=True)
        ]
        runs.append(run_ours(args, config, implementation, device, stored, packing))
    if not args.no_trl:
        runs.append(
            run_trl(args, config, implementation, device, rows, bf16=precision.autocast == "bfloat16")
        )
    peak, peak_text = peak_flops(args, device)
    add_mfu(runs, flops_params, peak)
    passed, verdict = check_first_step(runs, args.ratio_tolerance)
    first = references[args.packings[0]][0]
    notes = [
        f"model: Llama {config.num_hidden_layers}x{config.hidden_size}, vocab {config.vocab_size}, {params / 1e6:,.1f}M "
        f"parameters (N = {flops_params / 1e6:,.1f}M without the input embedding); attention {implementation}; "
        f"precision {precision.label}; device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}",
        f"data: {len(rows)} synthetic low-edit pairs, {real_tokens(rows):,} real tokens, batch {args.batch_size}, "
        f"{args.steps} steps ({args.warmup} untimed)",
        f"MFU = 6 · N · fed tokens/s / peak; peak = {peak_text}",
        "reference pass, training layout: "
        + ", ".join(f"{p} {real_tokens(rows) / references[p][2]:,.0f} real tok/s" for p in args.packings),
        f"reference pass, dpop refs' padded token-budget batches: {real_tokens(rows) / refs_seconds:,.0f} real tok/s; "
        f"its chosen log-probs differ from the training layout's ({args.packings[0]}) by at most "
        f"{float(np.abs(refs_chosen - first).max()):.2e} nats",
        verdict,
    ]
    report = {
        "title": f"DPO trainers, {'CPU smoke' if args.cpu_smoke else 'GPU'}: bf16, the same {len(rows)} pairs in the same order",
        "cpu_smoke": args.cpu_smoke,
        "weights_fingerprint": fingerprint,
        "runs": runs,
        "notes": notes,
        "passed": passed,
    }
    print_table(report)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("gpu_check_cpu_smoke.json" if args.cpu_smoke else "gpu_check.json")
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
