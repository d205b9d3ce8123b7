"""Small slices of the real data in ../shared/data and a tiny base model, for the flow tests.

Slices are written into the test's tmp folder (never into the repo); the tiny model is a Llama with a
byte-level BPE trained on the slices' text, so training a few steps takes seconds on a CPU."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

from pipeline.workspace import Workspace


def hh_slice(shared: Path, out: Path, rows: int) -> Path:
    path = out / "hh-harmless.jsonl"
    with gzip.open(
        shared / "anthropics_hh-rlhf/harmless-base/test.jsonl.gz", "rt", encoding="utf-8"
    ) as handle:
        path.write_text("".join(itertools.islice(handle, rows)), encoding="utf-8")
    return path


def json_array_slice(source: Path, path: Path, rows: int) -> Path:
    records = json.loads(source.read_text(encoding="utf-8"))[:rows]
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def pandalm_slice(shared: Path, out: Path, rows: int) -> Path:
    return json_array_slice(shared / "WeOpenML_PandaLM/testset-v1.json", out / "pandalm.json", rows)


def llamafactory_slice(shared: Path, out: Path, rows: int) -> Path:
    return json_array_slice(
        shared / "hiyouga_LLaMA-Factory/dpo_en_demo.json", out / "llamafactory-en.json", rows
    )


def tiny_base_model(ws: Workspace, texts_from: list[Path]) -> Path:
    """A tokenizer trained on the files' text and a 1-layer Llama over it, in <ws>/models/base."""
    from demo.tiny_model import make_tiny_model
    from demo.tiny_tokenizer import train_tiny_tokenizer

    texts = [line for path in texts_from for line in path.read_text(encoding="utf-8").splitlines()][:400]
    tokenizer = train_tiny_tokenizer(texts, ws.root.parent / "tokenizer", vocab_size=384)
    return make_tiny_model(tokenizer, ws.models_dir / "base", num_layers=1, hidden_size=32, num_heads=2)


CURATION = {"split": {"eval_fraction": 0.2}, "tokenize": {"max_length": 384, "max_prompt_length": 192}}
TRAINING = {
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 8,
    "learning_rate": 1e-3,
    "logging_steps": 1,
    "save_steps": 1,
    "disable_tqdm": True,
}


def chain_spec(data: Path, base: Path, training: dict | None = None, **fields):
    """The ChainSpec the flow tests run: the sources in `data`, the tiny base model, no SFT."""
    from flows.chain import ChainSpec

    return ChainSpec(
        sources=(str(data),),
        base_model=str(base),
        curation=CURATION,
        training=(training or TRAINING,),
        **fields,
    )


def run_flow(ws: Workspace, spec, **options) -> dict:
    """`data_to_model_flow` as a deployment calls it: the workspace and the spec's JSON."""
    from flows.data_to_model import data_to_model_flow

    return data_to_model_flow(workspace=str(ws.root), spec=spec.to_json(), **options)
