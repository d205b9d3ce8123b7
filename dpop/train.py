"""Training as a stage: `TrainStage` trains a model on a dataset version into a run folder.

    <ws>/runs/<run_id>/model/          save_pretrained model (or LoRA adapter) + tokenizer
    <ws>/runs/<run_id>/checkpoint-*/   Trainer checkpoints (a killed run resumes from the last whole one)
    <ws>/runs/<run_id>/metrics.jsonl   one JSON object per log event
    <ws>/runs/<run_id>/run.json        dataset, base and reference models, loss, config, code version, metrics
    <ws>/runs/<run_id>/stage.json      the stage's record, written last: the run is complete

The run id is `run-<hash>` of the dataset id, the start model's id (`dpop.model_io.model_artifact`: its
content, or the id of the stage that made it), the reference model's id, `TrainConfig.identity()` and the
number of processes (they set the global batch): the same inputs give the same run in any workspace,
so training again reuses the finished run, and a run killed midway continues from its last complete
checkpoint (checkpoints a kill left half-written are dropped first). The stage writes its folder in
place (`in_place`); its record, written last, marks it complete.

Works the same under `python`, `accelerate launch` and `torchrun`: every rank runs the stage (the id is
content, so the same on every rank); only the main process writes run.json, metrics, the record and
catalog rows. `train(...)` is the convenience entry.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from dpop.config import TrainConfig, has_accelerator
from dpop.data import ShardDataset
from dpop.model_io import (
    check_tokenizer,
    load_causal_lm,
    model_artifact,
    precision_for_training,
    require_model_dir,
    require_safetensors,
)
from dpop.refs import check_reference_precision, dataset_artifact
from pipeline.atomic import temporary_path, write_text_atomic
from pipeline.cards import write_model_card
from pipeline.shards import load_manifest, shard_paths
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
from pipeline.version import code_version
from pipeline.workspace import Workspace

RUN_RECORD = "run.json"
METRICS_FILE = "metrics.jsonl"
MODEL_DIR = "model"
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last into a checkpoint


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    run_dir: Path
    model_dir: Path
    final_metrics: dict[str, Any]
    reused: bool = False  # the run had finished before: nothing was trained
    resumed: bool = False  # a killed run continued from its last checkpoint

    @classmethod
    def from_record(cls, ws: Workspace, record: StageRecord) -> TrainResult:
        return cls(
            run_id=record.id,
            run_dir=ws.root / record.folder,
            model_dir=record.output("model").location(ws),
            final_metrics=dict(record.summary.get("final_metrics") or {}),
            reused=record.reused,
            resumed=bool(record.summary.get("resumed")) and not record.reused,
        )


@dataclass(frozen=True)
class _Data:
    train: Any  # ShardDataset
    eval: Any  # ShardDataset or None
    stored_refs: bool


def stored_reference(manifest: dict[str, Any]) -> Artifact | None:
    """The model whose log-probs a dataset version stores (`dpop.refs`), or None."""
    reference = manifest.get("reference_model")
    if not reference:
        return None
    return Artifact(reference["id"], "model", reference.get("path"), meta={"dtype": reference.get("dtype")})


@dataclass(frozen=True)
class TrainStage(Stage):
    """Train `model` (a folder) on `dataset_id` with `training` (a TrainConfig).

    `reference`: the reference model (a folder, or an artefact such as `stored_reference(manifest)`):
    the model whose log-probs the dataset stores, else the base (a frozen copy, or the base with the
    LoRA adapter disabled); None means the base. It is checked against the dataset before training."""

    name = "train"
    id_prefix = "run"
    in_place = True

    dataset_id: str
    model: Path
    training: TrainConfig
    reference: Path | Artifact | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", require_model_dir(self.model))
        if self.reference is not None and not isinstance(self.reference, Artifact):
            object.__setattr__(self, "reference", require_model_dir(self.reference))

    @cached_property
    def base_artifact(self) -> Artifact:
        return model_artifact(self.model)

    @cached_property
    def reference_artifact(self) -> Artifact:
        if self.reference is None:
            return self.base_artifact
        if isinstance(self.reference, Artifact):
            return self.reference
        return model_artifact(self.reference)

    def inputs(self) -> list[Input]:
        return [
            Input(dataset_artifact(self.dataset_id), "trained_on"),
            Input(self.base_artifact, "base_model"),
            Input(self.reference_artifact, "reference_model"),
        ]

    @cached_property
    def _config(self) -> dict[str, Any]:
        return {**self.training.identity(), "world_size": world_size()}

    def config(self) -> dict[str, Any]:
        return self._config

    def folder(self, ws: Workspace) -> Path:
        return ws.run_dir(self.id)

    def label(self) -> str:
        return f"train {self.training.loss}"

    # --- checks ------------------------------------------------------------------------------------

    def check(self, ws: Workspace) -> tuple[dict[str, Any], _Data]:
        """What fails before any work, in one line: a missing or corrupt dataset, a tokenizer that is not
        the shards' one, pickled weights, stored references of another precision or model."""
        manifest = load_manifest(ws, self.dataset_id)
        check_tokenizer(manifest, self.model)
        require_safetensors(self.model)
        for split in manifest.get("splits", {}):
            shard_paths(ws, self.dataset_id, split)
        data = _open_data(ws, self.dataset_id, manifest)
        if data.stored_refs:  # the policy must start where the stored values were computed (dpop.refs)
            check_reference_precision(manifest, precision_for_training(self.training))
        self._check_reference(manifest, data.stored_refs)
        return manifest, data

    def _check_reference(self, manifest: dict[str, Any], stored_refs: bool) -> None:
        reference, stored = self.reference_artifact, stored_reference(manifest)
        if stored_refs and stored is not None and stored.id != reference.id:
            raise ValueError(
                f"dataset {self.dataset_id} holds the log-probs of reference model {stored.id} "
                f"({stored.path}), not of {reference.id} ({reference.path}): pass that model as the reference"
            )
        if not stored_refs and reference.id != self.base_artifact.id:
            raise ValueError(
                f"reference model {reference.id} is not the base model and dataset {self.dataset_id} stores "
                f"no log-probs: compute them first (`dpop refs --dataset {self.dataset_id} --model {reference.path}`)"
            )

    # --- the work ----------------------------------------------------------------------------------

    def run(self, ctx: StageContext) -> StageOutput:
        from accelerate import PartialState
        from transformers import AutoTokenizer

        manifest, data = self.check(ctx.ws)
        config, run_dir = self.training, ctx.out
        # accelerate picks gloo/MULTI_CPU only when told it runs on CPU; it is a process-wide singleton, so
        # the first PartialState decides for the Trainer's Accelerator too.
        on_cpu = config.use_cpu or not has_accelerator()
        state = PartialState(cpu=on_cpu)
        checkpoint = _resume_point(run_dir, state)
        tokenizer = AutoTokenizer.from_pretrained(self.model, trust_remote_code=config.trust_remote_code)
        trainer = self._trainer(run_dir, data, tokenizer, checkpoint, state, on_cpu)
        _report_progress(trainer, ctx.progress)
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        final_metrics = dict(output.metrics)
        final_metrics.update(_last_train_metrics(run_dir / METRICS_FILE) if state.is_main_process else {})
        if data.eval is not None:
            final_metrics.update(trainer.evaluate())
        final_metrics = json.loads(json.dumps(final_metrics, default=float))
        model_dir = _save_model(trainer, tokenizer, run_dir, state)
        if state.is_main_process:
            self._write_run_json(run_dir, model_dir, manifest, data.stored_refs, final_metrics)
            # README.md beside the save_pretrained files: metrics, DPOP settings, dataset lineage
            write_model_card(ctx.ws, run_dir)
        state.wait_for_everyone()
        return self._output(ctx, final_metrics, resumed=checkpoint is not None, steps=output.global_step)

    def _trainer(
        self, run_dir: Path, data: _Data, tokenizer: Any, checkpoint: Path | None, state: Any, on_cpu: bool
    ) -> Any:
        from dpop.logps import PairCollator
        from dpop.trainer import DPOPTrainer

        model, ref_model = _load_models(self.model, self.training, data.stored_refs)
        return DPOPTrainer(
            model=model,
            args=_run_arguments(self.training, run_dir, on_cpu=on_cpu, has_eval=data.eval is not None),
            train_dataset=data.train,
            eval_dataset=data.eval,
            data_collator=PairCollator(pad_token_id=_pad_token_id(tokenizer)),
            processing_class=tokenizer,
            callbacks=[_metrics_callback(run_dir, checkpoint, state)],
            ref_model=ref_model,
        )

    def _write_run_json(
        self,
        run_dir: Path,
        model_dir: Path,
        manifest: dict[str, Any],
        stored_refs: bool,
        final_metrics: dict[str, Any],
    ) -> None:
        config, base = self.training, self.base_artifact
        if stored_refs and manifest.get("reference_model"):
            reference = {**manifest["reference_model"], "source": "log-probs stored in the dataset"}
        else:
            source = (
                "base model with the LoRA adapter disabled" if config.uses_lora else "frozen copy of the base"
            )
            reference = {"id": base.id, "path": base.path, "source": source}
        record = {
            "run_id": self.id,
            "dataset_id": self.dataset_id,
            "base_model": {"id": base.id, "path": base.path},
            "reference_model": reference,
            "loss": {"name": config.loss, **config.loss_kwargs()},
            "finetuning": "lora" if config.uses_lora else "full",
            "config": config.as_dict(),
            "code_version": code_version(),
            "model_dir": str(model_dir),
            "final_metrics": final_metrics,
        }
        text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
        write_text_atomic(run_dir / RUN_RECORD, text)

    def _output(
        self, ctx: StageContext, final_metrics: dict[str, Any], resumed: bool, steps: int
    ) -> StageOutput:
        config = self.training
        loss = {"name": config.loss, **config.loss_kwargs()}
        finetuning = "lora" if config.uses_lora else "full"
        run = Artifact(
            self.id, "run", workspace_path(ctx.ws, ctx.folder), meta={"loss": loss, "finetuning": finetuning}
        )
        model = Artifact(
            f"model-{self.id}",
            "model",
            ctx.path(MODEL_DIR),
            meta={"role": "trained", "adapter": config.uses_lora, "base_model": self.base_artifact.id},
            parents=((self.id, "produced"),),
        )
        return StageOutput(
            outputs=[run, model],
            counts={"steps": steps},
            summary={
                "final_metrics": final_metrics,
                "model_path": ctx.path(MODEL_DIR),
                "resumed": resumed,
                "loss": loss,
            },
        )


