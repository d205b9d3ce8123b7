"""The Smaug paper's failure mode, reproduced on CPU through the product's own path: DPO lowers the
likelihood of the preferred answer on low-edit pairs; DPO-Positive does not.

Pal et al. (arXiv 2402.13228, section 3) show that when chosen and rejected differ by a few tokens,
DPO can raise its reward margin while *lowering* log πθ(y_w|x), chiefly on the tokens after the first
edit. This benchmark runs the data-to-model chain (`flows.chain.data_to_model`, inline executor), one
`ChainSpec` per dataset, with `losses: dpo, dpop:5, dpop:50`:

  ingest -> tiny model (a BPE tokenizer trained on the pairs and a tiny Llama) -> build (score, curate,
  split by prompt, tokenise) -> SFT on the train split's chosen answers (the reference policy) ->
  reference log-probs -> three `TrainStage` runs (`DPOPTrainer`, same seed and batches) -> one
  `PreferenceEvalStage` per run on the eval split (one eval set id for the three)

on

  * the synthetic MetaMath-style pairs (`demo.synth_math`: one intermediate result corrupted), and
  * the real GSM8K pairs from `../shared/data/openai_grade-school-math/example_model_solutions.jsonl`
    (`model_solutions` format: the ground truth against each wrong model solution), with a curation
    config that keeps the lowest-edit pairs (`filters.edit_ratio.max`), when that file is present.

The table's numbers come from the eval stage (`<ws>/evals/<id>/metrics.parquet`): log p(chosen) against
the reference, reward accuracy and margin, and the token view (the mean per-token change of the chosen
tokens before and after the first edit). The curves come from the trainer's own evaluations on the same
split (`metrics.jsonl`; step 0 is `eval_on_start`, the reference itself).

    python benchmarks/failure_mode.py             # both datasets (~950 CPU-s: 8-10 min on 2 free cores)
    python benchmarks/failure_mode.py --quick     # synthetic only, fewer steps
    python benchmarks/failure_mode.py --replot    # docs from the last JSON, no training

Writes benchmarks/results/failure_mode.json, docs/failure_mode.png and docs/failure_mode.md. Its
workspace (benchmarks/results/failure_mode_ws) keeps every stage: a second run with the same settings
reuses them while the code that keys the stages (pipeline, dpop, demo, contracts) is unchanged
(`--fresh` starts from an empty one, for timing). The promotion gate is off: a comparison, not a release.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.chain import ChainResult, ChainSpec, data_to_model, with_losses  # noqa: E402
from pipeline.stage import INLINE, StageRecord  # noqa: E402
from pipeline.workspace import Workspace  # noqa: E402

SHARED = Path(os.environ.get("DPOP_SHARED_DATA", ROOT.parent / "shared" / "data"))
GSM8K_SOLUTIONS = SHARED / "openai_grade-school-math" / "example_model_solutions.jsonl"
LOSSES = "dpo,dpop:5,dpop:50"
LABELS = {"dpo": "DPO (λ=0)", "dpop:5": "DPOP (λ=5)", "dpop:50": "DPOP (λ=50)"}
COLOURS = {"dpo": "#d62728", "dpop:5": "#1f77b4", "dpop:50": "#2ca02c"}
OUT = ROOT / "benchmarks" / "results" / "failure_mode.json"
DOC, PLOT = ROOT / "docs" / "failure_mode.md", ROOT / "docs" / "failure_mode.png"


@dataclass(frozen=True)
class Settings:
    synth_pairs: int = 320  # synthetic pairs generated (train + eval)
    gsm8k_max_edit_ratio: float = 0.49  # curation keeps GSM8K pairs at or below this edit ratio
    eval_fraction: float = 0.2  # of prompts, by hash (a prompt's pairs stay in one split)
    steps: int = 40
    batch_size: int = 16
    learning_rate: float = 1.5e-4
    beta: float = 0.1
    eval_every: int = 10
    vocab_size: int = 768
    hidden_size: int = 128
    layers: int = 3
    heads: int = 4
    sft_steps: int = 100
    sft_learning_rate: float = 2e-3
    max_length: int = 384
    max_prompt_length: int = 192
    seed: int = 0


QUICK = Settings(synth_pairs=160, steps=20, sft_steps=60, eval_every=5)


# --- the chains ---------------------------------------------------------------------------------------


def training(settings: Settings) -> dict[str, Any]:
    """The training section shared by the three losses: a constant learning rate (a short run, no
    schedule to confound the comparison), an evaluation before the first step and every `eval_every`."""
    return {
        "beta": settings.beta,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_steps": settings.steps,
        "per_device_train_batch_size": settings.batch_size,
        "per_device_eval_batch_size": 32,
        "eval_strategy": "steps",
        "eval_steps": settings.eval_every,
        "eval_on_start": True,
        "logging_steps": settings.eval_every,
        "save_steps": 100_000,  # no checkpoint: a killed benchmark retrains its run
        "report_to": [],
        "disable_tqdm": True,
        "seed": settings.seed,
    }


def chain_spec(settings: Settings, sources: tuple[str, ...] = (), curation: dict | None = None) -> ChainSpec:
    """One dataset's chain: the demo's synthetic pairs when `sources` is empty."""
    return ChainSpec(
        sources=sources,
        synth_n=settings.synth_pairs,
        seed=settings.seed,
        fmt="model_solutions" if sources else None,
        tiny_model={
            "vocab_size": settings.vocab_size,
            "layers": settings.layers,
            "hidden_size": settings.hidden_size,
            "heads": settings.heads,
        },
        curation={
            **(curation or {}),
            "split": {"eval_fraction": settings.eval_fraction},
            "tokenize": {"max_length": settings.max_length, "max_prompt_length": settings.max_prompt_length},
        },
        sft={
            "steps": settings.sft_steps,
            "learning_rate": settings.sft_learning_rate,
            "batch_size": 16,
            "max_length": settings.max_length,
        },
        training=with_losses(training(settings), LOSSES),
        # A comparison, not a release: no promotion gate (its generation evals would cost minutes, and
        # the second dataset's gate would try to score the first one's champion, another tokenizer).
        gate={"enabled": False},
    )


def datasets(settings: Settings, quick: bool) -> list[tuple[str, ChainSpec]]:
    found = [("synthetic math", chain_spec(settings))]
    if quick:
        return found
    if not GSM8K_SOLUTIONS.is_file():
        print(f"(GSM8K solutions not found at {GSM8K_SOLUTIONS}; synthetic pairs only)")
        return found
    low_edit = {"filters": {"edit_ratio": {"max": settings.gsm8k_max_edit_ratio}}}
    return [*found, ("GSM8K wrong-vs-right", chain_spec(settings, (str(GSM8K_SOLUTIONS),), low_edit))]


# --- what a chain gives -----------------------------------------------------------------------------


def _seconds(record: StageRecord) -> float:
    started, finished = (datetime.fromisoformat(t) for t in (record.started_at, record.finished_at))
    return round((finished - started).total_seconds(), 1)


def curve(ws: Workspace, run: StageRecord) -> list[dict[str, Any]]:
    """The trainer's evaluations of a run, one point per step (the last event of a step: the stage's
    final evaluation repeats the last step). Per-token changes are against step 0, the reference."""
    events: dict[int, dict[str, Any]] = {}
    for line in (ws.root / run.folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("split") == "eval":
            events[int(event["step"])] = event
    start = events.get(0, {})
    points = []
    for step, event in sorted(events.items()):
        point = {"step": step, **{k: event.get(k) for k in ("rewards/accuracies", "rewards/margins")}}
        point["logps/chosen_minus_ref"] = event["logps/chosen"] - event["ref_logps/chosen"]
        for side in ("pre", "post"):
            name = f"logps/chosen_{side}_edit"
            known = event.get(name) is not None and start.get(name) is not None
            point[f"token_delta/{side}_edit"] = event[name] - start[name] if known else None
        points.append(point)
    return points


def eval_tables(ws: Workspace, record: StageRecord) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The eval stage's overall metrics, and per edit bucket {bucket: {metric: value, "n": pairs}}."""
    from dpop.evaluate import read_metrics

    overall: dict[str, Any] = {}
    buckets: dict[str, dict[str, Any]] = {}
    for row in read_metrics(ws, record).to_pylist():
        if row["group_kind"] == "all":
            overall[row["metric"]] = row["value"]
        elif row["group_kind"] == "edit_bucket":
            bucket = buckets.setdefault(row["group"], {})
            bucket[row["metric"]] = row["value"]
            if row["metric"] == "rewards/accuracies":  # its n is every pair of the bucket
                bucket["n"] = row["n"]
    return overall, buckets


