"""On real data: ingest LLaMA-Factory's dpo_en_demo, build shards, store reference log-probs, train a few steps."""

from __future__ import annotations

import json

import pytest

from dpop.config import TrainConfig
from dpop.data import ShardDataset
from dpop.refs import compute_reference_logps
from dpop.train import train


@pytest.mark.real_data
@pytest.mark.slow
def test_refs_and_train_on_shards_built_from_real_data(workspace, shared_data, tiny_model_dir):
    from pipeline.build import build_dataset
    from pipeline.ingest import ingest_source

    ingest_source(shared_data / "hiyouga_LLaMA-Factory" / "dpo_en_demo.json", workspace)
    # the tiny byte-level tokenizer spends many tokens per word: room for most of the demo pairs
    config = {"tokenize": {"max_length": 2048, "max_prompt_length": 1024}, "split": {"eval_fraction": 0.1}}
    built = build_dataset(workspace, config, tiny_model_dir)
    assert built.train_rows > 100

    ref_id = compute_reference_logps(workspace, built.dataset_id, tiny_model_dir, progress=False)
    train_set = ShardDataset.open(workspace, ref_id, "train")
    assert train_set.has_reference_logps() and len(train_set) == built.train_rows
    assert train_set.lengths().max() <= 2048

    result = train(
        workspace,
        ref_id,
        tiny_model_dir,
        TrainConfig(
            max_steps=3, per_device_train_batch_size=4, logging_steps=1, learning_rate=1e-3, disable_tqdm=True
        ),
    )
    events = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["split"] == "train"] == [1, 2, 3]
    first = events[0]
    assert first["loss"] == pytest.approx(0.693147, abs=1e-4)
    assert first["logps/chosen"] == pytest.approx(first["ref_logps/chosen"], abs=1e-2)
    assert all(e["loss"] > 0 for e in events)
