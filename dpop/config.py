"""The training configuration: one dataclass, loadable from YAML, validated with errors naming the key.

Keys mirror `transformers.TrainingArguments` where one exists (so ML engineers read them at a
glance); `training_args` passes any other TrainingArguments field straight through.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dpop.losses import LOSSES

# YAML spellings that are not Python identifiers or read more naturally.
ALIASES = {"lambda": "penalty_lambda", "dpop_lambda": "penalty_lambda"}


@dataclass
class TrainConfig:
    # loss
    loss: str = "dpop"  # dpop | dpo | ipo | robust | hinge
    beta: float = 0.1
    penalty_lambda: float = 50.0  # DPOP's λ; 0 turns DPOP into DPO
    label_smoothing: float = 0.0  # robust: probability a label is flipped
    robust_unbiased: bool = True  # robust: rDPO (True) or cDPO (False)
    # optimisation
    learning_rate: float = 5e-6
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    seed: int = 42
    data_seed: int | None = None  # None: same as seed
    # precision and memory
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    model_dtype: str = "float32"  # dtype the weights are loaded in: float32 | bfloat16 | float16
    # LoRA (lora_r = 0: full fine-tuning)
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | str = "all-linear"
    # data
    group_by_length: bool = True
    length_window: int | None = None  # rows sorted together; None: 50 × the global batch
    dataloader_num_workers: int = 0
    # logging, evaluation, checkpoints
    logging_steps: int = 10
    eval_steps: int | None = None  # None: evaluate at the end only
    save_steps: int = 500
    save_total_limit: int | None = None
    report_to: list[str] = field(default_factory=list)
    disable_tqdm: bool = False
    # safety
    trust_remote_code: bool = False
    # anything else TrainingArguments accepts
    training_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"config key 'loss': unknown loss {self.loss!r} (known: {', '.join(LOSSES)})")
        checks = {
            "beta": self.beta > 0,
            "penalty_lambda": self.penalty_lambda >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 0.5,
            "learning_rate": self.learning_rate > 0,
            "per_device_train_batch_size": self.per_device_train_batch_size >= 1,
            "per_device_eval_batch_size": self.per_device_eval_batch_size >= 1,
            "gradient_accumulation_steps": self.gradient_accumulation_steps >= 1,
            "lora_r": self.lora_r >= 0,
            "lora_dropout": 0 <= self.lora_dropout < 1,
            "logging_steps": self.logging_steps >= 1,
            "save_steps": self.save_steps >= 1,
            "eval_steps": self.eval_steps is None or self.eval_steps >= 1,
            "length_window": self.length_window is None or self.length_window >= 1,
            "model_dtype": self.model_dtype in ("float32", "bfloat16", "float16"),
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"config key {key!r}: invalid value {getattr(self, key)!r}")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise ValueError("config keys 'num_train_epochs'/'max_steps': one of them must be positive")
        if self.bf16 and self.fp16:
            raise ValueError("config keys 'bf16' and 'fp16': choose at most one")
        self._validate_training_args()

    def _validate_training_args(self) -> None:
        from transformers import TrainingArguments

        known = {f.name for f in dataclasses.fields(TrainingArguments)}
        ours = {f.name for f in dataclasses.fields(self)}
        for key in self.training_args:
            if key not in known:
                raise ValueError(
                    f"config key 'training_args.{key}': not a transformers.TrainingArguments field"
                )
            if key in ours or key == "output_dir":
                raise ValueError(f"config key 'training_args.{key}': set it as a top-level key instead")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a mapping of keys to values, got {type(values).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for raw_key, value in values.items():
            key = ALIASES.get(raw_key, raw_key)
            if key not in fields:
                raise ValueError(f"{source}: unknown key {raw_key!r} (known: {', '.join(sorted(fields))})")
            kwargs[key] = _coerce(value, hints[key], raw_key, source)
        try:
            return cls(**kwargs)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({error})") from None
        return cls.from_dict(values, source=str(path))

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """A copy with the non-None `overrides` applied (CLI flags over a YAML file)."""
        values = dataclasses.asdict(self)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return TrainConfig.from_dict(values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def loss_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the chosen loss function."""
        kwargs: dict[str, Any] = {"beta": self.beta}
        if self.loss != "dpo":
            kwargs["penalty_lambda"] = self.penalty_lambda
        if self.loss == "robust":
            kwargs["label_smoothing"] = self.label_smoothing
            kwargs["unbiased"] = self.robust_unbiased
        return kwargs

    @property
    def uses_lora(self) -> bool:
        return self.lora_r > 0


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check a YAML value against the field's type (ints for floats are fine), naming the key on error."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ValueError(f"{source}: key {key!r} cannot be null")
    for option in allowed:
        origin = typing.get_origin(option) or option
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is bool and isinstance(value, bool):
            return value
        if origin in (str, list, dict) and isinstance(value, origin):
            return list(value) if origin is list else value
    names = " or ".join(getattr(option, "__name__", str(option)) for option in allowed)
    raise ValueError(f"{source}: key {key!r} must be {names}, got {value!r}")
