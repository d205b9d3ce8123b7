"""`report_to` with real experiment trackers and no server: a tiny model trains a few steps through
`dpop.train.train` and the run, read back from the tracker's own store, holds dpop's metrics (TRL's names
plus DPOP's), the dataset id, the reference model, the source files and the config.

MLflow: a `file:` tracking URI in tmp (mlflow-skinny). TensorBoard: the event files, read with
tensorboard's EventAccumulator."""

from __future__ import annotations

import json

import pytest

from dpop.config import TrainConfig
from dpop.train import train
from tests.pipeline._export_data import build_small_dataset, tiny_model

DPOP_METRICS = {
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "dpop/penalty",
    "dpop/penalty_active",
}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("trackers")
    dataset = build_small_dataset(root)
    return dataset, tiny_model(dataset, root / "model")


def config(report_to: str, **overrides) -> TrainConfig:
    """A few steps; each test sets its own seed (a run's id is its content: report_to is not part of it)."""
    values = dict(
        report_to=[report_to],
        max_steps=3,
        logging_steps=1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        save_strategy="no",
        disable_tqdm=True,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_mlflow_run_holds_metrics_dataset_lineage_and_config(small, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    dataset, model = small
    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "dpop-test")
    # MLflow 3 keeps its file store in maintenance mode behind this switch (a database is its default now)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")

    result = train(dataset.workspace, dataset.dataset_id, model, config("mlflow", seed=1))

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("dpop-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "the evaluation after training must land in the training run, not a new one"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == result.run_id
    metrics = run.data.metrics
    assert set(metrics) >= DPOP_METRICS and "loss" in metrics
    assert {f"eval_{name}" for name in DPOP_METRICS} <= set(metrics)  # the final evaluation's
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "dpop/penalty")]
    assert steps == [1, 2, 3]

    params, tags = run.data.params, run.data.tags
    assert params["dpop.dataset_id"] == tags["dpop.dataset_id"] == dataset.dataset_id
    assert params["dpop.reference_model"] == "frozen copy of the base model"
    assert params["dpop.sources"] == "chat, math" and params["dpop.licenses"] == "apache-2.0, mit"
    assert params["dpop.loss"] == "dpop" and float(params["dpop.penalty_lambda"]) == 50.0
    assert params["penalty_lambda"] == "50.0"  # the Trainer's own args: every TrainConfig field
    used = run.inputs.dataset_inputs
    assert [d.dataset.name for d in used] == [dataset.dataset_id]

    artifacts = tmp_path / "mlruns" / experiment.experiment_id / run.info.run_id / "artifacts" / "dpop"
    lineage = json.loads((artifacts / "lineage.json").read_text())
    assert {s["uri"] for s in lineage["sources"]} == {
        dataset.math_file.as_uri(),
        dataset.chat_file.as_uri(),
    }
    assert json.loads((artifacts / "config.json").read_text())["loss"] == "dpop"
    assert result.final_metrics["eval_loss"] == pytest.approx(metrics["eval_loss"])


def test_tensorboard_events_hold_metrics_and_the_dataset(small, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dataset, model = small
    logs = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logs))
    train(dataset.workspace, dataset.dataset_id, model, config("tensorboard", seed=2))

    scalars, texts = {}, {}
    for events in sorted(logs.glob("events.out.tfevents.*")):  # training's file, then the final eval's
        accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0, "scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars[tag] = [event.value for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["tensors"]:
            texts[tag] = accumulator.Tensors(tag)[0].tensor_proto.string_val[0].decode()
    assert {f"train/{name}" for name in DPOP_METRICS} <= set(scalars)
    assert len(scalars["train/dpop/penalty"]) == 3
    assert "eval/rewards/margins" in scalars
    context = texts["dpop/context/text_summary"]
    assert f"| dataset_id | {dataset.dataset_id} |" in context
    assert "| reference_model | frozen copy of the base model |" in context
    lineage = json.loads(texts["dpop/lineage/text_summary"])
    assert sorted(s["license"] for s in lineage["sources"]) == ["apache-2.0", "mit"]
    assert json.loads(texts["dpop/config/text_summary"])["penalty_lambda"] == 50.0


@pytest.fixture(scope="module")
def plain_run(small, tmp_path_factory):
    """One step with report_to none, from a working directory of its own."""
    dataset, model = small
    cwd = tmp_path_factory.mktemp("plain-run-cwd")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        result = train(dataset.workspace, dataset.dataset_id, model, config("none", max_steps=1, seed=3))
    return result, cwd


def test_no_tracker_means_no_tracker_files(plain_run):
    result, cwd = plain_run
    assert not (result.run_dir / "runs").exists() and not (cwd / "mlruns").exists()
    assert not list(cwd.iterdir())


def test_model_card_of_a_real_run(small, plain_run):
    """pipeline.cards.write_model_card on what dpop.train wrote: the card dpop's training stage is to write
    beside the model (README.md), read back with huggingface_hub; the folder still loads as a model."""
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    from pipeline.cards import write_model_card

    dataset, _ = small
    result, _ = plain_run
    path = write_model_card(dataset.workspace, result.run_dir)
    assert path == result.model_dir / "README.md"
    card = ModelCard.load(path)
    assert card.data.license == ["apache-2.0", "mit"] and card.data.library_name == "transformers"
    text = card.text
    assert f"on dataset version `{dataset.dataset_id}`, full fine-tuning" in text
    assert "| loss | dpop |" in text and "| penalty_lambda | 50.0 |" in text and "| max_steps | 1 |" in text
    assert f"| loss | {result.final_metrics['loss']:.6g} |" in text
    assert "| math | flat | mit | 40 | 0 | 0 | 40 |  |" in text
    assert AutoModelForCausalLM.from_pretrained(result.model_dir).num_parameters() > 0
