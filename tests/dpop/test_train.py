"""End-to-end training runs on the tiny model: outputs, references, resume, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from dpop.config import TrainConfig
from dpop.refs import compute_reference_logps
from dpop.train import train
from pipeline.catalog import Catalog
from tests.dpop.conftest import write_dataset

TRL_METRICS = {
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "ref_logps/chosen",
    "ref_logps/rejected",
    "dpop/penalty",
    "dpop/penalty_active",
    "logps/chosen_post_edit",
}


def small_config(**overrides) -> TrainConfig:
    values = dict(
        max_steps=4,
        logging_steps=1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        save_steps=100,
        disable_tqdm=True,
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_with_stored_reference_logps(workspace, tiny_model_dir):
    dataset_id = write_dataset(workspace, tiny_model_dir)
    ref_dataset = compute_reference_logps(workspace, dataset_id, tiny_model_dir, progress=False)
    result = train(workspace, ref_dataset, tiny_model_dir, small_config(penalty_lambda=5.0))

    run_id = result.run_id
    assert run_id.startswith("run-") and result.run_dir == workspace.run_dir(run_id)
    assert not result.reused and not result.resumed
    assert (result.model_dir / "model.safetensors").is_file()
    assert (result.model_dir / "tokenizer.json").is_file()
    assert not list(result.model_dir.glob("*.bin"))
    events = read_metrics(result.run_dir)
    train_events = [e for e in events if e["split"] == "train"]
    eval_events = [e for e in events if e["split"] == "eval"]
    assert [e["step"] for e in train_events] == [1, 2, 3, 4]
    assert len(eval_events) == 1 and eval_events[0]["step"] == 4
    for event in train_events + eval_events:
        assert set(event) >= TRL_METRICS, TRL_METRICS - set(event)
    # Step 1 runs before any update: the policy is the reference, so rewards are 0 and logps = ref.
    first = train_events[0]
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    assert first["logps/chosen"] == pytest.approx(first["ref_logps/chosen"], abs=1e-3)
    assert first["loss"] == pytest.approx(0.693147, abs=1e-4)
    # Metric definitions hold together.
    for event in train_events:
        assert event["rewards/margins"] == pytest.approx(
            event["rewards/chosen"] - event["rewards/rejected"], abs=1e-6
        )
        assert 0.0 <= event["dpop/penalty_active"] <= 1.0
        assert event["rewards/chosen"] == pytest.approx(
            0.1 * (event["logps/chosen"] - event["ref_logps/chosen"]), abs=1e-3
        )

    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["dataset_id"] == ref_dataset
    assert record["loss"] == {"name": "dpop", "beta": 0.1, "penalty_lambda": 5.0}
    assert record["reference_model"]["source"] == "log-probs stored in the dataset"
    assert record["final_metrics"]["eval_loss"] > 0 and record["code_version"]

    catalog = Catalog(workspace)
    parents = dict((relation, parent) for parent, relation in catalog.parents(run_id))
    assert parents["trained_on"] == ref_dataset
    assert parents["base_model"].startswith("model-")
    assert parents["reference_model"] == record["reference_model"]["id"]
    assert catalog.parents(f"model-{run_id}") == [(run_id, "produced")]

    # the same inputs again: the finished run is reused, nothing is trained or written
    stamp = (result.run_dir / "run.json").stat().st_mtime_ns
    again = train(workspace, ref_dataset, tiny_model_dir, small_config(penalty_lambda=5.0))
    assert again.reused and again.run_id == run_id and again.final_metrics == result.final_metrics
    assert (result.run_dir / "run.json").stat().st_mtime_ns == stamp


def test_lora_without_stored_refs_uses_base_with_adapter_disabled(workspace, tiny_model_dir):
    dataset_id = write_dataset(workspace, tiny_model_dir)
    config = small_config(lora_r=4, lora_alpha=8, max_steps=3, learning_rate=5e-3)
    result = train(workspace, dataset_id, tiny_model_dir, config)
    events = [e for e in read_metrics(result.run_dir) if e["split"] == "train"]
    # A fresh adapter (B = 0) leaves the policy equal to its base: exact zero rewards at step 1 ...
    assert events[0]["rewards/chosen"] == 0.0 and events[0]["rewards/rejected"] == 0.0
    # ... and afterwards the reference stays the base, so ref logps differ from the policy's.
    assert events[-1]["logps/chosen"] != events[-1]["ref_logps/chosen"]
    assert (result.model_dir / "adapter_model.safetensors").is_file()
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["finetuning"] == "lora"
    assert record["reference_model"]["source"] == "base model with the LoRA adapter disabled"


def test_full_finetuning_without_refs_uses_a_frozen_copy(workspace, tiny_model_dir):
    dataset_id = write_dataset(workspace, tiny_model_dir)
    result = train(workspace, dataset_id, tiny_model_dir, small_config(max_steps=2, eval_steps=None))
    events = [e for e in read_metrics(result.run_dir) if e["split"] == "train"]
    assert events[0]["rewards/chosen"] == 0.0
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["reference_model"]["source"] == "frozen copy of the base"
    # the frozen reference still gives the base model's log-probs at the end (compare with stored refs)
    ref_dataset = compute_reference_logps(workspace, dataset_id, tiny_model_dir, progress=False)
    stored = train(workspace, ref_dataset, tiny_model_dir, small_config(max_steps=2))
    stored_events = [e for e in read_metrics(stored.run_dir) if e["split"] == "train"]
    for ours, theirs in zip(events, stored_events, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
        assert ours["ref_logps/chosen"] == pytest.approx(theirs["ref_logps/chosen"], abs=1e-3)


def test_resume_continues_exactly(workspace, tiny_model_dir):
    dataset_id = compute_reference_logps(
        workspace, write_dataset(workspace, tiny_model_dir, train=40), tiny_model_dir, progress=False
    )
    config = small_config(max_steps=6, save_steps=3, per_device_train_batch_size=4)
    straight = train(workspace, dataset_id, tiny_model_dir, config)
    straight_weights = load_file(straight.model_dir / "model.safetensors")
    straight_losses = [e["loss"] for e in read_metrics(straight.run_dir) if e["split"] == "train"]

    # The same run, killed after its step-3 checkpoint while writing its step-6 one: remove what it
    # wrote after step 3 and leave a half-written checkpoint-6 (no trainer_state.json, written last).
    run_dir = straight.run_dir
    for name in ("model", "run.json", "stage.json"):
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (run_dir / "checkpoint-6" / "trainer_state.json").unlink()
    resumed = train(workspace, dataset_id, tiny_model_dir, config)  # the same run id: it resumes
    assert resumed.run_id == straight.run_id and resumed.resumed and not resumed.reused
    resumed_losses = [e["loss"] for e in read_metrics(resumed.run_dir) if e["split"] == "train"]
    assert len(resumed_losses) == 6  # metrics of steps 1-3 kept, 4-6 replayed once
    assert resumed_losses == pytest.approx(straight_losses, abs=1e-5)
    resumed_weights = load_file(resumed.model_dir / "model.safetensors")
    for name, tensor in straight_weights.items():
        assert torch.allclose(resumed_weights[name], tensor, atol=1e-5), name


def test_clear_errors(workspace, tiny_model_dir, tmp_path):
    dataset_id = write_dataset(
        workspace, tiny_model_dir, dataset_id="mismatch", tokenizer_sha256_override="f" * 64
    )
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        train(workspace, dataset_id, tiny_model_dir, small_config())
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        compute_reference_logps(workspace, dataset_id, tiny_model_dir, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(workspace, dataset_id, tmp_path / "no-model", small_config())
    with pytest.raises(RuntimeError, match="not found"):
        train(workspace, "no-such-dataset", tiny_model_dir, small_config())
    assert not workspace.runs_dir.exists()  # every refusal came before a run folder was made
