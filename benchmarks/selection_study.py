"""A small study: DPOP trained on a 25% selection by each rule, vs a 25% random subset, vs all pairs.

Through the product's stages only (ingest, tiny model, build, SFT warm-up as the reference, `dpop refs`,
a probe, `dpop logps`, `dpop select`, `dpop train`), on the real GSM8K pairs (ground truth vs a model's
wrong solution, ../shared/data/openai_grade-school-math/example_model_solutions.jsonl; skipped when
absent) and the demo's synthetic maths pairs, for several seeds. Per seed:

1. probe: a short DPO run (λ = 0) from the reference on a seeded random 10% of the train pairs
   (`dpop select --rule random --keep 0.1`), then its log-probs of every pair (`dpop logps`);
2. one selection of 25% of the train pairs per rule (margin, reference_difficulty, small_gap, low_edit,
   edit_quota, random), and all pairs; the eval split is the same in every selection;
3. DPOP (λ = 50, β = 0.1) from the reference at equal steps and batch on each, evaluated on the eval split
   by the trainer (reward accuracy, and Δ log p(chosen) = mean over eval pairs of log πθ(y_w) −
   log πref(y_w)) and by the evaluation stage (`dpop.evaluate`: the same, overall and per source).

Seed-independent stages (ingest, tiny model, build, SFT, refs) run once; the stage runner reuses every
finished stage, so a rerun with more seeds pays only for the new ones. Prints a table (mean ± std over
seeds) and writes benchmarks/results/selection_study.json with the date, machine and load.

    python benchmarks/selection_study.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("DPOP_SHARED_DATA", ROOT.parent / "shared" / "data"))
GSM8K = SHARED / "openai_grade-school-math" / "example_model_solutions.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "selection_study.json"
RULES = ("margin", "reference_difficulty", "small_gap", "low_edit", "edit_quota", "random")
# edit_quota: half the kept pairs from the lowest edit ratios, the rest from the middle and the top (the
# default's equal quarters cannot be filled here: the synthetic pairs sit below 0.05, GSM8K's above 0.3)
EXTRA = {"edit_quota": {"edit_buckets": (0.0, 0.05, 0.5, 1.0), "edit_shares": (0.5, 0.25, 0.25)}}
CURATION = {
    "filters": {"max_pairs_per_prompt": 1},
    "split": {"eval_fraction": 0.15},
    "tokenize": {"max_length": 320, "max_prompt_length": 160},
}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def training(args, seed: int, loss: str, steps: int) -> object:
    from dpop.config import TrainConfig

    return TrainConfig.from_dict(
        {
            "loss": loss,
            "beta": 0.1,
            "penalty_lambda": 50.0 if loss == "dpop" else 0.0,
            "learning_rate": args.lr,
            "max_steps": steps,
            "per_device_train_batch_size": args.batch,
            "per_device_eval_batch_size": 64,
            "warmup_steps": 2,
            "logging_steps": steps,
            "save_steps": 100_000,
            "seed": seed,
            "report_to": [],
            "disable_tqdm": True,
        },
        source="selection study",
    )


def shared_stages(args, ws) -> dict:
    """Ingest, tiny model, build, SFT reference and its log-probs: the same for every seed."""
    from demo.synth_math import write_math_pairs
    from demo.tiny_model import TinyModelStage
    from dpop.refs import compute_reference_logps
    from dpop.sft import SFTConfig, warm_up
    from pipeline.build import build_dataset
    from pipeline.ingest import ingest_source
    from pipeline.stage import run_stage

    synthetic = write_math_pairs(ws.root / "inputs" / f"synth-{args.synth_n}.jsonl", args.synth_n, seed=0)
    sources = [synthetic] + ([GSM8K] if GSM8K.is_file() else [])
    ingests = [result for path in sources for result in ingest_source(path, ws)]
    settings = {"vocab_size": 768, "layers": args.layers, "hidden_size": args.hidden, "heads": 4, "seed": 0}
    tiny = run_stage(ws, TinyModelStage(tuple(ingests), settings))
    base = tiny.output("model").location(ws)
    built = build_dataset(ws, CURATION, base, ingests=ingests)
    sft = warm_up(
        ws,
        base,
        built.dataset_id,
        SFTConfig(steps=args.sft_steps, learning_rate=2e-3, batch_size=16, max_length=320, seed=0),
    )
    refs = compute_reference_logps(ws, built.dataset_id, sft.model_dir, progress=False)
    return {
        "source_shares": _source_shares(ws, built.dataset_id),
        "sources": [str(s) for s in sources],
        "dataset_id": built.dataset_id,
        "rows_in": built.rows_in,
        "train_rows": built.train_rows,
        "eval_rows": built.eval_rows,
        "reference": sft.model_dir,
        "refs_id": refs,
    }


def _source_shares(ws, dataset_id: str) -> dict[str, float]:
    """Each source's share of the train pairs (by source name), for the `+mix` variants."""
    import polars as pl

    pairs = pl.read_parquet(ws.dataset_dir(dataset_id) / "pairs.parquet", columns=["source", "split"])
    train = pairs.filter(pl.col("split") == "train").with_columns(
        pl.col("source").str.replace(r":[^:]*$", "")
    )
    counts = dict(train.group_by("source").len().iter_rows())
    return {name: round(count / train.height, 4) for name, count in sorted(counts.items())}