def eval_set_shape(ws: Workspace, record: StageRecord) -> dict[str, Any]:
    """Chosen tokens per eval pair, and the share of them at or after the first edit."""
    from dpop.evaluate import read_pairs

    pairs = read_pairs(ws, record).select(["chosen_tokens", "common_prefix_len"]).to_pylist()
    tokens = sum(p["chosen_tokens"] for p in pairs)
    after = sum(max(p["chosen_tokens"] - p["common_prefix_len"], 0) for p in pairs)
    return {
        "mean_chosen_tokens": round(tokens / max(len(pairs), 1), 1),
        "post_edit_token_share": round(after / max(tokens, 1), 3),
    }


def summarise(name: str, result: ChainResult) -> dict[str, Any]:
    """One dataset's JSON: the chain's ids, the eval set's shape, and per loss its curve and eval."""
    ws, build = result.ws, result.build
    runs = {}
    for key, run, evaluation in zip(LOSSES.split(","), result.runs, result.evals, strict=True):
        if evaluation is None:
            raise ValueError(f"{name}: the eval split is empty (raise eval_fraction)")
        final, buckets = eval_tables(ws, evaluation)
        runs[key] = {
            "loss": run.config.get("loss"),
            "lambda": float(run.summary.get("loss", {}).get("penalty_lambda", 0.0)),
            "run_id": run.id,
            "eval_id": evaluation.id,
            "eval_set_id": evaluation.summary["eval_set"],
            "seconds": _seconds(run),
            "curve": curve(ws, run),
            "final": final,
            "buckets": buckets,
        }
    first_eval = result.evals[0]
    return {
        "name": name,
        "dataset_id": result.logps[0].id,
        # relative to the workspace: the JSON stays true when the workspace folder moves
        "reference_model": os.path.relpath(result.reference_model, ws.root),
        "pairs_in": build.counts.get("rows_in"),
        "train_pairs": build.counts.get("train_rows"),
        "eval_pairs": build.counts.get("eval_rows"),
        **eval_set_shape(ws, first_eval),
        "sft_final_loss": (result.reference.summary.get("final_loss") if result.reference else None),
        "runs": runs,
    }


