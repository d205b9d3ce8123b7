"""With λ = 0, the same initial weights and the same batches, our per-step losses match TRL's DPOTrainer
(loss_type="sigmoid") within 1e-4 over the first 10 steps: DPOP with λ = 0 is DPO, computed the same way."""

from __future__ import annotations

import json

import pytest

from dpop.config import TrainConfig
from dpop.refs import compute_reference_logps
from dpop.train import train
from tests.dpop.conftest import write_dataset

STEPS = 10
SHARED = dict(learning_rate=2e-3, max_steps=STEPS, per_device_train_batch_size=4, seed=7, logging_steps=1)


def trl_losses(workspace, dataset_id, model_dir, tmp_path) -> list[float]:
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.shards import open_split

    class PretokenizedDPOTrainer(trl.DPOTrainer):
        """Our shards already hold TRL's tokenised columns (prompt_ids, chosen_ids, rejected_ids)."""

        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    table = open_split(workspace, dataset_id, "train").select(["prompt_ids", "chosen_ids", "rejected_ids"])
    config = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"),
        loss_type="sigmoid",
        beta=0.1,
        max_length=None,
        precompute_ref_log_probs=False,
        activation_checkpointing=False,  # TRL turns it on by default; ours is off
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        data_seed=SHARED["seed"],
        optim="adamw_torch",
        **SHARED,
    )
    trainer = PretokenizedDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=config,
        train_dataset=Dataset(table),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.slow
def test_dpo_losses_match_trl(workspace, tiny_model_dir, tmp_path):
    dataset_id = compute_reference_logps(
        workspace, write_dataset(workspace, tiny_model_dir, train=48), tiny_model_dir, progress=False
    )
    config = TrainConfig(
        loss="dpop",
        penalty_lambda=0.0,
        beta=0.1,
        group_by_length=False,
        disable_tqdm=True,
        save_steps=1000,
        optim="adamw_torch",
        **SHARED,
    )
    result = train(workspace, dataset_id, tiny_model_dir, config)
    events = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    ours = [event["loss"] for event in events if event["split"] == "train"]
    theirs = trl_losses(workspace, dataset_id, tiny_model_dir, tmp_path)
    assert len(ours) == len(theirs) == STEPS
    assert ours == pytest.approx(theirs, abs=1e-4)
    assert max(ours) - min(ours) > 1e-3  # the losses moved: the comparison covers real updates