def seed_runs(args, ws, shared: dict, seed: int) -> list[dict]:
    from dpop.model_logps import compute_model_logps
    from dpop.train import train
    from pipeline.select import ModelScores, select_dataset

    refs, reference = shared["refs_id"], shared["reference"]
    probe_data = select_dataset(ws, refs, {"rule": "random", "keep": args.probe_keep, "seed": 1000 + seed})
    probe = train(ws, probe_data.id, reference, training(args, seed, "dpo", args.probe_steps))
    probe_logps = compute_model_logps(ws, refs, probe.model_dir, progress=False)
    scores = [ModelScores.from_record(ws, "probe", probe_logps)]
    datasets = {"all": (refs, None)}
    for rule in RULES:
        config = {"rule": rule, "keep": args.keep, "seed": seed, **EXTRA.get(rule, {})}
        record = select_dataset(ws, refs, config, scores)
        datasets[rule] = (record.id, record.summary["selection"])
    for rule in args.mixed:  # the same rule, holding the sources' shares of the train split (--mix)
        config = {"rule": rule, "keep": args.keep, "seed": seed, "mix": shared["source_shares"]}
        record = select_dataset(ws, refs, config, scores)
        datasets[f"{rule}+mix"] = (record.id, record.summary["selection"])
    rows = []
    for name, (dataset_id, summary) in datasets.items():
        started = time.perf_counter()
        result = train(ws, dataset_id, reference, training(args, seed, "dpop", args.steps))
        metrics = result.final_metrics
        evaluated = evaluation(ws, result.model_dir, reference, refs, dataset_id)
        rows.append(
            {
                "seed": seed,
                "selection": name,
                "dataset_id": dataset_id,
                "run_id": result.run_id,
                "train_pairs": summary["kept_selectable"] if summary else shared["train_rows"],
                "eval_reward_accuracy": metrics.get("eval_rewards/accuracies"),
                "eval_delta_logp_chosen": metrics.get("eval_logps/chosen", 0.0)
                - metrics.get("eval_ref_logps/chosen", 0.0),
                "eval_loss": metrics.get("eval_loss"),
                "eval_penalty_active": metrics.get("eval_dpop/penalty_active"),
                "selection_summary": summary
                and {k: summary[k] for k in ("by_source", "score") if k in summary},
                "reference_ranking_accuracy": summary and summary.get("reference_ranking_accuracy"),
                "probe_reward_accuracy": summary and summary.get("probe_reward_accuracy"),
                "evaluation": evaluated,
                "train_seconds": round(time.perf_counter() - started, 1),
                "reused": result.reused,
                "load": load(),
            }
        )
        print(
            f"seed {seed} {name:22s} acc {rows[-1]['eval_reward_accuracy']:.3f} Δlogp(chosen) {rows[-1]['eval_delta_logp_chosen']:+.3f}",
            flush=True,
        )
    return rows