def world_size() -> int:
    """Processes of this launch (torchrun and accelerate launch set WORLD_SIZE): they set the global
    batch, so they are part of a run's identity."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def train(
    workspace: Workspace | str | os.PathLike[str],
    dataset_id: str,
    model_path: str | os.PathLike[str],
    config: TrainConfig | None = None,
    reference: str | os.PathLike[str] | Artifact | None = None,
    executor: Executor = INLINE,
) -> TrainResult:
    """Train `model_path` on `dataset_id` with `config` through the stage runner: a finished run with the
    same inputs is returned as it is (`reused`), a killed one continues from its last checkpoint
    (`resumed`). The reference defaults to the model whose log-probs the dataset stores, else the base."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    config = config or TrainConfig()
    manifest = load_manifest(ws, dataset_id)
    if reference is None:
        reference = stored_reference(manifest)
    elif not isinstance(reference, Artifact):
        reference = Path(reference)
    stage = TrainStage(dataset_id, Path(model_path), config, reference)
    stage.check(ws)  # before the run folder exists: a refused run leaves nothing behind
    return TrainResult.from_record(ws, run_stage(ws, stage, executor))


# --- pieces of the run --------------------------------------------------------------------------------


def _open_data(ws: Workspace, dataset_id: str, manifest: dict[str, Any]) -> _Data:
    train_set = ShardDataset.open(ws, dataset_id, "train")
    if len(train_set) == 0:
        raise ValueError(f"dataset {dataset_id} has no train rows")
    eval_set = ShardDataset.open(ws, dataset_id, "eval") if "eval" in manifest.get("splits", {}) else None
    eval_set = eval_set if eval_set is not None and len(eval_set) else None
    stored = train_set.has_reference_logps() and (eval_set is None or eval_set.has_reference_logps())
    return _Data(train_set, eval_set, stored)


