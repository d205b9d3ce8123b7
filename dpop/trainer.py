"""`DPOPTrainer`: a `transformers.Trainer` whose loss is a preference loss over our shard batches.

Everything else is the stock Trainer: TrainingArguments, accelerate (DDP/FSDP/DeepSpeed, mixed
precision, device placement), gradient accumulation, checkpoints and `resume_from_checkpoint`,
`report_to` integrations. The reference log-probs come, in order of preference, from the batch
(stored in the shards by `dpop refs`: no reference model at all), from a frozen `ref_model` (full
fine-tuning), or from the policy itself with its LoRA adapter disabled.

Metrics use TRL's names. Per step, one packed tensor of sums is gathered across processes (one
collective, one host sync), and the averages are emitted at each log event: every `report_to` tracker
(TensorBoard, MLflow, W&B …) gets them like the Trainer's own, and `TrackerContextCallback` adds what the
run is about (dataset id, reference model, source files, config) to those trackers.

Per-pair weights (the shards' optional `weight` column, written by `dpop select`): the training loss is
then the weighted mean Σ w·l / Σ w over the global batch, Σ w gathered in that same collective
(`weighted_loss`); evaluation stays unweighted, so runs on different selections compare.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from dpop.config import HardwareFallbackWarning, TrainConfig
from dpop.data import LengthGroupedSampler, ShardDataset
from dpop.logps import PairCollator, has_local_attention, pair_logps, post_edit_stats, resolve_packing
from dpop.losses import LOSSES, dpop_penalty

# Order of the packed per-step sums; metrics are sum / pairs except the pre- and post-edit ones (per token).
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
    "pre_edit_sum",
    "pre_edit_tokens",
    "post_edit_sum",
    "post_edit_tokens",
    "weights",  # last: `_accumulate` returns it (the weighted loss divides by it)
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
        self._weighted = False  # a batch carried per-pair weights: `weights/mean` joins the metrics
        self.data_collator = self._laid_out(self.data_collator)
        # After the stock integrations in the callback list: they have opened their runs when it speaks.
        self.trackers = TrackerContextCallback(self.callback_handler, self.run_context)
        self.add_callback(self.trackers)

    # ----- data -----
    def _laid_out(self, collator: Any) -> Any:
        """Our collator with the config's `packing`, or the nearest layout this model's attention
        implementation can run (one warning saying why); any other collator is left alone."""
        if not isinstance(collator, PairCollator):
            return collator
        config = getattr(self.model, "config", None)
        implementation = getattr(config, "_attn_implementation", None)
        packing, reason = resolve_packing(
            self.train_config.packing, implementation, has_local_attention(config)
        )
        if reason:
            warnings.warn(reason, HardwareFallbackWarning, stacklevel=3)
        return dataclasses.replace(
            collator,
            packing=packing,
            varlen="flash" in (implementation or ""),  # one long row: varlen attention needs no mask
            additive_mask=implementation != "sdpa",  # eager/flex add the mask to the scores
        )

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
        # per-pair weights (`dpop select`) in training only: evaluations of two selections stay comparable
        weights = inputs.get("weight") if model_is_training(self.model) else None
        weight_total = self._accumulate(
            inputs, policy, ref_chosen, ref_rejected, chosen_rewards, rejected_rewards, weights
        )
        if weights is None:
            loss = losses.mean()
        else:
            loss = weighted_loss(losses, weights, weight_total, self.accelerator.num_processes)
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

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        # An evaluation after train() (dpop.train's final one) reports to the same tracker run as training.
        with self.trackers.reopened():
            return super().evaluate(*args, **kwargs)

    # ----- what the run is about, for trackers -----
    def run_context(self) -> RunContext:
        """The run's dataset, models, lineage and config (`TrackerContextCallback` sends it)."""
        from pipeline.version import code_version

        dataset = self.train_dataset
        dataset_id = getattr(dataset, "dataset_id", None)
        lineage = _lineage(getattr(dataset, "workspace", None), dataset_id)
        config = self.train_config
        params: dict[str, Any] = {
            "run_id": Path(self.args.output_dir).name if self.args.output_dir else None,
            "dataset_id": dataset_id,
            "dataset_dir": str(dataset.workspace.dataset_dir(dataset_id)) if dataset_id else None,
            "base_model": _name_or_path(self.model),
            "reference_model": self._reference_description(dataset, lineage),
            "loss": config.loss,
            **config.loss_kwargs(),
            "finetuning": "lora" if config.uses_lora else "full",
            "train_rows": len(dataset) if dataset is not None else None,
            "eval_rows": len(self.eval_dataset) if self.eval_dataset is not None else 0,
            "code_version": code_version(),
        }
        documents: dict[str, Any] = {"config": config.as_dict()}
        if lineage is not None:
            params["sources"] = ", ".join(source.name for source in lineage.sources)
            params["licenses"] = ", ".join(lineage.licenses)
            documents["lineage"] = lineage.to_json()
        return RunContext({k: v for k, v in params.items() if v is not None}, documents)

    def _reference_description(self, dataset: Any, lineage: Any) -> str:
        stored = isinstance(dataset, ShardDataset) and dataset.has_reference_logps()
        if stored and lineage is not None and lineage.reference_model:
            reference = lineage.reference_model
            return f"{reference.get('id')} (log-probs stored in the dataset, {reference.get('dtype', 'float32')})"
        if stored:
            return "log-probs stored in the dataset"
        if self.ref_model is not None:
            return "frozen copy of the base model"
        return "the base model with the LoRA adapter disabled"

    # ----- metrics -----
    def _accumulate(
        self, inputs, policy, ref_chosen, ref_rejected, chosen_rewards, rejected_rewards, weights=None
    ) -> torch.Tensor:
        """Gather this step's metric sums (and Σ weights) from every process in one collective; returns
        the global Σ weights (the number of pairs when unweighted), which the weighted loss divides by."""
        chosen_log_ratio = policy.chosen.detach() - ref_chosen
        penalty_lambda = self.loss_kwargs.get("penalty_lambda", 0.0)
        post_sum, post_tokens = post_edit_stats(policy.per_token, inputs["chosen_post_edit"])
        pre_sum, pre_tokens = post_edit_stats(policy.per_token, chosen_pre_edit(inputs, len(chosen_rewards)))
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
            pre_sum,
            pre_tokens,
            post_sum,
            post_tokens,
            weights.sum() if weights is not None else values_count(chosen_rewards),
        ]
        packed = torch.stack([value.float() for value in values])
        gathered = self.accelerator.gather(packed.unsqueeze(0)).sum(dim=0)
        self._weighted = self._weighted or weights is not None
        mode = "train" if model_is_training(self.model) else "eval"
        current = self._sums[mode]
        host = gathered.double().cpu()
        self._sums[mode] = host if current is None else current + host
        return gathered[-1]

    def _averages(self, mode: str) -> dict[str, float]:
        sums = self._sums[mode]
        self._sums[mode] = None
        if sums is None or sums[0] == 0:
            return {}
        named = dict(zip(_SUMS, sums.tolist(), strict=True))
        pairs = named.pop("pairs")
        pre_sum, pre_tokens = named.pop("pre_edit_sum"), named.pop("pre_edit_tokens")
        post_sum, post_tokens = named.pop("post_edit_sum"), named.pop("post_edit_tokens")
        weights = named.pop("weights")
        metrics = {key: value / pairs for key, value in named.items()}
        if self._weighted and mode == "train":
            metrics["weights/mean"] = weights / pairs
        if pre_tokens:
            metrics["logps/chosen_pre_edit"] = pre_sum / pre_tokens
        if post_tokens:
            metrics["logps/chosen_post_edit"] = post_sum / post_tokens
        return metrics

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if any(key.startswith("eval_") for key in logs):
            logs.update({f"eval_{key}": value for key, value in self._averages("eval").items()})
        elif "train_runtime" not in logs:
            logs.update(self._averages("train"))
        super().log(logs, *args, **kwargs)