def evaluation(ws, model_dir, reference, refs: str, trained_on: str) -> dict:
    """The evaluation stage (`dpop.evaluate`) on the common eval split: overall and per source."""
    from dpop.evaluate import evaluate, read_metrics

    record = evaluate(ws, model_dir, reference, refs, "eval", beta=0.1, train_dataset_id=trained_on)
    found: dict = {}
    for row in read_metrics(ws, record).to_pylist():
        if row["group_kind"] in ("all", "source"):
            group = "all" if row["group_kind"] == "all" else row["group"].split(":")[0]
            found.setdefault(group, {})[row["metric"]] = row["value"]
    return found


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def aggregate(rows: list[dict]) -> dict[str, dict]:
    by_name: dict[str, dict] = {}
    for name in dict.fromkeys(r["selection"] for r in rows):
        mine = [r for r in rows if r["selection"] == name]
        if not mine:
            continue
        entry = {"seeds": len(mine), "train_pairs": statistics.mean(r["train_pairs"] for r in mine)}
        for key in ("eval_reward_accuracy", "eval_delta_logp_chosen", "eval_loss"):
            entry[key] = _mean_std([r[key] for r in mine if r[key] is not None])
        groups = sorted({g for r in mine for g in r["evaluation"]})
        entry["evaluation"] = {
            group: {
                metric: _mean_std([r["evaluation"][group][metric] for r in mine])
                for metric in ("rewards/accuracies", "logps/chosen_delta", "dpop/penalty_active")
                if all(r["evaluation"].get(group, {}).get(metric) is not None for r in mine)
            }
            for group in groups
        }
        by_name[name] = entry
    return by_name


def show(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"DPOP at {result['settings']['steps']} steps on a 25% selection ({len(result['seeds'])} seeds, mean ± std)"
    )
    for column in ("selection", "train pairs", "eval reward accuracy", "eval Δ log p(chosen)", "eval loss"):
        table.add_column(column, justify="left" if column == "selection" else "right")
    for name, entry in result["summary"].items():
        table.add_row(
            name,
            f"{entry['train_pairs']:.0f}",
            *(
                f"{entry[k]['mean']:.3f} ± {entry[k]['std']:.3f}"
                for k in ("eval_reward_accuracy", "eval_delta_logp_chosen", "eval_loss")
            ),
        )
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--keep", type=float, default=0.25)
    parser.add_argument("--synth-n", type=int, default=600)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--sft-steps", type=int, default=60)
    parser.add_argument("--probe-keep", type=float, default=0.1)
    parser.add_argument("--probe-steps", type=int, default=15)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--mixed",
        type=lambda text: [r for r in text.split(",") if r],
        default=[],
        help="rules to run again with --mix at the train split's source shares (e.g. margin,small_gap)",
    )
    parser.add_argument(
        "--workspace", type=Path, default=None, help="keep stages here (default: a temporary folder)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    from pipeline.workspace import Workspace

    torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), load()
    ws = Workspace.open(args.workspace or tempfile.mkdtemp(prefix="selection-study-"))
    shared = shared_stages(args, ws)
    print(
        f"dataset {shared['dataset_id']}: {shared['train_rows']} train / {shared['eval_rows']} eval pairs; reference log-probs {shared['refs_id']}",
        flush=True,
    )
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = [row for seed in seeds for row in seed_runs(args, ws, shared, seed)]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}, Python {platform.python_version()}",
        "load_before": load_before,
        "load_after": load(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "seeds": seeds,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {k: (str(v) if isinstance(v, Path) else v) for k, v in shared.items()},
        "summary": aggregate(rows),
        "runs": rows,
    }
    show(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out} ({result['wall_seconds']:.0f} s; workspace {ws.root})")


if __name__ == "__main__":
    main()
