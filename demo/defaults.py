"""The demo's `dpop.yaml`: one file configuring `dpop run` (data, tiny model, SFT warm-up, curation,
training).

The commented default below is both what `dpop init` writes and the defaults `dpop run` uses, so the
two never drift apart. The file is read by the one config loader (`pipeline.config`) into `RunConfig`,
whose sections are the stages' own configs (`CurationConfig`, `TrainConfig`, `SFTSettings`), so a bad
key anywhere names its full path: `dpop.yaml: config key 'curation.tokenize.max_length' must be …`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, load, parse_yaml, read_yaml, setting, validate_fields

DEFAULT_CONFIG_YAML = """\
# dpop.yaml: configuration of `dpop run` (written by `dpop init`; every key is optional).
# Command-line flags (--n, --steps, --sft-steps, --seed) override the values here.

# Seed for the synthetic data, the tiny model, the SFT warm-up and training.
seed: 0

# Built-in data when `dpop run` gets no --input: MetaMath-style maths word problems whose rejected
# answer has one intermediate result wrong and the same final answer (low edit distance pairs).
synth:
  n: 600                  # number of pairs

# The tiny Llama built when no --model is given (its BPE tokenizer is trained on the input texts).
tiny_model:
  vocab_size: 768
  layers: 2
  hidden_size: 128
  heads: 4

# Supervised warm-up on the chosen answers of the train split: the result is the reference policy
# (and the starting point) of preference training. steps: 0 uses the base model as the reference.
sft:
  steps: 120
  learning_rate: 0.002
  batch_size: 16
  max_length: 384
  warmup_steps: 5

# Curation (pipeline.curate): filters, train/eval split, tokenisation, shards.
curation:
  filters:
    empty_response: true        # drop pairs with an empty chosen or rejected answer
    identical_responses: true   # drop pairs whose answers are the same text
    duplicate_pair: true        # keep one copy of a repeated (prompt, chosen, rejected)
    edit_ratio: {min: null, max: null}   # bounds on char edits / longer answer (0 = identical)
    max_chars: {prompt: 4000, response: 4000}
    max_pairs_per_prompt: null
  split:
    eval_fraction: 0.1          # by prompt hash: one prompt never lands in both splits
  tokenize:
    max_length: 384             # prompt + response tokens
    max_prompt_length: 192
  shards:
    rows_per_shard: 50000

# Losses compared from the same reference, seed and batch order: one training run per item (dpop:50 is
# DPOP with λ = 50, dpo plain DPO; also ipo, robust, hinge), reported side by side. One item trains one
# run. Left out, with training.loss or training.penalty_lambda set below, that one loss is trained.
# --losses on the command line overrides it.
losses: [dpop:50, dpo]

# Preference training (dpop.config.TrainConfig, a transformers.TrainingArguments: any of its fields is
# a key here too). loss: dpop | dpo | ipo | robust | hinge; penalty_lambda 0 makes DPOP plain DPO.
training:
  loss: dpop
  beta: 0.1
  penalty_lambda: 50.0
  learning_rate: 0.0002
  max_steps: 80
  per_device_train_batch_size: 16
  per_device_eval_batch_size: 32
  warmup_steps: 5
  logging_steps: 5
  eval_steps: 20
  save_steps: 1000
  lora_r: 0                     # > 0 trains a LoRA adapter instead of the full model
  bf16: false                   # true on GPUs that support it
  seed: 0

# The promotion gate (docs/gate.md): after training, the new model(s) and the current champion are
# evaluated on the same eval sets; a candidate is promoted only if it passes the floors and no metric of
# max_regression is worse than the champion's by more than its tolerance. A refusal keeps the champion.
gate:
  enabled: true
  alias: champion
  floors: {rewards/accuracies: 0.5, logps/chosen_delta: -1.0}  # metric: minimum (Δ log p(chosen) in nats)
  max_regression: {rewards/accuracies: 0.02, exact_match: 0.05}   # metric: allowed drop vs champion
  rank_by: [exact_match, rewards/accuracies, logps/chosen_delta]  # best of several passing candidates
  generation:                   # greedy generation + exact match on verifiable prompts ("#### N")
    enabled: true
    from_eval_split: true       # the eval split's prompts, answers taken from the chosen answers
    eval_file: null             # also a fixed question/answer file, e.g. GSM8K's test.jsonl
    max_prompts: 64
    max_new_tokens: 256