def weighted_loss(
    losses: torch.Tensor, weights: torch.Tensor, global_weight_sum: torch.Tensor, processes: int
) -> torch.Tensor:
    """This process's share of Σ w·l / Σ w over the whole global batch. DDP (and FSDP, DeepSpeed)
    average the gradients over the processes, so each process's loss is its Σ w·l times their number
    over the global Σ w (gathered with the metrics, one collective): the average of these is exactly
    the global weighted mean. Σ w = 0 gives a zero loss (and zero gradients), not NaN."""
    scale = processes / global_weight_sum.clamp_min(torch.finfo(torch.float32).tiny)
    return (losses * weights.to(losses.dtype)).sum() * scale.to(losses.dtype)


def chosen_pre_edit(inputs: Mapping[str, torch.Tensor], pairs: int) -> torch.Tensor:
    """Flags over the scored tokens: chosen tokens before the first edit (the collator flags those from
    `common_prefix_len` on as `chosen_post_edit`; chosen sequences are the first `pairs` of 2·pairs)."""
    return (inputs["score_sequence"] < pairs) & ~inputs["chosen_post_edit"]


def values_count(values: torch.Tensor) -> torch.Tensor:
    """The number of pairs in a batch as a tensor on its device (Σ weights when every weight is 1)."""
    return torch.tensor(float(len(values)), device=values.device)


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