def drop_unfinished_checkpoints(run_dir: Path) -> None:
    """Remove checkpoint folders a killed run left half-written. The Trainer writes a checkpoint in place
    and its trainer_state.json last, so a checkpoint without a readable one is not resumable."""
    for checkpoint in run_dir.glob("checkpoint-*"):
        try:
            json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            shutil.rmtree(checkpoint, ignore_errors=True)


def _resume_point(run_dir: Path, state: Any) -> Path | None:
    """The last complete checkpoint of a killed run, after the main process dropped unfinished ones."""
    if state.is_main_process:
        drop_unfinished_checkpoints(run_dir)
    state.wait_for_everyone()
    return _last_checkpoint(run_dir)


def _save_model(trainer: Any, tokenizer: Any, run_dir: Path, state: Any) -> Path:
    """The trained model in `<run>/model/`, written to a temporary folder and renamed."""
    model_dir = run_dir / MODEL_DIR
    staging = _staging_folder(model_dir, state)
    trainer.save_model(str(staging))  # all ranks: FSDP/DeepSpeed gather weights collectively
    state.wait_for_everyone()
    if state.is_main_process:
        tokenizer.save_pretrained(staging)
        # A pickle of TrainingArguments: not needed to use the model (run.json has the config), and
        # nothing we ship should need unpickling.
        (staging / "training_args.bin").unlink(missing_ok=True)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        os.replace(staging, model_dir)
    return model_dir


