"""The report's words, every one computed from the runs: what rose, what fell and by how much, and a
warning wherever the numbers cannot carry a conclusion (accuracy at chance, a random tiny base model,
a penalty active on most pairs, a loss spike, prompts cut at `max_prompt_length`).

Each function returns `Sentence`s (plain text and a level); the page escapes and places them. Nothing
here asserts a result the numbers do not show: with no DPO run there is no DPO sentence, and where DPO
kept log p(chosen) at the reference the text says that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.report.compare import RunSummary
from pipeline.report.data import DatasetData, RunData

SPIKE_FACTOR = 2.0  # a training loss above this many times its first value is a spike
MOST = 0.5  # "most pairs"


@dataclass(frozen=True)
class Sentence:
    text: str
    level: str = "finding"  # finding | warning


def _nats(value: float) -> str:
    return f"{abs(value):.3g} nats"


def _signed(value: float, digits: int = 3) -> str:
    return f"{value:+.{digits}g}"


def _versus_reference(summary: RunSummary) -> str:
    delta = summary.chosen_delta
    assert delta is not None
    if delta < 0:
        return f"fell {_nats(delta)} below the reference"
    if delta > 0:
        return f"rose {_nats(delta)} above the reference"
    return "stayed at the reference"


def _per_token(summary: RunSummary) -> str:
    parts = []
    if summary.pre_edit_delta is not None:
        parts.append(f"{_signed(summary.pre_edit_delta)} per token before the first edit")
    if summary.post_edit_delta is not None:
        after = "from it on" if parts else "per token from the first edit on"
        parts.append(f"{_signed(summary.post_edit_delta)} {after}")
    return f"; {', '.join(parts)}" if parts else ""


def headline(summaries: Sequence[RunSummary]) -> list[Sentence]:
    """The first section: where each run left log p(chosen) against the reference, then what the pair
    of DPO and DPOP runs shows (only when there is such a pair)."""
    out = []
    for s in summaries:
        if s.chosen_delta is None:
            out.append(Sentence(f"{s.label}: no evaluation of log p(chosen) logged yet.", "warning"))
            continue
        pairs = f" over {s.eval_pairs:,} eval pairs" if s.eval_pairs else " on the eval pairs"
        share = (
            f"; it is below the reference on {s.below_reference:.0%} of them"
            if s.below_reference is not None
            else ""
        )
        out.append(
            Sentence(
                f"{s.label}: log p(chosen) {_versus_reference(s)} (mean per answer{pairs}{_per_token(s)}){share}."
            )
        )
    out += _dpo_versus_dpop(summaries)
    return out


def _dpo_versus_dpop(summaries: Sequence[RunSummary]) -> list[Sentence]:
    dpo = [s for s in summaries if s.is_dpo and s.chosen_delta is not None]
    dpop = [s for s in summaries if s.penalty_lambda > 0 and s.chosen_delta is not None]
    out = []
    for a in dpo:
        for b in dpop:
            if a.chosen_delta < 0 <= b.chosen_delta:
                text = (
                    f"{a.label} lowered the likelihood of the preferred answers and {b.label} did not "
                    f"({_signed(a.chosen_delta)} vs {_signed(b.chosen_delta)} nats): the failure mode "
                    "DPOP is meant to fix shows on these pairs."
                )
            elif a.chosen_delta < 0 and b.chosen_delta < 0:
                relation = "less" if b.chosen_delta > a.chosen_delta else "more"
                text = (
                    f"Both {a.label} and {b.label} lowered log p(chosen) below the reference; {b.label} "
                    f"by {relation} ({_signed(b.chosen_delta)} vs {_signed(a.chosen_delta)} nats)."
                )
            elif a.chosen_delta >= 0 and b.chosen_delta >= 0:
                text = (
                    f"Neither {a.label} nor {b.label} lowered log p(chosen) below the reference "
                    f"({_signed(a.chosen_delta)} and {_signed(b.chosen_delta)} nats): on these pairs and "
                    "steps DPO shows no failure for DPOP to fix."
                )
            else:
                text = (
                    f"{b.label} lowered log p(chosen) below the reference and {a.label} did not "
                    f"({_signed(b.chosen_delta)} vs {_signed(a.chosen_delta)} nats)."
                )
            out.append(Sentence(text))
    return out


def _trajectory(summary: RunSummary) -> str:
    """The change over the trainer's evaluations (first to last logged), for the metrics logged."""
    names = {
        "rewards/accuracies": ("reward accuracy", "{:.2f}"),
        "rewards/margins": ("reward margin", "{:.3g}"),
        "chosen_delta": ("log p(chosen) − reference", "{:+.3g}"),
        "logps/chosen_pre_edit": ("log p per chosen token before the first edit", "{:.3g}"),
        "logps/chosen_post_edit": ("after it", "{:.3g}"),
    }
    parts = []
    for key, (name, form) in names.items():
        t = summary.over_steps.get(key)
        if t is None or t.first_step == t.last_step:
            continue
        verb = "rose" if t.last > t.first else "fell" if t.last < t.first else "stayed"
        parts.append(f"{name} {verb} from {form.format(t.first)} to {form.format(t.last)}")
    if not parts:
        return ""
    steps = next(iter(t for t in summary.over_steps.values()))
    return f"Over the trainer's evaluations (steps {steps.first_step}–{steps.last_step}): {'; '.join(parts)}."


