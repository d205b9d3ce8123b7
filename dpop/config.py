"""The training configuration: `TrainConfig`, a `transformers.TrainingArguments` subclass.

As TRL's `DPOConfig` does, it adds the preference-loss settings (loss, β, λ, LoRA, weight dtype …) to
TrainingArguments, so every Trainer option (optimizer, scheduler, precision, FSDP/DeepSpeed,
report_to …) is a key of the same YAML file and reaches the Trainer as is: `dpop.train` hands the
config itself to the Trainer, with the run folder as `output_dir`.

Files are read by the one config loader (`pipeline.config`): unknown keys get a "did you mean", every
numeric setting has a range (the TrainingArguments fields we re-declare below exist for that, and to
keep dpop's defaults), and every error is one line naming the file and the key.

Each option has one spelling: `penalty_lambda` (YAML, Python, `--penalty-lambda`);
`activation_checkpointing` (transformers 5's name). The old ones (`lambda`, `dpop_lambda`,
`gradient_checkpointing`, the `training_args:` section) fail with a pointer to the new one.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from dpop.logps import PACKINGS
from dpop.losses import LOSSES
from pipeline.config import ConfigError, load, load_file, setting, validate_fields
from pipeline.identity import file_sha256

_TA_FIELDS = {f.name: f for f in dataclasses.fields(TrainingArguments)}
BIG = 10**9  # upper bound of step counts: far beyond any run, far below overflow
SEED_MAX = 2**32 - 1  # numpy's seed range


class HardwareFallbackWarning(UserWarning):
    """A precision setting this machine cannot run was switched off."""


@dataclass
class TrainConfig(TrainingArguments):
    # ----- the preference loss -----
    loss: str = setting("dpop", choices=tuple(LOSSES), help="dpop | dpo | ipo | robust | hinge")
    beta: float = setting(0.1, gt=0, le=100, help="β: strength of the pull towards the reference")
    penalty_lambda: float = setting(
        50.0, ge=0, le=10_000, old_names=("lambda", "dpop_lambda"), help="DPOP's λ; 0 gives plain DPO"
    )
    label_smoothing: float = setting(0.0, ge=0, lt=0.5, help="robust: share of flipped labels")
    robust_unbiased: bool = setting(True, help="robust: rDPO (true) or cDPO (false)")
    # ----- the model -----
    model_dtype: str = setting(
        "float32", choices=("float32", "bfloat16", "float16"), help="dtype the weights are loaded in"
    )
    trust_remote_code: bool = setting(False, help="run a model folder's own Python code")
    lora_r: int = setting(0, ge=0, le=4096, help="LoRA rank; 0 = full fine-tuning")
    lora_alpha: int = setting(16, ge=1, le=65_536)
    lora_dropout: float = setting(0.05, ge=0, lt=1)
    lora_target_modules: str | list[str] = setting("all-linear", nonempty=True)
    # ----- data order -----
    group_by_length: bool = setting(True, help="batch rows of similar length (less padding)")
    length_window: int | None = setting(
        None, ge=1, le=BIG, help="rows sorted together; null: 50 x global batch"
    )
    packing: str = setting(
        "none",
        choices=PACKINGS,
        help="batch layout: none (padded) | padding_free (packed sequences) | shared_prompt "
        "(prompt computed once per pair); falls back where the attention implementation cannot",
    )

    # ----- TrainingArguments fields: dpop's defaults, and a range for every number -----
    output_dir: str | None = setting(
        None, settable=False, note="dpop train writes to the run folder <workspace>/runs/<run_id>"
    )
    learning_rate: float = setting(5e-6, gt=0, le=10)
    num_train_epochs: float = setting(1.0, ge=0, le=10_000)
    max_steps: int = setting(-1, ge=-1, le=BIG)
    per_device_train_batch_size: int = setting(8, ge=1, le=65_536)
    per_device_eval_batch_size: int = setting(16, ge=1, le=65_536)
    gradient_accumulation_steps: int = setting(1, ge=1, le=65_536)
    warmup_steps: float = setting(0, ge=0, le=BIG)
    weight_decay: float = setting(0.0, ge=0, le=10)
    adam_beta1: float = setting(0.9, ge=0, lt=1)
    adam_beta2: float = setting(0.999, ge=0, lt=1)
    adam_epsilon: float = setting(1e-8, gt=0, le=1)
    max_grad_norm: float = setting(1.0, ge=0, le=1e6)
    label_smoothing_factor: float = setting(0.0, ge=0, lt=1)
    optim: OptimizerNames | str = setting("adamw_torch")
    lr_scheduler_type: SchedulerType | str = setting("linear")
    bf16: bool = setting(False, help="bfloat16 mixed precision (switched off where the machine lacks it)")
    fp16: bool = setting(False, help="float16 mixed precision (needs a GPU)")
    activation_checkpointing: bool | None = setting(None, old_names=("gradient_checkpointing",))
    activation_checkpointing_kwargs: dict[str, Any] | str | None = setting(
        None, old_names=("gradient_checkpointing_kwargs",)
    )
    neftune_noise_alpha: float | None = setting(None, ge=0, le=1000)
    torch_empty_cache_steps: int | None = setting(None, ge=1, le=BIG)
    logging_steps: float = setting(10, gt=0, le=BIG)
    report_to: None | str | list[str] = setting("none")
    disable_tqdm: bool | None = setting(False)
    eval_steps: float | None = setting(None, gt=0, le=BIG)
    eval_delay: float = setting(0, ge=0, le=BIG)
    eval_accumulation_steps: int | None = setting(None, ge=1, le=BIG)
    save_steps: float = setting(500, gt=0, le=BIG)
    save_total_limit: int | None = setting(None, ge=1, le=BIG)
    seed: int = setting(42, ge=0, le=SEED_MAX)
    data_seed: int | None = setting(None, ge=0, le=SEED_MAX)
    dataloader_num_workers: int = setting(0, ge=0, le=1024)
    dataloader_prefetch_factor: int | None = setting(None, ge=1, le=1024)
    remove_unused_columns: bool = setting(False, help="false: the collator reads dpop_shard columns")
    ddp_bucket_cap_mb: int | None = setting(None, ge=1, le=65_536)
    ddp_timeout: int = setting(1800, ge=1, le=10**7)
    local_rank: int = setting(-1, ge=-1, le=65_535)
    parallelism_config: Any = setting(
        None, settable=False, note="an accelerate ParallelismConfig object: set it in Python"
    )

    # Unknown-key messages list dpop's own fields, then this.
    __config_keys_note__ = "and every transformers.TrainingArguments field"
    # A retired section of older files: the loader points each of its keys to the top level.
    __config_removed__ = {
        "training_args": "TrainConfig is a TrainingArguments now, so every field is a top-level key"
    }

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.bf16 and self.fp16:
            raise ConfigError("bf16 and fp16 are both true: choose at most one")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("num_train_epochs and max_steps are both 0 or less: one must be positive")
        self._fall_back_to_what_the_machine_has()
        if "activation_checkpointing" not in _TA_FIELDS:  # transformers 4: the old name only
            self.gradient_checkpointing = bool(self.activation_checkpointing)
        try:
            super().__post_init__()
        except ConfigError:
            raise
        except (ValueError, TypeError, OSError, ImportError, NotImplementedError) as error:
            # TrainingArguments' own checks (a missing accelerator_config file, DeepSpeed absent, …)
            raise ConfigError(f"transformers.TrainingArguments refused it: {error}") from None

    def _fall_back_to_what_the_machine_has(self) -> None:
        """fp16 needs a GPU, bf16 a GPU or CPU that has it: switch off what this machine lacks, with
        one warning, instead of failing deep inside accelerate. Without an accelerator, use_cpu is set
        so accelerate runs torchrun/accelerate-launch ranks on CPU (gloo)."""
        if self.use_cpu or not has_accelerator():
            self.use_cpu = True
            if self.fp16 or self.fp16_full_eval:
                _fallback("fp16 needs a GPU and this machine has none: training runs in float32")
                self.fp16 = self.fp16_full_eval = False
            if (self.bf16 or self.bf16_full_eval) and not _cpu_has_bf16():
                _fallback("this CPU does not support bf16: training runs in float32")
                self.bf16 = self.bf16_full_eval = False
        elif (self.bf16 or self.bf16_full_eval) and not _accelerator_has_bf16():
            _fallback("this GPU does not support bf16 (Ampere or newer does): training runs in float32")
            self.bf16 = self.bf16_full_eval = False

    # ----- loading -----
    @classmethod
    def from_dict(cls, values: Any, source: str = "config") -> TrainConfig:
        """Validate a mapping of keys (a YAML document, a flow parameter) into a TrainConfig."""
        return load(cls, values, source=source)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> TrainConfig:
        return load_file(cls, path, what="training config")

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """A copy with the non-None `overrides` applied (CLI flags over a YAML file), validated again."""
        values = self.as_dict()
        values.update({key: value for key, value in overrides.items() if value is not None})
        return TrainConfig.from_dict(values, source="command line")

    # ----- what a config is -----
    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-able values that `from_dict` reads back: every field TrainConfig
        declares, plus each other TrainingArguments field that differs from its default. Left out:
        `output_dir` (train() sets it), secrets (`*_token`), code-only objects (parallelism_config),
        and `use_cpu` where the machine has no accelerator (it is implied there)."""
        own = TrainConfig.__dict__["__annotations__"]
        values = {}
        for field in dataclasses.fields(self):
            name = field.name
            if not field.init or name in _NEVER_STORED or name.endswith("_token"):
                continue
            value = _jsonable(getattr(self, name))
            if name in own or value != _normalised_default(field):
                values[name] = value
        if not has_accelerator():
            values.pop("use_cpu", None)
        if self.use_cpu and values.get("dataloader_pin_memory") is False:
            values.pop("dataloader_pin_memory")  # TrainingArguments turns it off for CPU itself
        return values

    def identity(self) -> dict[str, Any]:
        """The settings that change the trained model, for run ids and caches: `as_dict()` without
        the fields that only decide where outputs go, what is logged or reported and how often, how
        often checkpoints and evaluations happen (unless `load_best_model_at_end` picks the model
        from them), how batches are loaded, which device or process runs what, and secrets. When in
        doubt a field stays in: a needless new id costs a retrain, a wrongly shared one the wrong
        model. A file path (e.g. a DeepSpeed config) is replaced by the sha256 of the file, so two
        machines or workspaces with the same settings get the same identity."""
        excluded = set(NOT_IN_IDENTITY)
        if self.load_best_model_at_end:
            excluded -= CHOOSES_THE_MODEL
        return {
            name: _path_free(value)
            for name, value in self.as_dict().items()
            if name not in excluded and not name.startswith(("hub_", "trackio_"))
        }

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


