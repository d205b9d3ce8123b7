"""Supervised warm-up on the chosen answers: the reference policy for DPOP.

DPO and DPOP measure the policy against a reference, and the Smaug paper (like the DPO paper) starts
from a model already fine-tuned on the preferred answers: a reference that gives the chosen answers a
sensible likelihood, so a fall of `logps/chosen` below it means something. A freshly initialised tiny
model has no such level, so the demo first runs a short causal-LM pass on (prompt, chosen) with the
loss on response tokens only.

The examples are token ids: from a dataset's train shards (`examples_from_shards`, what the trainer
will see, eval split untouched) or from raw pairs tokenised with the chat template
(`examples_from_pairs`, the same rule the tokenise stage uses). The result is a `save_pretrained`
folder in `<ws>/models/<name>/`, cached: the same base model, examples and settings reuse it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dpop.model_io import load_causal_lm, model_id
from pipeline.atomic import atomic_dir
from pipeline.catalog import Catalog
from pipeline.identity import stable_hash
from pipeline.shards import open_split
from pipeline.workspace import Workspace

SFT_RECORD = "sft.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


@dataclass(frozen=True)
class SFTConfig:
    steps: int = 80
    learning_rate: float = 2e-3
    batch_size: int = 16
    max_length: int = 320  # prompt + response tokens; longer examples are cut from the right
    warmup_steps: int = 5
    weight_decay: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Example:
    prompt_ids: list[int]
    response_ids: list[int]  # ends with EOS, as in the shards


@dataclass
class SFTResult:
    model_dir: Path
    model_id: str
    reused: bool
    losses: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def examples_from_shards(workspace: Workspace, dataset_id: str, split: str = "train") -> list[Example]:
    table = open_split(workspace, dataset_id, split)
    prompts = table.column("prompt_ids").to_pylist()
    chosen = table.column("chosen_ids").to_pylist()
    return [Example(list(p), list(c)) for p, c in zip(prompts, chosen, strict=True)]


def examples_from_pairs(pairs: Iterable[Mapping[str, Any]], tokenizer: Any) -> list[Example]:
    """(prompt, chosen) rows -> token ids: chat template with generation prompt, then chosen + EOS.

    A prompt is a string (one user message) or a list of {role, content} messages."""
    examples = []
    for row_number, pair in enumerate(pairs):
        prompt = pair.get("prompt")
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and prompt:
            messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        else:
            raise ValueError(f"pair {row_number}: field 'prompt' must be a string or a list of messages")
        if not isinstance(pair.get("chosen"), str):
            raise ValueError(f"pair {row_number}: field 'chosen' must be a string")
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt_ids, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(pair["chosen"], add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        examples.append(Example(list(prompt_ids), list(response_ids)))
    return examples


def _examples_sha256(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.prompt_ids, example.response_ids]).encode())
    return digest.hexdigest()


def _batch(examples: Sequence[Example], max_length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (-100 on prompt and padding)."""
    rows, labels = [], []
    for example in examples:
        ids = (example.prompt_ids + example.response_ids)[:max_length]
        label = ([-100] * len(example.prompt_ids) + example.response_ids)[:max_length]
        rows.append(ids)
        labels.append(label)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    label_tensor = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, label) in enumerate(zip(rows, labels, strict=True)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        label_tensor[i, : len(label)] = torch.tensor(label)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": label_tensor}


def _learning_rate(step: int, config: SFTConfig) -> float:
    """Linear warm-up then cosine decay to a tenth: short runs still end gently."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def warm_up(
    workspace: Workspace,
    base_model: str | os.PathLike[str],
    examples: Sequence[Example],
    config: SFTConfig | None = None,
    name: str | None = None,
    parents: Mapping[str, str] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> SFTResult:
    """Fine-tune `base_model` on the examples' responses; save to `<ws>/models/<name>/`, or reuse it.

    `name` defaults to `sft-<key>` where the key hashes the base model's files, the examples and the
    config, so a changed input gets a new folder. `parents` adds catalog edges (e.g. the dataset the
    examples came from, `{dataset_id: "sft_on"}`). `on_step(step, total, loss)` reports progress."""
    config = config or SFTConfig()
    if not examples:
        raise ValueError("SFT warm-up needs at least one example")
    base_model = Path(base_model)
    if not base_model.is_dir():
        raise FileNotFoundError(f"base model folder {base_model} does not exist")
    base_id = model_id(base_model)
    key = stable_hash({"base": base_id, "examples": _examples_sha256(examples), "config": asdict(config)})
    out = workspace.models_dir / (name or f"sft-{key}")
    record_path = out / SFT_RECORD
    if record_path.is_file() and json.loads(record_path.read_text()).get("key") == key:
        record = json.loads(record_path.read_text())
        return SFTResult(out, model_id(out), reused=True, losses=record.get("losses", []))

    torch.manual_seed(config.seed)
    model = load_causal_lm(base_model, dtype=torch.float32)  # safetensors only: never unpickles
    model.train()
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    order: list[int] = []
    losses = []
    for step in range(config.steps):
        if len(order) < config.batch_size:  # reshuffle each epoch
            order += torch.randperm(len(examples), generator=generator).tolist()
        indices, order = order[: config.batch_size], order[config.batch_size :]
        batch = _batch([examples[i] for i in indices], config.max_length, pad_id)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 6))
        if on_step:
            on_step(step + 1, config.steps, losses[-1])

    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        for file_name in TOKENIZER_FILES:  # the folder loads as a model and a tokenizer, like a hub repo
            if (base_model / file_name).is_file():
                shutil.copy2(base_model / file_name, tmp / file_name)
        record = {
            "key": key,
            "base_model": str(base_model),
            "base_model_id": base_id,
            "config": asdict(config),
            "examples": len(examples),
            "losses": losses,
        }
        (tmp / SFT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))
    out_id = model_id(out)
    catalog = Catalog(workspace)
    base_known = catalog.get(base_id) is not None
    with catalog.batch() as batch:
        if not base_known:
            batch.record_artifact(
                base_id, "model", uri=base_model.resolve().as_uri(), meta={"name": base_model.name}
            )
        batch.record_artifact(
            out_id,
            "model",
            uri=out.as_uri(),
            meta={"name": out.name, "made_by": "sft", "sft": record},
            parents={base_id: "sft_from", **(parents or {})},
        )
    return SFTResult(out, out_id, reused=False, losses=losses)