# ----- experiment trackers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunContext:
    """What a run is about: short values (`params`) and JSON documents (`documents`: config, lineage)."""

    params: dict[str, Any]
    documents: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        return "\n".join(f"| {key} | {value} |" for key, value in self.params.items())


log = logging.getLogger(__name__)


class TrackerContextCallback(TrainerCallback):
    """Adds a run's context to the trackers the Trainer reports to (`report_to`), once they have opened
    their run (on_train_begin; main process only):

      MLflow       params `dpop.<name>`; tags `dpop.dataset_id`, `dpop.run_id`, `dpop.loss`; the dataset
                   as the run's input (MLflow's "Datasets used"); artifacts dpop/config.json, dpop/lineage.json
      TensorBoard  text summaries `dpop/context` (a table), `dpop/config`, `dpop/lineage`
      W&B          config `dpop` (params and documents); tags `dataset:<id>`, `loss:<name>`

    The metrics (TRL's names, dpop/penalty …) reach every tracker through `DPOPTrainer.log`; other
    integrations get those and the Trainer's own args. MLflow's integration ends its run when training
    ends: `reopened()` resumes that run for an evaluation made afterwards, so its metrics land with the
    run instead of in a new one."""

    def __init__(self, handler: Any, context: Callable[[], RunContext]):
        self.handler = handler
        self.context = context
        self._mlflow_run_id: str | None = None
        self._training_ended = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._training_ended = False
        if not state.is_world_process_zero:
            return
        senders = [(send, callback) for callback in self.handler.callbacks if (send := _sender(callback))]
        if not senders:
            return
        try:
            context = self.context()
        except Exception as error:  # reporting what a run is about must never stop the run
            log.warning("could not gather the run's context for its trackers: %s", error)
            return
        for send, callback in senders:
            try:
                send(callback, context, args)
            except Exception as error:  # a failing tracker must not stop the run
                log.warning("could not send the run's context to %s: %s", type(callback).__name__, error)
        mlflow = _mlflow_of(self.handler)
        if mlflow is not None and mlflow.active_run() is not None:
            self._mlflow_run_id = mlflow.active_run().info.run_id

    def on_train_end(self, args, state, control, **kwargs):
        self._training_ended = True

    @contextlib.contextmanager
    def reopened(self) -> Iterator[None]:
        mlflow = _mlflow_of(self.handler)
        if not (self._training_ended and self._mlflow_run_id and mlflow and mlflow.active_run() is None):
            yield
            return
        with mlflow.start_run(run_id=self._mlflow_run_id):
            yield


