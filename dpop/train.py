"""`train(...)`: one DPOP training run from a dataset version and a model folder to a run folder.

    <ws>/runs/<run_id>/model/          save_pretrained model (or LoRA adapter) + tokenizer
    <ws>/runs/<run_id>/checkpoint-*/   Trainer checkpoints (resume_from_checkpoint)
    <ws>/runs/<run_id>/metrics.jsonl   one JSON object per log event
    <ws>/runs/<run_id>/run.json        dataset, base and reference models, loss, config, code version, metrics

Works the same under `python`, `accelerate launch` and `torchrun`: every rank runs this function;
only the main process writes run.json, metrics and catalog records.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dpop.config import TrainConfig, has_accelerator
from dpop.data import ShardDataset
from dpop.model_io import (
    check_tokenizer,
    load_causal_lm,
    model_id,
    precision_for_training,
    record_model,
    require_model_dir,
)
from dpop.refs import check_reference_precision
from pipeline.atomic import temporary_path, write_text_atomic
from pipeline.catalog import Catalog
from pipeline.identity import stable_hash
from pipeline.shards import load_manifest
from pipeline.version import code_version
from pipeline.workspace import Workspace

RUN_RECORD = "run.json"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    run_dir: Path
    model_dir: Path
    final_metrics: dict[str, Any]


def train(
    workspace: Workspace | str | os.PathLike[str],
    dataset_id: str,
    model_path: str | os.PathLike[str],
    config: TrainConfig | None = None,
    run_id: str | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train `model_path` on `dataset_id` with `config`; `resume=True` continues run `run_id` from its
    last checkpoint (same data order, optimizer, scheduler and RNG state)."""
    from accelerate import PartialState
    from transformers import AutoTokenizer

    from dpop.logps import PairCollator
    from dpop.trainer import DPOPTrainer

    config = config or TrainConfig()
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    model_path = require_model_dir(model_path)
    manifest = load_manifest(ws, dataset_id)
    check_tokenizer(manifest, model_path)
    train_set = ShardDataset.open(ws, dataset_id, "train")
    if len(train_set) == 0:
        raise ValueError(f"dataset {dataset_id} has no train rows")
    eval_set = ShardDataset.open(ws, dataset_id, "eval") if "eval" in manifest.get("splits", {}) else None
    eval_set = eval_set if eval_set is not None and len(eval_set) else None
    stored_refs = train_set.has_reference_logps() and (eval_set is None or eval_set.has_reference_logps())
    if stored_refs:  # the policy must start where the stored values were computed (dpop.refs)
        check_reference_precision(manifest, precision_for_training(config))

    # accelerate picks gloo/MULTI_CPU only when told it runs on CPU; it is a process-wide singleton, so
    # the first PartialState decides for the Trainer's Accelerator too.
    on_cpu = config.use_cpu or not has_accelerator()
    state = PartialState(cpu=on_cpu)
    run_id = _resolve_run_id(ws, dataset_id, model_path, config, run_id, resume, state)
    run_dir = ws.run_dir(run_id)
    checkpoint = _last_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        raise FileNotFoundError(f"run {run_id} has no checkpoint-* folder in {run_dir} to resume from")
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=config.trust_remote_code)
    model, ref_model = _load_models(model_path, config, stored_refs)

    metrics_callback = _metrics_callback(run_dir, checkpoint, state)

    trainer = DPOPTrainer(
        model=model,
        args=_run_arguments(config, run_dir, on_cpu=on_cpu, has_eval=eval_set is not None),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=PairCollator(pad_token_id=_pad_token_id(tokenizer)),
        processing_class=tokenizer,
        callbacks=[metrics_callback],
        ref_model=ref_model,
    )
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    final_metrics = {key: value for key, value in output.metrics.items()}
    final_metrics.update(_last_train_metrics(run_dir / METRICS_FILE) if state.is_main_process else {})
    if eval_set is not None:
        final_metrics.update(trainer.evaluate())

    model_dir = run_dir / "model"
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
        _write_records(
            ws,
            run_id,
            run_dir,
            model_dir,
            dataset_id,
            manifest,
            model_path,
            config,
            stored_refs,
            final_metrics,
        )
    state.wait_for_everyone()
    return TrainResult(run_id=run_id, run_dir=run_dir, model_dir=model_dir, final_metrics=final_metrics)


def _staging_folder(model_dir: Path, state: Any) -> Path:
    """A temporary beside `model_dir` tagged with the main process (a workspace sweep leaves it alone
    while this run lives), the same on every rank: each one passes it to save_model."""
    from accelerate.utils import broadcast_object_list

    holder = [str(temporary_path(model_dir))]
    if state.num_processes > 1:
        broadcast_object_list(holder, from_process=0)
    return Path(holder[0])


def _resolve_run_id(
    ws: Workspace,
    dataset_id: str,
    model_path: Path,
    config: TrainConfig,
    run_id: str | None,
    resume: bool,
    state,
) -> str:
    from accelerate.utils import broadcast_object_list

    if resume and not run_id:
        raise ValueError("resume needs the run id of the run to continue (--run-id)")
    if run_id is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        run_id = f"run-{stamp}-{stable_hash([dataset_id, str(model_path), config.identity()], 8)}"
        holder = [run_id]
        if state.num_processes > 1:
            broadcast_object_list(holder, from_process=0)  # every rank must write to the same folder
        run_id = holder[0]
    if not resume and (ws.run_dir(run_id) / RUN_RECORD).exists():
        raise ValueError(f"run {run_id} already exists in {ws.runs_dir}; pick another run id or resume it")
    return run_id


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
    eval_steps is set (the end-of-training evaluation in train() happens either way)."""
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


def _write_records(
    ws: Workspace,
    run_id: str,
    run_dir: Path,
    model_dir: Path,
    dataset_id: str,
    manifest: dict[str, Any],
    model_path: Path,
    config: TrainConfig,
    stored_refs: bool,
    final_metrics: dict[str, Any],
) -> None:
    base_id = model_id(model_path)
    reference = manifest.get("reference_model") if stored_refs else None
    if reference is None:
        reference = {
            "id": base_id,
            "path": str(model_path),
            "source": "base model with the LoRA adapter disabled"
            if config.uses_lora
            else "frozen copy of the base",
        }
    else:
        reference = {**reference, "source": "log-probs stored in the dataset"}
    record = {
        "run_id": run_id,
        "dataset_id": dataset_id,
        "base_model": {"id": base_id, "path": str(model_path)},
        "reference_model": reference,
        "loss": {"name": config.loss, **config.loss_kwargs()},
        "finetuning": "lora" if config.uses_lora else "full",
        "config": config.as_dict(),
        "code_version": code_version(),
        "model_dir": str(model_dir),
        "final_metrics": final_metrics,
    }
    write_text_atomic(run_dir / RUN_RECORD, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    with Catalog(ws).batch() as catalog:
        record_model(catalog, model_path, role="base", identifier=base_id)
        catalog.record_artifact(
            run_id,
            "run",
            uri=str(run_dir),
            meta={key: record[key] for key in ("loss", "finetuning", "code_version")},
            parents={dataset_id: "trained_on", base_id: "base_model"},
        )
        # A separate edge: with the base as its own reference, one parent has two relations.
        catalog.record_edge(reference["id"], run_id, "reference_model")
        catalog.record_artifact(
            f"model-{run_id}",
            "model",
            uri=str(model_dir),
            meta={"role": "trained", "adapter": config.uses_lora, "base_model": base_id},
            parents={run_id: "produced"},
        )