"""

SECTIONS = ("seed", "synth", "tiny_model", "sft", "curation", "losses", "training", "gate")


@dataclass(frozen=True)
class Synth:
    n: int = setting(600, ge=1, le=10_000_000, help="synthetic pairs when no --input is given")

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class TinyModel:
    vocab_size: int = setting(
        768, ge=261, le=1_000_000, help="BPE vocabulary (256 bytes + 5 specials at least)"
    )
    layers: int = setting(2, ge=1, le=64)
    hidden_size: int = setting(128, ge=8, le=16_384)
    heads: int = setting(4, ge=1, le=256)

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.hidden_size % self.heads:
            raise ConfigError(
                f"({self.hidden_size}) is not a multiple of heads ({self.heads})", key="hidden_size"
            )


@dataclass(frozen=True)
class RunSettings:
    seed: int
    synth_n: int
    tiny_model: dict[str, int]
    sft: dict[str, Any]
    curation: Any  # pipeline.curate.config.CurationConfig
    training: dict[str, Any]
    sft_explicit: bool = False  # sft.steps set by the user (file or flag), not the demo default
    losses: tuple[str, ...] = ("dpop:50", "dpo")  # one run per loss (see `compared_losses`)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


@functools.cache
def run_config_class() -> type:
    """`RunConfig`: the whole file as one dataclass for the loader. Built on first use, because its
    `training` section (TrainConfig) imports transformers, which `dpop init` does not need."""
    from dpop.config import TrainConfig
    from dpop.sft import SFTSettings
    from pipeline.curate.config import CurationConfig
    from pipeline.gate import GateConfig

    run_config = dataclasses.make_dataclass(
        "RunConfig",
        [
            ("seed", int, setting(0, ge=0, le=2**32 - 1, help="data, tiny model, SFT and training seed")),
            ("synth", Synth, field(default_factory=Synth)),
            ("tiny_model", TinyModel, field(default_factory=TinyModel)),
            ("sft", SFTSettings, field(default_factory=SFTSettings)),
            ("curation", CurationConfig, field(default_factory=CurationConfig)),
            (
                "losses",
                list[str],
                setting(
                    default_factory=lambda: ["dpop:50", "dpo"],
                    nonempty=True,
                    help="one run per loss, e.g. dpop:50, dpo",
                ),
            ),
            ("training", TrainConfig, field(default_factory=TrainConfig)),
            ("gate", GateConfig, field(default_factory=GateConfig)),
        ],
        frozen=True,
    )
    run_config.__module__ = __name__
    return run_config


def load_run_config(
    path: str | os.PathLike[str] | None = None,
    n: int | None = None,
    steps: int | None = None,
    sft_steps: int | None = None,
    seed: int | None = None,
) -> RunSettings:
    """Defaults, then the file at `path` (key by key), then the command-line overrides. The file is
    validated first (errors name it and the key's path), then again with the flags applied."""
    from pipeline.curate.config import resolve_eval_file

    values = parse_yaml(DEFAULT_CONFIG_YAML, "dpop.yaml defaults")
    source, folder, user = "dpop.yaml defaults", Path.cwd(), {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist (write one with `dpop init`)")
        user = read_yaml(path)
        if not isinstance(user, dict):
            raise ConfigError(f"expected a mapping with sections {', '.join(SECTIONS)}", source=str(path))
        # Sections merge key by key: a file holds only the keys it changes (an empty section: none).
        values = _merge(values, {key: value for key, value in user.items() if value is not None})
        source, folder = str(path), path.resolve().parent
    config = load(run_config_class(), values, source=source)
    if any(flag is not None for flag in (n, steps, sft_steps, seed)):
        _apply_flags(values, n=n, steps=steps, sft_steps=sft_steps, seed=seed)
        config = load(run_config_class(), values, source=f"{source} with the command-line flags")
    user_sft = user.get("sft")
    return RunSettings(
        seed=config.seed,
        synth_n=config.synth.n,
        tiny_model=dataclasses.asdict(config.tiny_model),
        sft={**dataclasses.asdict(config.sft), "seed": config.seed},
        curation=resolve_eval_file(config.curation, folder),
        training=config.training.as_dict(),
        sft_explicit=sft_steps is not None or (isinstance(user_sft, dict) and "steps" in user_sft),
        losses=tuple(compared_losses(user, config.losses) or ()),
    )


def compared_losses(user: Any, losses: Any) -> list[str] | None:
    """The losses `dpop run` trains: the file's `losses`, else the defaults' (DPOP λ=50 against DPO),
    unless the file chooses one loss in its training section (training.loss or .penalty_lambda) without
    a `losses` list: then None, one run of that loss. `--losses` overrides all of it."""
    user = user if isinstance(user, dict) else {}
    training = user.get("training") if isinstance(user.get("training"), dict) else {}
    if user.get("losses") is None and {"loss", "penalty_lambda"} & set(training):
        return None
    if isinstance(losses, str):  # "dpop:50,dpo", as --losses takes it
        losses = losses.split(",")
    return [str(loss).strip() for loss in losses or [] if str(loss).strip()] or None


def _apply_flags(values: dict[str, Any], n: Any, steps: Any, sft_steps: Any, seed: Any) -> None:
    """Command-line flags over the document, which has passed validation (its sections are mappings)."""
    if seed is not None:
        values["seed"] = seed
        values["training"]["seed"] = seed
    if n is not None:
        values["synth"]["n"] = n
    if steps is not None:
        training = values["training"]
        training["max_steps"] = steps
        # A short run still logs and evaluates a few times.
        training["eval_steps"] = max(1, min(training.get("eval_steps") or steps, steps // 2 or 1))
        training["logging_steps"] = max(1, min(training.get("logging_steps") or 1, steps // 2 or 1))
    if sft_steps is not None:
        values["sft"]["steps"] = sft_steps