def run_benchmark(settings: Settings, workspace: Path, quick: bool = False) -> list[dict[str, Any]]:
    """Every dataset's chain on `workspace`; the results' JSON."""
    ws = Workspace.open(workspace)
    results = []
    for name, spec in datasets(settings, quick):
        print(f"== {name}", flush=True)
        started, cpu = time.perf_counter(), time.process_time()
        result = data_to_model(ws, spec, INLINE)
        spent = {
            "chain_seconds": round(time.perf_counter() - started, 1),
            "chain_cpu_seconds": round(time.process_time() - cpu, 1),  # every thread: load-independent
        }
        results.append({**summarise(name, result), **spent})
        for key, run in results[-1]["runs"].items():
            final = run["final"]
            print(
                f"   {LABELS[key]:<12} Δ logps/chosen {final['logps/chosen_delta']:+8.2f}  "
                f"acc {final['rewards/accuracies']:.2f}  eval {run['eval_id']}",
                flush=True,
            )
    return results


class LoadSampler:
    """The 1-minute load average every `every` seconds while a run lasts: the machine is shared, so the
    wall time means little without the load it ran under (the CPU seconds move far less with it)."""

    def __init__(self, every: float = 30.0) -> None:
        self.samples: list[float] = [round(os.getloadavg()[0], 2)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every,), daemon=True)

    def _sample(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(round(os.getloadavg()[0], 2))

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(round(os.getloadavg()[0], 2))


# --- the plot, the table, the page --------------------------------------------------------------------


def _plot_row(row: Any, result: dict[str, Any]) -> None:
    for key, run in result["runs"].items():
        steps = [p["step"] for p in run["curve"]]
        style = {"color": COLOURS[key], "marker": "o", "ms": 3}
        row[0].plot(steps, [p["logps/chosen_minus_ref"] for p in run["curve"]], label=LABELS[key], **style)
        row[1].plot(steps, [p["rewards/accuracies"] for p in run["curve"]], label=LABELS[key], **style)
        row[2].plot(
            steps,
            [p["token_delta/post_edit"] for p in run["curve"]],
            label=f"{LABELS[key]} after edit",
            **style,
        )
        row[2].plot(
            steps,
            [p["token_delta/pre_edit"] for p in run["curve"]],
            color=COLOURS[key],
            linestyle=":",
            alpha=0.7,
        )
    row[0].axhline(0, color="black", linewidth=0.8)
    row[0].set_title(f"{result['name']}: log p(chosen) − reference (eval)")
    row[0].set_ylabel("nats per answer")
    row[1].set_title(f"{result['name']}: reward accuracy (eval)")
    row[1].set_ylim(0, 1.02)
    row[2].axhline(0, color="black", linewidth=0.8)
    row[2].set_title("Δ log p per chosen token: after the edit (solid), before (dotted)", fontsize=10)
    for axis in row:
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 3, figsize=(15, 4.2 * len(results)), squeeze=False)
    for row, result in zip(axes, results, strict=True):
        _plot_row(row, result)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _signed(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| data | method | logps/chosen (ref) | Δ vs ref | reward acc | margin | Δ/token before edit | Δ/token after edit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for key, run in result["runs"].items():
            f = run["final"]
            lines.append(
                f"| {result['name']} | {LABELS[key]} | {f['logps/chosen']:.2f} ({f['ref_logps/chosen']:.2f}) | "
                f"{f['logps/chosen_delta']:+.2f} | {f['rewards/accuracies']:.2f} | {f['rewards/margins']:.3f} | "
                f"{_signed(f['logps/chosen_pre_edit_delta'], '+.3f')} | {_signed(f['logps/chosen_post_edit_delta'], '+.3f')} |"
            )
    return "\n".join(lines)


def bucket_table(results: list[dict[str, Any]]) -> str:
    """Δ logps/chosen and reward accuracy per edit-ratio quartile of the eval set, per method."""
    lines = ["| data | edit-ratio quartile | pairs | " + " | ".join(LABELS.values()) + " |"]
    lines.append("|---|---|---|" + "---|" * len(LABELS))
    for result in results:
        buckets = sorted(next(iter(result["runs"].values()))["buckets"])
        for bucket in buckets:
            cells = []
            for run in result["runs"].values():
                b = run["buckets"].get(bucket, {})
                delta, accuracy = b.get("logps/chosen_delta"), b.get("rewards/accuracies")
                cells.append("n/a" if delta is None else f"{delta:+.1f} nats, acc {accuracy:.2f}")
            n = next(iter(result["runs"].values()))["buckets"][bucket]["n"]
            lines.append(f"| {result['name']} | {bucket} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(results: list[dict[str, Any]]) -> str:
    """One line per dataset from the eval stage's numbers, so the page never says more than they do."""
    lines = []
    for result in results:
        final = {key: run["final"] for key, run in result["runs"].items()}
        dpo = final["dpo"]
        parts = [
            f"- **{result['name']}**: DPO ends at reward accuracy {dpo['rewards/accuracies']:.2f} with "
            f"log p(chosen) {dpo['logps/chosen_delta']:+.1f} nats against the reference "
            f"({_signed(dpo['logps/chosen_pre_edit_delta'], '+.2f')} per token before the first edit, "
            f"{_signed(dpo['logps/chosen_post_edit_delta'], '+.2f')} after); "
            f"{dpo['dpop/penalty_active']:.0%} of its eval pairs end below the reference"
        ]
        for key in ("dpop:5", "dpop:50"):
            if key in final:
                point = final[key]
                relative = point["logps/chosen_delta"] / abs(point["ref_logps/chosen"])
                parts.append(
                    f"{LABELS[key]}: accuracy {point['rewards/accuracies']:.2f}, log p(chosen) "
                    f"{point['logps/chosen_delta']:+.1f} ({relative:+.1%} of the reference level), "
                    f"{point['dpop/penalty_active']:.0%} of pairs below the reference"
                )
        lines.append("; ".join(parts) + ".")
    return "\n".join(lines)


def _shapes(results: list[dict[str, Any]], settings: Settings) -> str:
    described = []
    for r in results:
        kept = (
            f"the {r['pairs_in']:,} pairs the ingest made, curated to edit ratio ≤ {settings.gsm8k_max_edit_ratio}, "
            if r["name"].startswith("GSM8K")
            else f"{r['pairs_in']:,} generated pairs, "
        )
        described.append(
            f"{r['name']}: {kept}{r['train_pairs']} train / {r['eval_pairs']} eval pairs after the build, "
            f"{r['mean_chosen_tokens']} chosen tokens per eval pair, {r['post_edit_token_share']:.0%} of them at "
            "or after the first edit"
        )
    return "; ".join(described)


def _timing(document: dict[str, Any]) -> str:
    """When, on what and under which load the run was timed (older JSONs lack the machine)."""
    cpu, machine = document.get("cpu_seconds"), document.get("machine") or {}
    text = f"{document['seconds']:.0f} s wall time"
    if cpu:
        # both threads busy all along is the best case: the wall time with 2 free cores is at least this
        text += f", {cpu:.0f} CPU-s (all threads; at least {cpu / 2:.0f} s with both cores free)"
    where = f"{machine.get('cpus', 2)} CPU cores shared with other jobs"
    load = machine.get("load_1min")
    if load:
        where += (
            f", 1-minute load average {min(load):.1f}-{max(load):.1f} "
            f"(mean {sum(load) / len(load):.1f} over {len(load)} samples)"
        )
    if machine.get("torch_threads"):
        where += f", {machine['torch_threads']} torch threads"
    date = document.get("date")
    return f"{text}; {date + ', ' if date else ''}{where}"


def write_doc(document: dict[str, Any], path: Path) -> None:
    """docs/failure_mode.md from the benchmark's JSON (`--replot` rewrites it without training)."""
    results, settings = document["results"], Settings(**document["settings"])
    eval_sets = "; ".join(f"{r['name']}: `{next(iter(r['runs'].values()))['eval_set_id']}`" for r in results)
    path.write_text(
        DOC_TEMPLATE.format(
            command=document["command"],
            timing=_timing(document),
            s=settings,
            shapes=_shapes(results, settings),
            table=table(results),
            buckets=bucket_table(results),
            findings=findings(results),
            eval_sets=eval_sets,
            changes=changes(results, settings),
        ),
        encoding="utf-8",
    )


DOC_TEMPLATE = """\
# The failure mode DPOP fixes, reproduced on the product's path

`{command}` ({timing}) runs the data-to-model chain (`flows.chain.data_to_model`, inline executor) once
per dataset, the stages `dpop run` runs: ingest -> tiny model (a BPE tokenizer of {s.vocab_size} tokens
trained on the pairs, a Llama of {s.layers} layers, hidden {s.hidden_size}, {s.heads} heads) -> build
(curation; {s.eval_fraction:.0%} of the prompts to eval, by prompt hash; at most {s.max_length} tokens, prompts
at most {s.max_prompt_length}) -> SFT warm-up ({s.sft_steps} steps of 16 on the train split's chosen answers,
lr {s.sft_learning_rate}: the reference policy) -> reference log-probs -> `TrainStage` (`DPOPTrainer`) with
`losses: dpo, dpop:5, dpop:50`: same seed ({s.seed}) and batches, {s.steps} steps of {s.batch_size} pairs,
constant lr {s.learning_rate}, β = {s.beta}, an evaluation every {s.eval_every} steps -> `PreferenceEvalStage`
per run on the eval split. The promotion gate is off (`gate.enabled: false`): this is a comparison, not a
release. The three runs of a dataset are evaluated on one eval set ({eval_sets}). Data: {shapes}.

![failure mode](failure_mode.png)

{table}

Numbers from the eval stage (`<ws>/evals/<eval id>/metrics.parquet`; `dpop eval` prints the same table).
*logps/chosen*: summed log-probability of the chosen answer (nats), the reference's in brackets.
*Δ/token before/after edit*: change of the per-token log-probability of chosen tokens against the
reference, before and from the first token where chosen and rejected differ (the paper's token view),
pooled over the tokens. The curves are the trainer's own evaluations of the same split (`metrics.jsonl`;
step 0 is the reference, `eval_on_start`); at the last step they equal the eval stage's numbers.

Per edit-ratio quartile of the eval set (Δ logps/chosen against the reference, reward accuracy):

{buckets}

What the numbers say (one seed, small eval sets: read differences of a few points of accuracy as
noise):

{findings}

The failure mode is DPO's: its reward margin and accuracy rise while the chosen answer becomes *less*
likely than under the reference. DPOP's penalty λ·max(0, −(log πθ − log πref)(y_w)), inside the sigmoid,
holds the chosen answer near the reference level. Reward accuracy at step 0 is 0 by TRL's definition (a
pair counts only when its margin is strictly positive, and every margin starts at 0).
{changes}"""

CHANGES = """
## Against the previous numbers

Until 2026-11-30 this page and the README showed the numbers of a standalone script (its own tokenizer,
log-prob function, reference pass and training loop; commit cd623b4), with the same model size, SFT
steps, preference steps, batch size, learning rate, β and seed:

| data | Δ vs ref, standalone (now), DPO / DPOP λ=5 / DPOP λ=50 | reward acc, standalone (now) |
|---|---|---|
{versus}

The product's path gives the same picture with other sizes: {sizes}. The loss is the same function
(`dpop.losses`); what differs is what the runs see:

- the split is the build's, by prompt hash, so other pairs are in the eval sets (before: the last 64
  generated pairs; every k-th GSM8K question);
{gsm8k}- the tokenizer is the tiny-model stage's (trained on the ingested pairs), so token counts differ;
- the batches come from the trainer's length-grouped sampler (`group_by_length`, the product's default)
  instead of a random permutation{epoch}.

With one seed and {steps} steps DPO's drop is not monotone ({curves}), so its size moves with the batches
and the eval pairs; its sign, and DPOP keeping the chosen answer near the reference, held in both
implementations.
"""


# The standalone script's last numbers (docs/failure_mode.md at commit cd623b4): Δ logps/chosen and
# reward accuracy per loss, for the comparison the page keeps.
STANDALONE = {
    "synthetic math": {"dpo": (-52.2, 0.61), "dpop:5": (0.9, 0.59), "dpop:50": (1.6, 0.53)},
    "GSM8K wrong-vs-right": {"dpo": (-44.8, 0.82), "dpop:5": (-3.0, 0.88), "dpop:50": (-0.7, 0.93)},
}


def _versus(results: list[dict[str, Any]]) -> tuple[str, str]:
    """The table of standalone vs product numbers, and the sentence on DPO's and DPOP's sizes."""
    rows, sizes = [], []
    for r in results:
        before = STANDALONE.get(r["name"])
        if before is None:
            continue
        now = {key: run["final"] for key, run in r["runs"].items()}
        pairs = [(before[k], now[k]) for k in LABELS if k in now and k in before]
        delta = " / ".join(f"{b[0]:+.1f} ({n['logps/chosen_delta']:+.1f})" for b, n in pairs)
        accuracy = " / ".join(f"{b[1]:.2f} ({n['rewards/accuracies']:.2f})" for b, n in pairs)
        rows.append(f"| {r['name']} | {delta} | {accuracy} |")
        dpo_now = now["dpo"]["logps/chosen_delta"]
        worst = max(abs(now[k]["logps/chosen_delta"] / now[k]["ref_logps/chosen"]) for k in now if k != "dpo")
        sizes.append(
            f"on {r['name']} DPO's drop is {'smaller' if dpo_now > before['dpo'][0] else 'larger'} "
            f"({dpo_now:+.1f} nats against {before['dpo'][0]:+.1f}) and DPOP ends within {worst:.1%} of the "
            "reference level"
        )
    return "\n".join(rows), "; ".join(sizes)


def changes(results: list[dict[str, Any]], settings: Settings) -> str:
    """The comparison with the standalone script's numbers; the curve and batch facts from the JSON."""
    curves = "; ".join(
        f"{r['name']}: "
        + ", ".join(f"{p['logps/chosen_minus_ref']:+.1f}" for p in r["runs"]["dpo"]["curve"][1:])
        + f" nats at steps {r['runs']['dpo']['curve'][1]['step']} to {r['runs']['dpo']['curve'][-1]['step']}"
        for r in results
        if "dpo" in r["runs"]
    )
    epoch = ""
    first = results[0]["train_pairs"] if results else 0
    if first % settings.batch_size:
        batches, rest = -(-first // settings.batch_size), first % settings.batch_size
        epoch = (
            f", and an epoch of the {first} {results[0]['name']} train pairs is {batches} batches, the last "
            f"of {rest} pair{'s' if rest > 1 else ''}"
        )
    gsm8k = ""
    for r in results:
        if r["name"].startswith("GSM8K"):
            gsm8k = (
                f"- the GSM8K pairs are those the curation keeps at edit ratio ≤ {settings.gsm8k_max_edit_ratio} "
                f"({r['train_pairs'] + r['eval_pairs']} after the build), the same character-level ratio as "
                "before, where the script took the 306 lowest;\n"
            )
    versus, sizes = _versus(results)
    return CHANGES.format(
        epoch=epoch,
        steps=settings.steps,
        curves=f"DPO's curves: {curves}",
        gsm8k=gsm8k,
        versus=versus,
        sizes=sizes,
    )


# --- the command ----------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    settings = QUICK if args.quick else Settings()
    changes = {"steps": args.steps, "learning_rate": args.lr}
    return dataclasses.replace(settings, **{k: v for k, v in changes.items() if v})


def _command(args: argparse.Namespace) -> str:
    flags = [("--quick", args.quick), (f"--steps {args.steps}", args.steps), (f"--lr {args.lr}", args.lr)]
    return " ".join(["python benchmarks/failure_mode.py", *(flag for flag, on in flags if on)])


def _replot(out: Path) -> None:
    saved = json.loads(out.read_text(encoding="utf-8"))
    plot(saved["results"], PLOT)
    write_doc(saved, DOC)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="synthetic pairs only, 20 steps (a smoke run)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="learning rate of the preference runs")
    parser.add_argument(
        "--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)), help="torch threads"
    )
    parser.add_argument("--workspace", type=Path, default=ROOT / "benchmarks" / "results" / "failure_mode_ws")
    parser.add_argument("--fresh", action="store_true", help="start from an empty workspace (timing)")
    parser.add_argument(
        "--replot", action="store_true", help="redraw the docs from the last JSON, no training"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/failure_mode.{png,md}")
    args = parser.parse_args(argv)
    if args.replot:
        _replot(OUT)
        return
    import torch

    torch.set_num_threads(args.threads)
    if args.fresh:
        shutil.rmtree(args.workspace, ignore_errors=True)
    settings = _settings(args)
    started, cpu = time.perf_counter(), time.process_time()
    with LoadSampler() as load:
        results = run_benchmark(settings, args.workspace, quick=args.quick)
    document = {
        "settings": asdict(settings),
        "command": _command(args),
        "date": datetime.now().date().isoformat(),
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "load_1min": load.samples},
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "results": results,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\n{table(results)}\n\n{bucket_table(results)}\n\n{document['seconds']:.0f} s; JSON in {OUT}")
    if not args.no_docs:
        plot(results, PLOT)
        write_doc(document, DOC)


if __name__ == "__main__":
    main()
