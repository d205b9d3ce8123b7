"""`DPOPTrainer`: a `transformers.Trainer` whose loss is a preference loss over our shard batches.

Everything else is the stock Trainer: TrainingArguments, accelerate (DDP/FSDP/DeepSpeed, mixed
precision, device placement), gradient accumulation, checkpoints and `resume_from_checkpoint`,
`report_to` integrations. The reference log-probs come, in order of preference, from the batch
(stored in the shards by `dpop refs`: no reference model at all), from a frozen `ref_model` (full
fine-tuning), or from the policy itself with its LoRA adapter disabled.

Metrics use TRL's names. Per step, one packed tensor of sums is gathered across processes (one
collective, one host sync), and the averages are emitted at each log event.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from dpop.config import TrainConfig
from dpop.data import LengthGroupedSampler, ShardDataset
from dpop.logps import pair_logps, post_edit_stats
from dpop.losses import LOSSES, dpop_penalty

# Order of the packed per-step sums; metrics are sum / pairs except the post-edit one (per token).
_SUMS = (
    "pairs",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "ref_logps/chosen",
    "ref_logps/rejected",
    "dpop/penalty",
    "dpop/penalty_active",
    "post_edit_sum",
    "post_edit_tokens",
)


class DPOPTrainer(Trainer):
    # compute_loss returns a per-batch mean; the Trainer divides by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        ref_model: torch.nn.Module | None = None,
        train_config: TrainConfig | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        # `args` is a TrainConfig (a TrainingArguments with the loss settings); `train_config` is only
        # for callers that pass plain TrainingArguments.
        train_config = train_config or self.args
        if not isinstance(train_config, TrainConfig):
            raise TypeError("DPOPTrainer needs args=TrainConfig(...) (or train_config=TrainConfig(...))")
        self.train_config = train_config
        self.loss_fn = LOSSES[train_config.loss]
        self.loss_kwargs = train_config.loss_kwargs()
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.requires_grad_(False).eval().to(self.args.device)
        # No `labels`/`num_items_in_batch`: our loss is a mean over pairs, not over tokens.
        self.model_accepts_loss_kwargs = False
        self._sums: dict[str, torch.Tensor | None] = {"train": None, "eval": None}

    # ----- data -----
    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not isinstance(dataset, ShardDataset) or not self.train_config.group_by_length:
            return super()._get_train_sampler(train_dataset)
        global_batch = self.args.per_device_train_batch_size * self.args.world_size
        window = self.train_config.length_window or 50 * global_batch * self.args.gradient_accumulation_steps
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthGroupedSampler(dataset.lengths(), window=window, seed=seed)

    def _get_eval_sampler(self, eval_dataset: Any) -> torch.utils.data.Sampler | None:
        if isinstance(eval_dataset, ShardDataset):
            # Fixed order, longest first: the least padding and a deterministic eval.
            return np.argsort(-eval_dataset.lengths(), kind="stable").tolist()
        return super()._get_eval_sampler(eval_dataset)

    # ----- loss -----
    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: Mapping[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Reference first, so the policy's forward is the last one before backward (DDP bookkeeping).
        ref_chosen, ref_rejected = self.reference_logps(model, inputs)
        policy = pair_logps(model, inputs)
        losses, chosen_rewards, rejected_rewards = self.loss_fn(
            policy.chosen, policy.rejected, ref_chosen, ref_rejected, **self.loss_kwargs
        )
        loss = losses.mean()
        self._accumulate(inputs, policy, ref_chosen, ref_rejected, chosen_rewards, rejected_rewards)
        if return_outputs:
            return loss, {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}
        return loss

    def reference_logps(
        self, model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref_chosen_logps" in inputs:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        with torch.no_grad():
            if self.ref_model is not None:
                reference = pair_logps(self.ref_model, inputs)
            else:
                unwrapped = self.accelerator.unwrap_model(model)
                if not hasattr(unwrapped, "disable_adapter"):
                    raise RuntimeError(
                        "no reference log-probs in the batch, no reference model and no LoRA adapter to disable"
                    )
                with unwrapped.disable_adapter():
                    reference = pair_logps(unwrapped, inputs)
        return reference.chosen.detach(), reference.rejected.detach()

    def prediction_step(
        self, model: torch.nn.Module, inputs: Any, prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[torch.Tensor, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ----- metrics -----
    def _accumulate(self, inputs, policy, ref_chosen, ref_rejected, chosen_rewards, rejected_rewards) -> None:
        chosen_log_ratio = policy.chosen.detach() - ref_chosen
        penalty_lambda = self.loss_kwargs.get("penalty_lambda", 0.0)
        post_sum, post_tokens = post_edit_stats(policy.per_token, inputs["chosen_post_edit_mask"])
        values = [
            torch.tensor(float(len(chosen_rewards)), device=chosen_rewards.device),
            chosen_rewards.sum(),
            rejected_rewards.sum(),
            (chosen_rewards > rejected_rewards).float().sum(),
            (chosen_rewards - rejected_rewards).sum(),
            policy.chosen.detach().sum(),
            policy.rejected.detach().sum(),
            ref_chosen.sum(),
            ref_rejected.sum(),
            dpop_penalty(chosen_log_ratio, penalty_lambda).sum(),
            (chosen_log_ratio < 0).float().sum(),
            post_sum,
            post_tokens,
        ]
        packed = torch.stack([value.float() for value in values])
        packed = self.accelerator.gather(packed.unsqueeze(0)).sum(dim=0).double().cpu()
        mode = "train" if model_is_training(self.model) else "eval"
        current = self._sums[mode]
        self._sums[mode] = packed if current is None else current + packed

    def _averages(self, mode: str) -> dict[str, float]:
        sums = self._sums[mode]
        self._sums[mode] = None
        if sums is None or sums[0] == 0:
            return {}
        named = dict(zip(_SUMS, sums.tolist(), strict=True))
        pairs = named.pop("pairs")
        post_sum, post_tokens = named.pop("post_edit_sum"), named.pop("post_edit_tokens")
        metrics = {key: value / pairs for key, value in named.items()}
        if post_tokens:
            metrics["logps/chosen_post_edit"] = post_sum / post_tokens
        return metrics

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if any(key.startswith("eval_") for key in logs):
            logs.update({f"eval_{key}": value for key, value in self._averages("eval").items()})
        elif "train_runtime" not in logs:
            logs.update(self._averages("train"))
        super().log(logs, *args, **kwargs)


def model_is_training(model: torch.nn.Module) -> bool:
    return bool(model.training)


class MetricsFileCallback(TrainerCallback):
    """Append each log event to `metrics.jsonl` (main process only): {"step", "epoch", "split", metrics…}.

    The end-of-training summary (`train_runtime`, …) is not a step's metrics and goes to run.json."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """On resume, drop events a killed run logged after its last checkpoint (they are replayed)."""
        if not self.path.is_file():
            return
        kept = [
            line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        is_eval = any(key.startswith("eval_") for key in logs)
        record: dict[str, Any] = {
            "step": state.global_step,
            "epoch": state.epoch,
            "split": "eval" if is_eval else "train",
        }
        for key, value in logs.items():
            name = key[len("eval_") :] if is_eval and key.startswith("eval_") else key
            record[name] = value
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
