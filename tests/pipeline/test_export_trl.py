"""An exported folder is what TRL's `DPOTrainer` trains on as it is: `load_dataset(DIR)`, then one step with a
tiny model and tokenizer, in each style (see tests/dpop/test_trl_agreement.py for how TRL is driven here)."""

from __future__ import annotations

import math

import pytest

from pipeline.export import export_dataset
from tests.pipeline._export_data import build_small_dataset, tiny_model


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-trl")
    dataset = build_small_dataset(root)
    return dataset, tiny_model(dataset, root / "model")


@pytest.mark.slow
@pytest.mark.parametrize("style", ["conversational", "standard"])
def test_dpo_trainer_trains_a_step_on_the_exported_folder(small, tmp_path, style):
    trl = pytest.importorskip("trl")
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dataset, model_dir = small
    out = export_dataset(dataset.workspace, dataset.dataset_id, tmp_path / "export", style=style).out_dir
    data = load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))
    config = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        eval_strategy="steps",
        eval_steps=1,
        logging_steps=1,
        max_length=256,
        activation_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = trl.DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=config,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    output = trainer.train()
    assert output.global_step == 1
    logged = {key: value for entry in trainer.state.log_history for key, value in entry.items()}
    # one step from the reference itself: rewards are 0 and the loss is log 2
    assert logged["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert math.isfinite(logged["eval_loss"]) and logged["logps/chosen"] < 0