def _staging_folder(model_dir: Path, state: Any) -> Path:
    """A temporary beside `model_dir` tagged with the main process (a workspace sweep leaves it alone
    while this run lives), the same on every rank: each one passes it to save_model."""
    from accelerate.utils import broadcast_object_list

    holder = [str(temporary_path(model_dir))]
    if state.num_processes > 1:
        broadcast_object_list(holder, from_process=0)
    return Path(holder[0])


def _add_lora(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if config.activation_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need grad inputs
    return model


def _metrics_callback(run_dir: Path, checkpoint: Path | None, state: Any) -> Any:
    """metrics.jsonl's writer: on resume, events after the checkpoint are dropped (they are replayed);
    a fresh run starts an empty file."""
    from dpop.trainer import MetricsFileCallback

    callback = MetricsFileCallback(run_dir / METRICS_FILE)
    if state.is_main_process:
        if checkpoint is not None:
            callback.truncate_after(int(checkpoint.name.split("-")[-1]))
        elif (run_dir / METRICS_FILE).exists():
            (run_dir / METRICS_FILE).unlink()
    return callback


def _report_progress(trainer: Any, progress: Any) -> None:
    """Steps and the latest loss to the stage's `progress` (the console's display). When transformers'
    progress bars are off (the console turned them off: `dpop run` without -v), the Trainer's own bar
    and its printed metric dicts go too: the console shows the steps, metrics.jsonl keeps the values."""
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback
    from transformers.utils import logging as hf_logging

    class StageProgress(TrainerCallback):
        loss = ""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if isinstance((logs or {}).get("loss"), int | float) and state.is_world_process_zero:
                self.loss = f"loss {logs['loss']:.4g}"
                progress(state.global_step, state.max_steps, self.loss)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                progress(state.global_step, state.max_steps, self.loss)

    trainer.add_callback(StageProgress())
    if not hf_logging.is_progress_bar_enabled():
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)


def _load_models(model_path: Path, config: TrainConfig, stored_refs: bool) -> tuple[Any, Any]:
    """The policy (with its LoRA adapter when lora_r > 0) and, for full fine-tuning without stored
    reference log-probs, a frozen reference copy: the only case that holds two models."""
    import torch

    dtype = getattr(torch, config.model_dtype)
    model = load_causal_lm(model_path, dtype=dtype, trust_remote_code=config.trust_remote_code)
    if config.uses_lora:
        return _add_lora(model, config), None
    if stored_refs:
        return model, None
    return model, load_causal_lm(model_path, dtype=dtype, trust_remote_code=config.trust_remote_code)


def _run_arguments(config: TrainConfig, run_dir: Path, on_cpu: bool, has_eval: bool) -> TrainConfig:
    """The config is the Trainer's TrainingArguments: only what this run decides is filled in (every
    other field, dpop's defaults such as remove_unused_columns=False included, goes as it is)."""
    return dataclasses.replace(
        config,
        output_dir=str(run_dir),
        use_cpu=on_cpu,
        data_seed=config.seed if config.data_seed is None else config.data_seed,
        eval_strategy=_eval_strategy(config, has_eval),
    )


def _eval_strategy(config: TrainConfig, has_eval: bool) -> str:
    """No eval split: no evaluation. Otherwise the file's eval_strategy, or "steps" when only
    eval_steps is set (the end-of-training evaluation in the stage happens either way)."""
    if not has_eval:
        return "no"
    chosen = getattr(config.eval_strategy, "value", config.eval_strategy)
    if chosen != "no":
        return chosen
    return "steps" if config.eval_steps else "no"


def _pad_token_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token to pad with")
    return pad


def _last_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(checkpoints, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _last_train_metrics(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    last: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "train":
            last = record
    return {key: value for key, value in last.items() if key not in ("split",)}