def run_story(summary: RunSummary) -> list[Sentence]:
    """What rose and what fell in one run, with the numbers."""
    out = []
    final = []
    if summary.accuracy is not None:
        interval = (
            f" (95% interval {summary.accuracy_interval[0]:.2f}–{summary.accuracy_interval[1]:.2f})"
            if summary.accuracy_interval
            else ""
        )
        final.append(f"reward accuracy {summary.accuracy:.2f}{interval}")
    if summary.margin is not None:
        final.append(f"reward margin {summary.margin:.3g}")
    if summary.rejected_delta is not None:
        final.append(f"log p(rejected) − reference {_signed(summary.rejected_delta)} nats")
    if final:
        out.append(Sentence(f"{summary.label}, on the eval pairs ({summary.source}): {', '.join(final)}."))
    if trajectory := _trajectory(summary):
        out.append(Sentence(f"{summary.label}: {trajectory}"))
    if summary.loss_first is not None and summary.loss_last is not None:
        out.append(
            Sentence(
                f"{summary.label}: the training loss went from {summary.loss_first:.3g} to "
                f"{summary.loss_last:.3g} in {summary.steps or '?'} steps."
            )
        )
    return out


def run_warnings(summary: RunSummary) -> list[Sentence]:
    out = []
    if summary.at_chance and summary.accuracy is not None and summary.accuracy_interval is not None:
        low, high = summary.accuracy_interval
        out.append(
            Sentence(
                f"{summary.label}: reward accuracy {summary.accuracy:.2f} on {summary.eval_pairs:,} eval pairs is "
                f"at chance: its 95% interval ({low:.2f}–{high:.2f}) includes 0.5. The run has not shown "
                "that it ranks chosen over rejected.",
                "warning",
            )
        )
    if (
        summary.loss_max is not None
        and summary.loss_first
        and summary.loss_max > SPIKE_FACTOR * summary.loss_first
        and summary.loss_max_step is not None
    ):
        out.append(
            Sentence(
                f"{summary.label}: the training loss spiked to {summary.loss_max:.3g} at step "
                f"{summary.loss_max_step} ({summary.loss_max / summary.loss_first:.1f}× its first value, "
                f"{summary.loss_first:.3g}); it ended at {summary.loss_last:.3g}.",
                "warning",
            )
        )
    if summary.penalty_lambda > 0 and summary.below_reference is not None and summary.below_reference > MOST:
        out.append(
            Sentence(
                f"{summary.label}: the DPOP penalty is active on {summary.below_reference:.0%} of the eval pairs "
                "(their log p(chosen) is below the reference): λ·max(0, −r_w) dominates the loss there, "
                "so the reward margin is traded for keeping the chosen answers likely.",
                "warning",
            )
        )
    return out


def base_warnings(runs: Sequence[RunData]) -> list[Sentence]:
    """The base model is the demo's random tiny Llama (with or without an SFT warm-up)."""
    seen, out = set(), []
    for run in runs:
        base = run.base
        if base is None or not base.tiny or base.id in seen:
            continue
        seen.add(base.id)
        size = f"{base.parameters:,} parameters, " if base.parameters else ""
        warm = (
            f", warmed up by {base.sft_steps} SFT steps on these pairs"
            + (f" to a loss of {base.sft_final_loss:.3g}" if base.sft_final_loss is not None else "")
            if base.sft_steps
            else ", not trained at all"
        )
        out.append(
            Sentence(
                f"The base model is the demo's tiny Llama ({size}random initial weights{warm}): it is "
                "not a language model. The curves show how each loss moves log-probabilities on these "
                "pairs, not what it would do to a real model (`dpop run --model PATH`).",
                "warning",
            )
        )
    return out


def dataset_warnings(dataset: DatasetData) -> list[Sentence]:
    out = []
    cut, total = dataset.prompts_at_limit, len(dataset.token_lengths.get("prompt", ()))
    if cut and total:
        out.append(
            Sentence(
                f"{cut:,} of {total:,} prompts ({cut / total:.1%}) are exactly max_prompt_length = "
                f"{dataset.max_prompt_length} tokens long: the build cut them to their last "
                f"{dataset.max_prompt_length} tokens (the spike at the right of the prompt-length "
                "histogram). Their start is not in the training data; raise "
                "curation.tokenize.max_prompt_length if it matters.",
                "warning",
            )
        )
    return out


def findings(
    summaries: Sequence[RunSummary], runs: Sequence[RunData], dataset: DatasetData
) -> tuple[list[Sentence], list[Sentence]]:
    """(the headline sentences, then the warnings) for the first section of the page."""
    warnings = [w for s in summaries for w in run_warnings(s)]
    warnings += base_warnings(runs) + dataset_warnings(dataset)
    return headline(summaries), warnings