# Never in as_dict(): set by train(), or not a value a file can hold.
_NEVER_STORED = frozenset(
    {"output_dir", "parallelism_config", "gradient_checkpointing", "gradient_checkpointing_kwargs"}
)

# Checkpoint/eval cadence: out of the identity unless load_best_model_at_end picks the model by it.
CHOOSES_THE_MODEL = frozenset(
    {"eval_strategy", "eval_steps", "eval_delay", "save_strategy", "save_steps", "metric_for_best_model",
     "greater_is_better", "per_device_eval_batch_size"}
)  # fmt: skip
NOT_IN_IDENTITY = CHOOSES_THE_MODEL | frozenset(
    {
        # where outputs go, what is reported
        "output_dir", "report_to", "run_name", "project", "disable_tqdm", "log_level", "log_level_replica",
        "log_on_each_node", "logging_strategy", "logging_steps", "logging_first_step", "logging_nan_inf_filter",
        "include_num_input_tokens_seen", "skip_memory_metrics", "push_to_hub",
        # evaluation and checkpoints
        "eval_on_start", "eval_do_concat_batches", "eval_use_gather_object", "eval_accumulation_steps",
        "prediction_loss_only", "batch_eval_metrics", "include_for_metrics", "do_train", "do_eval", "do_predict",
        "save_total_limit", "save_on_each_node", "save_only_model", "enable_jit_checkpoint",
        "restore_callback_states_from_checkpoint", "resume_from_checkpoint",
        # loading, devices, processes
        "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
        "dataloader_prefetch_factor", "dataloader_multiprocessing_context", "use_cpu", "local_rank",
        "ddp_timeout", "ddp_backend", "ddp_bucket_cap_mb", "torch_empty_cache_steps", "trust_remote_code",
        # the batch layout: the same tokens in the same contexts, only the arithmetic's order differs
        "packing",
    }
)  # fmt: skip


