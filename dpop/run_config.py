"""`dpop.yaml`: one file configuring `dpop run` (data, tiny model, SFT warm-up, curation, training).

The commented default below is both what `dpop init` writes and the defaults `dpop run` uses, so the
two never drift apart. Each section is validated by its own stage's loader (curation by
`pipeline.curate.config`, training by `dpop.config.TrainConfig`), whose errors name the key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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

# Preference training (dpop.config.TrainConfig; any transformers.TrainingArguments field can go
# under training_args). loss: dpop | dpo | ipo | robust | hinge; penalty_lambda 0 makes DPOP plain DPO.
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
"""

SECTIONS = ("seed", "synth", "tiny_model", "sft", "curation", "training")


@dataclass(frozen=True)
class RunSettings:
    seed: int
    synth_n: int
    tiny_model: dict[str, int]
    sft: dict[str, Any]
    curation: Any  # pipeline.curate.config.CurationConfig
    training: dict[str, Any]
    sft_explicit: bool = False  # sft.steps set by the user (file or flag), not the demo default


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def load_run_config(
    path: str | os.PathLike[str] | None = None,
    n: int | None = None,
    steps: int | None = None,
    sft_steps: int | None = None,
    seed: int | None = None,
) -> RunSettings:
    """Defaults, then the file at `path` (section by section), then the command-line overrides."""
    from dpop.config import TrainConfig
    from dpop.sft import SFTConfig
    from pipeline.curate.config import load_curation_config

    values = yaml.safe_load(DEFAULT_CONFIG_YAML)
    sft_explicit = sft_steps is not None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist (write one with `dpop init`)")
        try:
            user = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(user, dict):
            raise ValueError(f"{path}: expected a mapping with sections {', '.join(SECTIONS)}")
        unknown = sorted(set(user) - set(SECTIONS))
        if unknown:
            raise ValueError(f"{path}: unknown section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
        # Sections merge key by key: a user file may hold only the keys it changes.
        values = _merge(values, user)
        sft_explicit = sft_explicit or "steps" in (user.get("sft") or {})
    if seed is not None:
        values["seed"] = seed
        values["training"]["seed"] = seed
    if n is not None:
        values["synth"]["n"] = n
    if steps is not None:
        values["training"]["max_steps"] = steps
        # A short run still logs and evaluates a few times.
        training = values["training"]
        training["eval_steps"] = max(1, min(training.get("eval_steps") or steps, steps // 2 or 1))
        training["logging_steps"] = max(1, min(training.get("logging_steps") or 1, steps // 2 or 1))
    if sft_steps is not None:
        values["sft"]["steps"] = sft_steps
    sft_fields = {f.name for f in dataclasses.fields(SFTConfig)}
    for key in values["sft"]:
        if key not in sft_fields:
            raise ValueError(f"config key 'sft.{key}': unknown (known: {', '.join(sorted(sft_fields))})")
    tiny_keys = {"vocab_size", "layers", "hidden_size", "heads"}
    for key in values["tiny_model"]:
        if key not in tiny_keys:
            raise ValueError(
                f"config key 'tiny_model.{key}': unknown (known: {', '.join(sorted(tiny_keys))})"
            )
    TrainConfig.from_dict(values["training"], source="config section 'training'")  # fail before any work
    return RunSettings(
        seed=int(values["seed"]),
        synth_n=int(values["synth"]["n"]),
        tiny_model={k: int(v) for k, v in values["tiny_model"].items()},
        sft={**values["sft"], "seed": int(values["seed"])},
        curation=load_curation_config(values["curation"]),
        training=values["training"],
        sft_explicit=sft_explicit,
    )
