"""`TinyModelStage`: the demo's base model (a tokenizer trained on the ingested pairs and a tiny Llama)
as a stage: its id is the pair tables' ids, the sizes and the seed, the same in two workspaces; the
second run reuses it; the model loads and its id is the stage's."""

from __future__ import annotations

import json

import pytest

from demo.defaults import TinyModel
from demo.synth_math import write_math_pairs
from demo.tiny_model import TinyModelStage
from dpop.model_io import model_id
from pipeline.catalog import Catalog
from pipeline.ingest import IngestStage, ingest_source
from pipeline.stage import run_stage
from pipeline.workspace import Workspace

SMALL = {"vocab_size": 300, "layers": 1, "hidden_size": 16, "heads": 2}


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_math_pairs(tmp_path_factory.mktemp("data") / "math.jsonl", 40, seed=1)


def test_same_ingests_and_settings_give_one_model_in_two_workspaces(pairs_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    records = []
    for name in ("one", "two"):
        ws = Workspace.open(tmp_path / name)
        ingest = run_stage(ws, IngestStage(pairs_file))
        records.append((ws, ingest, run_stage(ws, TinyModelStage((ingest,), {**SMALL, "seed": 3}))))
    (ws, ingest, first), (_, _, second) = records
    assert first.id == second.id and first.id.startswith("tiny-") and not second.reused
    model = first.output("model")
    folder = model.location(ws)
    assert model.id == f"model-{first.id}" == model_id(folder)
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert loaded.config.num_hidden_layers == 1 and loaded.config.hidden_size == 16
    assert len(AutoTokenizer.from_pretrained(folder)) == loaded.config.vocab_size <= 300
    assert not (folder / "tokenizer").exists()  # trained inside the stage, kept only in the model folder
    assert Catalog(ws).parents(model.id) == [(f"pairs-{ingest.id}", "tokenizer_trained_on")]
    assert run_stage(ws, TinyModelStage((ingest,), {**SMALL, "seed": 3})).reused


def test_the_id_follows_settings_seed_and_data(pairs_file, tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    [result] = ingest_source(pairs_file, ws)
    record = run_stage(ws, IngestStage(pairs_file))
    base = TinyModelStage((result,), SMALL, seed=3)
    assert TinyModelStage((record,), {**SMALL, "seed": 3}).id == base.id  # a record or a result: one input
    assert TinyModelStage((result,), TinyModel(**SMALL), seed=3).id == base.id
    assert TinyModelStage((result,), SMALL, seed=4).id != base.id
    assert TinyModelStage((result,), {**SMALL, "layers": 2}, seed=3).id != base.id
    other = pairs_file.with_name("other.jsonl")
    other.write_text(json.dumps({"prompt": "1 + 1?", "chosen": "2", "rejected": "3"}) + "\n")
    [more] = ingest_source(other, ws)
    assert (
        TinyModelStage((result, more), SMALL, seed=3).id == TinyModelStage((more, result), SMALL, seed=3).id
    )
    assert TinyModelStage((result, more), SMALL, seed=3).id != base.id
    with pytest.raises(ValueError, match="needs ingested pairs"):
        TinyModelStage((), SMALL)