def _sender(callback: Any) -> Callable[[Any, RunContext, Any], None] | None:
    """The function that sends a context to this integration callback's tracker, if it is one we know."""
    from transformers.integrations import MLflowCallback, TensorBoardCallback, WandbCallback

    for kind, send in (
        (MLflowCallback, _to_mlflow),
        (TensorBoardCallback, _to_tensorboard),
        (WandbCallback, _to_wandb),
    ):
        if isinstance(callback, kind):
            return send
    return None


def _mlflow_of(handler: Any) -> Any:
    from transformers.integrations import MLflowCallback

    found = [c for c in handler.callbacks if isinstance(c, MLflowCallback)]
    return found[0]._ml_flow if found else None


def _to_mlflow(callback: Any, context: RunContext, args: Any) -> None:
    mlflow = callback._ml_flow
    if mlflow.active_run() is None:
        return
    limit = callback._MAX_PARAM_VAL_LENGTH
    mlflow.log_params({f"dpop.{key}": str(value)[:limit] for key, value in context.params.items()})
    tags = {
        f"dpop.{key}": str(context.params[key])
        for key in ("dataset_id", "run_id", "loss")
        if key in context.params
    }
    if args.run_name is None and "run_id" in context.params:
        tags["mlflow.runName"] = context.params["run_id"]  # the dpop run id instead of a random name
    mlflow.set_tags(tags)
    for name, document in context.documents.items():
        mlflow.log_dict(document, f"dpop/{name}.json")
    dataset_id = context.params.get("dataset_id")
    if dataset_id:
        _mlflow_dataset_input(mlflow, context.params, context.documents.get("lineage"))


def _mlflow_dataset_input(mlflow: Any, params: Mapping[str, Any], lineage: Mapping[str, Any] | None) -> None:
    """The dataset version as the run's training input, where MLflow's UI lists the datasets a run used."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    dataset_id = params["dataset_id"]
    rows = sum((lineage or {}).get("splits", {}).values()) or None
    dataset = MetaDataset(
        source=LocalArtifactDatasetSource(params.get("dataset_dir", dataset_id)),
        name=dataset_id,
        digest=hashlib.sha256(dataset_id.encode()).hexdigest()[:16],
        schema=None,
    )
    mlflow.log_input(dataset, context="training", tags={"rows": str(rows)} if rows else None)


def _to_tensorboard(callback: Any, context: RunContext, args: Any) -> None:
    writer = callback.tb_writer
    if writer is None:
        return
    writer.add_text("dpop/context", "| setting | value |\n|---|---|\n" + context.text(), 0)
    for name, document in context.documents.items():
        # four-space indent: TensorBoard renders text as Markdown, and this keeps the JSON a code block
        body = json.dumps(document, indent=2, sort_keys=True, default=str)
        writer.add_text(f"dpop/{name}", "    " + body.replace("\n", "\n    "), 0)
    writer.flush()


def _to_wandb(callback: Any, context: RunContext, args: Any) -> None:
    wandb = callback._wandb
    if wandb is None or wandb.run is None:
        return
    wandb.config.update({"dpop": {**context.params, **context.documents}}, allow_val_change=True)
    tags = [f"dataset:{context.params['dataset_id']}"[:64]] if "dataset_id" in context.params else []
    tags.append(f"loss:{context.params.get('loss')}")
    wandb.run.tags = tuple(dict.fromkeys([*(wandb.run.tags or ()), *tags]))
    if args.run_name is None and "run_id" in context.params:
        wandb.run.name = context.params["run_id"]


def _lineage(workspace: Any, dataset_id: str | None) -> Any:
    """The dataset's lineage, or None where it cannot be read (a dataset made outside a workspace build):
    reporting what is known must never stop a training run."""
    if workspace is None or dataset_id is None:
        return None
    from pipeline.cards import dataset_lineage

    try:
        return dataset_lineage(workspace, dataset_id)
    except (OSError, ValueError, RuntimeError, KeyError):
        return None


def _name_or_path(model: Any) -> str | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "name_or_path", None) or None
