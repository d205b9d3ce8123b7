"""Log-probs, SFT and training as stages: ids are content (the same in two workspaces, from byte-identical
models at different paths), a second run reuses, and the catalog rows and OpenLineage events are the
record's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dpop.config import TrainConfig
from dpop.model_io import model_id
from dpop.refs import LogpsStage, reference_dataset_id
from dpop.sft import SFTConfig, SFTStage
from dpop.train import TrainStage, train
from pipeline.catalog import Catalog
from pipeline.openlineage import reset_clients
from pipeline.stage import read_record, run_stage
from pipeline.workspace import Workspace
from tests.dpop.conftest import write_dataset


@pytest.fixture(autouse=True)
def _events_in_the_workspace(monkeypatch):
    for name in ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG", "OPENLINEAGE_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENLINEAGE_CONFIG", "/nonexistent/openlineage.yml")
    reset_clients()
    yield
    reset_clients()


@pytest.fixture
def two_places(tiny_model_dir, tmp_path) -> list[tuple[Workspace, Path]]:
    """Two workspaces, each with the same dataset version and its own byte-identical model copy."""
    places = []
    for name in ("one", "two"):
        ws = Workspace.open(tmp_path / name / "ws")
        model = Path(shutil.copytree(tiny_model_dir, tmp_path / name / f"model-{name}"))
        write_dataset(ws, model, train=12, eval=4)
        places.append((ws, model))
    return places


def config(**overrides) -> TrainConfig:
    values = dict(
        max_steps=2, logging_steps=1, per_device_train_batch_size=4, save_steps=100, disable_tqdm=True
    )
    return TrainConfig(**{**values, **overrides})


def events(ws: Workspace) -> list[tuple[str, str]]:
    lines = ws.lineage_events_path.read_text().splitlines()
    return [(e["job"]["name"], e["eventType"]) for e in map(json.loads, lines)]


def test_logps_stage_id_is_content_and_reused(two_places):
    (ws1, model1), (ws2, model2) = two_places
    stages = [LogpsStage("synthetic-0001", model1), LogpsStage("synthetic-0001", model2)]
    assert stages[0].id == stages[1].id == reference_dataset_id("synthetic-0001", model_id(model1), "float32")
    assert stages[0].id.startswith("synthetic-0001-ref-")
    assert LogpsStage("synthetic-0001", model1, "bfloat16").id != stages[0].id

    first = run_stage(ws1, stages[0])
    assert not first.reused and run_stage(ws2, stages[1]).id == first.id
    again = run_stage(ws1, LogpsStage("synthetic-0001", model1))
    assert again.reused and again.to_json() == first.to_json()
    assert events(ws1) == [("logps", "START"), ("logps", "COMPLETE")]  # the reuse published nothing

    catalog = Catalog(ws1)
    dataset = catalog.get(first.id)
    assert dataset.rows == first.output("dataset").rows == 16 and dataset.meta["stage_id"] == first.id
    assert set(catalog.parents(first.id)) == {(i.artifact.id, i.relation) for i in first.inputs}
    shards = [a for a in first.outputs if a.kind == "shard"]
    assert {catalog.get(a.id).rows for a in shards} == {a.rows for a in shards}


def test_sft_stage_id_is_content_not_path(two_places):
    (ws1, model1), (ws2, model2) = two_places
    settings = SFTConfig(steps=2, batch_size=4)
    one, two = SFTStage(model1, "synthetic-0001", settings), SFTStage(model2, "synthetic-0001", settings)
    assert one.id == two.id and one.id.startswith("sft-")
    assert SFTStage(model1, "synthetic-0001", SFTConfig(steps=3, batch_size=4)).id != one.id
    records = [run_stage(ws1, one), run_stage(ws2, two)]
    assert [r.output("model").id for r in records] == [f"model-{one.id}"] * 2
    assert records[0].summary["losses"] == records[1].summary["losses"]
    assert {(i.artifact.id, i.relation) for i in records[0].inputs} == {
        (model_id(model1), "sft_from"),
        ("synthetic-0001", "sft_on"),
    }
    assert run_stage(ws1, SFTStage(model1, "synthetic-0001", settings)).reused
    assert set(Catalog(ws1).parents(f"model-{one.id}")) == {
        (model_id(model1), "sft_from"),
        ("synthetic-0001", "sft_on"),
    }


def test_train_stage_id_is_content_not_path(two_places, monkeypatch):
    (ws1, model1), (ws2, model2) = two_places
    assert (
        TrainStage("synthetic-0001", model1, config()).id == TrainStage("synthetic-0001", model2, config()).id
    )
    base = TrainStage("synthetic-0001", model1, config())
    assert base.id.startswith("run-")
    assert TrainStage("synthetic-0001", model1, config(learning_rate=1e-3)).id != base.id
    assert TrainStage("synthetic-0001", model1, config(logging_steps=2)).id == base.id  # how often it logs
    same = config()  # made first: a TrainConfig sets accelerate up for the processes it finds
    monkeypatch.setenv("WORLD_SIZE", "2")  # two processes: twice the global batch, another run
    assert TrainStage("synthetic-0001", model1, same).id != base.id


def test_training_in_two_workspaces_makes_one_run_and_model_id(two_places):
    (ws1, model1), (ws2, model2) = two_places
    results = [train(ws, "synthetic-0001", model, config()) for ws, model in two_places]
    assert results[0].run_id == results[1].run_id
    record = read_record(results[0].run_dir)
    assert record.id == results[0].run_id and record.summary["resumed"] is False
    model = record.output("model")
    assert model.id == f"model-{record.id}" == model_id(results[0].model_dir)  # the stage's id, not a hash
    assert model.location(ws1) == results[0].model_dir
    card = (results[0].model_dir / "README.md").read_text(encoding="utf-8")  # the model card
    assert "synthetic-0001" in card and "penalty" in card.lower()

    catalog = Catalog(ws1)
    assert dict((r, p) for p, r in catalog.parents(record.id)) == {
        "trained_on": "synthetic-0001",
        "base_model": model_id(model1),
        "reference_model": model_id(model1),  # no stored log-probs: the base is the reference
    }
    assert catalog.parents(model.id) == [(record.id, "produced")]
    assert catalog.get(record.id).meta["loss"] == {"name": "dpop", "beta": 0.1, "penalty_lambda": 50.0}
    assert events(ws1) == [("train", "START"), ("train", "COMPLETE")]

    again = train(ws1, "synthetic-0001", model1, config())
    assert again.reused and again.final_metrics == results[0].final_metrics
    assert events(ws1) == [("train", "START"), ("train", "COMPLETE")]


def test_a_reference_that_is_not_the_dataset_one_is_refused(two_places, tmp_path):
    (ws1, model1), _ = two_places
    refs = run_stage(ws1, LogpsStage("synthetic-0001", model1))
    other = Path(shutil.copytree(model1, tmp_path / "other"))
    (other / "generation_config.json").write_text("{}")  # other bytes: another model
    with pytest.raises(ValueError, match=f"holds the log-probs of reference model {model_id(model1)}"):
        train(ws1, refs.id, model1, config(), reference=other)
    with pytest.raises(ValueError, match="stores no log-probs"):
        train(ws1, "synthetic-0001", model1, config(), reference=other)
    assert not ws1.runs_dir.exists()
