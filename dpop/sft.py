"""Supervised warm-up on the chosen answers: the reference policy for DPOP.

DPO and DPOP measure the policy against a reference, and the Smaug paper (like the DPO paper) starts
from a model already fine-tuned on the preferred answers: a reference that gives the chosen answers a
sensible likelihood, so a fall of `logps/chosen` below it means something. A freshly initialised tiny
model has no such level, so the demo first runs a short causal-LM pass on (prompt, chosen) with the
loss on response tokens only (labels -100 on prompt and padding).

The pass is a stock `transformers.Trainer` (its AdamW, its cosine-to-a-tenth schedule with linear
warm-up, gradient clipping, device placement); `SFTConfig` holds the few settings the demo exposes,
validated by the one config loader, and `SFTConfig.training_arguments()` turns them into
TrainingArguments.

The examples are token ids: from a dataset's train shards (`examples_from_shards`, what the trainer
will see, eval split untouched) or from raw pairs tokenised with the chat template
(`examples_from_pairs`, the same rule the tokenise stage uses).

`SFTStage` is the warm-up as a stage: its inputs are the base model (`sft_from`, by
`dpop.model_io.model_artifact`: its content or its maker's id, never its path) and the dataset whose
train split it learns (`sft_on`); examples given directly instead count by their sha256. Its output is
the model `model-<stage id>`, a `save_pretrained` folder `<ws>/models/sft-<hash>/` (with the tokenizer
and the stage's record), so the same inputs in any workspace give the same id. `warm_up` is the
convenience entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from dpop.model_io import load_causal_lm, model_artifact
from dpop.refs import dataset_artifact
from pipeline.config import setting, validate_fields
from pipeline.shards import open_split
from pipeline.stage import (
    INLINE,
    Artifact,
    Executor,
    Input,
    Stage,
    StageContext,
    StageOutput,
    StageRecord,
    run_stage,
    workspace_path,
)
from pipeline.workspace import Workspace

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


# The schedule and method are part of the identity: a model made another way is not reused.
SFT_METHOD = "transformers.Trainer/adamw_torch/cosine_with_min_lr(0.1)/clip1.0"
MAX_TOKENS = 1 << 20


@dataclass(frozen=True)
class SFTSettings:
    """The `sft:` section of dpop.yaml (its seed is the file's top-level `seed`)."""

    steps: int = setting(80, ge=0, le=10**7, help="optimizer steps; 0: no warm-up")
    learning_rate: float = setting(2e-3, gt=0, le=10, help="peak learning rate")
    batch_size: int = setting(16, ge=1, le=65_536)
    max_length: int = setting(320, ge=2, le=MAX_TOKENS, help="prompt + response tokens; longer ones cut")
    warmup_steps: int = setting(5, ge=0, le=10**7, help="linear warm-up steps")
    weight_decay: float = setting(0.0, ge=0, le=10)

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class SFTConfig(SFTSettings):
    seed: int = setting(0, ge=0, le=2**32 - 1)

    def training_arguments(self, output_dir: str | os.PathLike[str]) -> Any:
        """The Trainer's arguments: `steps` optimizer steps over reshuffled epochs, AdamW, linear
        warm-up then cosine decay to a tenth of the peak (short runs still end gently), clipping at 1."""
        from transformers import TrainingArguments

        from dpop.config import has_accelerator

        return TrainingArguments(
            output_dir=str(output_dir),
            max_steps=self.steps,
            per_device_train_batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay,
            lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": 0.1},
            optim="adamw_torch",
            max_grad_norm=1.0,
            seed=self.seed,
            data_seed=self.seed,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=not has_accelerator(),
            remove_unused_columns=False,  # the collator takes Example objects
        )


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

    @classmethod
    def from_record(cls, ws: Workspace, record: StageRecord) -> SFTResult:
        model = record.output("model")
        return cls(model.location(ws), model.id, record.reused, list(record.summary.get("losses") or []))


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


@dataclass(frozen=True)
class SFTStage(Stage):
    """Warm `base_model` up on the chosen answers of `dataset_id`'s train split (or on `examples`, when
    given: then they, by sha256, stand for the data, and `dataset_id`, if any, is a lineage input), with
    `settings` (an `SFTConfig`).
    `on_step(step, total, loss)` reports progress and is not part of the identity."""

    name = "sft"
    id_prefix = "sft"

    base_model: Path
    dataset_id: str | None
    settings: SFTConfig = field(default_factory=SFTConfig)
    examples: tuple[Example, ...] = ()
    on_step: Callable[[int, int, float], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        base = Path(self.base_model).expanduser()
        if not base.is_dir():
            raise FileNotFoundError(f"base model folder {base} does not exist")
        if self.dataset_id is None and not self.examples:
            raise ValueError("SFT warm-up needs a dataset or at least one example")
        object.__setattr__(self, "base_model", base.resolve())
        object.__setattr__(self, "examples", tuple(self.examples))

    @cached_property
    def base_artifact(self) -> Artifact:
        return model_artifact(self.base_model)

    def inputs(self) -> list[Input]:
        inputs = [Input(self.base_artifact, "sft_from")]
        if self.dataset_id is not None:
            inputs.append(Input(dataset_artifact(self.dataset_id), "sft_on"))
        return inputs

    @cached_property
    def _config(self) -> dict[str, Any]:
        examples = _examples_sha256(self.examples) if self.examples else "train split of the dataset"
        return {"settings": asdict(self.settings), "method": SFT_METHOD, "examples": examples}

    def config(self) -> dict[str, Any]:
        return self._config

    def folder(self, ws: Workspace) -> Path:
        return ws.models_dir / self.id

    def label(self) -> str:
        return f"SFT warm-up ({self.settings.steps} steps)"

    def run(self, ctx: StageContext) -> StageOutput:
        examples = list(self.examples) or examples_from_shards(ctx.ws, self.dataset_id, "train")
        if not examples:
            raise ValueError(f"SFT warm-up: dataset {self.dataset_id} has no train rows")

        def on_step(step: int, total: int, loss: float) -> None:
            ctx.progress(step, total, f"loss {loss:.3f}")
            if self.on_step is not None:
                self.on_step(step, total, loss)

        model, losses = _train(self.base_model, examples, self.settings, on_step)
        model.save_pretrained(str(ctx.out))
        for file_name in TOKENIZER_FILES:  # the folder loads as a model and a tokenizer, like a hub repo
            if (self.base_model / file_name).is_file():
                shutil.copy2(self.base_model / file_name, ctx.out / file_name)
        meta = {"made_by": "sft", "base_model": self.base_artifact.id, "examples": len(examples)}
        model_out = Artifact(f"model-{self.id}", "model", workspace_path(ctx.ws, ctx.folder), meta=meta)
        return StageOutput(
            outputs=[model_out],
            counts={"examples": len(examples), "steps": len(losses)},
            summary={
                "losses": losses,
                "final_loss": losses[-1] if losses else None,
                "examples": len(examples),
            },
        )


def warm_up(
    workspace: Workspace,
    base_model: str | os.PathLike[str],
    examples: Sequence[Example] | str,
    config: SFTConfig | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    executor: Executor = INLINE,
) -> SFTResult:
    """Fine-tune `base_model` on the responses of `examples` (a dataset id: its train split), through
    the stage runner: the same base model, data and config reuse `<ws>/models/sft-<hash>/`."""
    if not isinstance(examples, str) and not examples:
        raise ValueError("SFT warm-up needs at least one example")
    dataset_id, given = (examples, ()) if isinstance(examples, str) else (None, tuple(examples))
    stage = SFTStage(Path(base_model), dataset_id, config or SFTConfig(), given, on_step)
    return SFTResult.from_record(workspace, run_stage(workspace, stage, executor))


def _train(
    base_model: Path,
    examples: Sequence[Example],
    config: SFTConfig,
    on_step: Callable[[int, int, float], None] | None,
) -> tuple[Any, list[float]]:
    """The Trainer pass; returns the model (on CPU) and the loss of every step."""
    from transformers import PrinterCallback, ProgressCallback, Trainer

    torch.manual_seed(config.seed)
    model = load_causal_lm(base_model, dtype=torch.float32)
    if config.steps == 0:  # max_steps=0 would mean "one epoch" to the Trainer
        return model, []
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    losses = _LossLog(config.steps, on_step)
    with tempfile.TemporaryDirectory(prefix="dpop-sft-") as scratch:  # save_strategy "no": stays empty
        trainer = Trainer(
            model=model,
            args=config.training_arguments(scratch),
            train_dataset=list(examples),
            data_collator=lambda rows: _batch(rows, config.max_length, pad_id),
            callbacks=[losses],
        )
        for quiet in (PrinterCallback, ProgressCallback):  # progress goes through on_step
            trainer.remove_callback(quiet)
        trainer.train()
    return trainer.model.to("cpu"), losses.losses


class _LossLog(TrainerCallback):
    """Collects each step's loss (logging_steps=1) and reports it to `on_step`."""

    def __init__(self, total: int, on_step: Callable[[int, int, float], None] | None):
        self.total = total
        self.on_step = on_step
        self.losses: list[float] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs:
            return
        self.losses.append(round(float(logs["loss"]), 6))
        if self.on_step:
            self.on_step(state.global_step, self.total, self.losses[-1])