def has_accelerator() -> bool:
    import torch

    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def _cpu_has_bf16() -> bool:
    import torch

    return torch.backends.mkldnn.is_available()


def _accelerator_has_bf16() -> bool:
    import torch

    return not torch.cuda.is_available() or torch.cuda.is_bf16_supported()


def _fallback(message: str) -> None:
    warnings.warn(message, HardwareFallbackWarning, stacklevel=4)


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if hasattr(value, "to_dict"):  # accelerate's AcceleratorConfig
        return _jsonable(value.to_dict())
    return value


def _normalised_default(field: dataclasses.Field) -> Any:
    """A field's default as TrainingArguments.__post_init__ leaves it (without building one: that
    would reset accelerate's process state)."""
    if field.name == "accelerator_config":
        from transformers.trainer_pt_utils import AcceleratorConfig

        default = _jsonable(AcceleratorConfig())
        default.pop("use_configured_state", None)  # TrainingArguments pops it when it sets up devices
        return default
    if field.name == "debug":
        return []
    if field.default_factory is not dataclasses.MISSING:
        return _jsonable(field.default_factory())
    return _jsonable(field.default)


def _path_free(value: Any) -> Any:
    if isinstance(value, str) and os.path.isabs(value) and Path(value).is_file():
        return f"sha256:{file_sha256(value)}"
    return value
