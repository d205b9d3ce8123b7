"""Fixtures for the trainer tests: a tiny tokenizer and Llama model (built once per session), and small
dpop_shard datasets written directly with pipeline.shards from tokenised synthetic arithmetic pairs."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from dpop.model_io import tokenizer_sha256
from pipeline.identity import pair_id
from pipeline.shards import shard_schema, write_manifest, write_split
from pipeline.workspace import Workspace

WORDS = ["apples", "pears", "boxes", "coins", "marbles", "pencils", "stickers", "books", "cards", "shells"]


def synthetic_pairs(count: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """Word problems with a correct answer and one wrong by a digit: low-edit pairs of varied length."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        word = rng.choice(WORDS)
        prompt = f"Sam has {a} {word} and gets {b} more. " * rng.randint(1, 3) + "How many now?"
        steps = " ".join(f"Step {i}: keep {a} {word}." for i in range(rng.randint(0, 4)))
        chosen = f"{steps} {a} + {b} = {a + b}. The answer is {a + b}.".strip()
        rejected = f"{steps} {a} + {b} = {a + b + 1}. The answer is {a + b + 1}.".strip()
        pairs.append((prompt, chosen, rejected))
    return pairs


@pytest.fixture(autouse=True)
def _private_digest_cache(tmp_path_factory, monkeypatch) -> None:
    """Model folders' file digests (dpop.model_io) cached in the session's own folder, not ~/.cache."""
    monkeypatch.setenv("DPOP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dpop-cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from demo.tiny_model import make_tiny_model
    from demo.tiny_tokenizer import train_tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    texts = [" ".join(pair) for pair in synthetic_pairs(200, seed=99)]
    tokenizer = train_tiny_tokenizer(texts, root / "tokenizer", vocab_size=320)
    return make_tiny_model(tokenizer, root / "model", num_layers=2, hidden_size=32, num_heads=2)


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy (tests that must not touch the shared folder)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def tokenised_rows(model_dir: Path, pairs: list[tuple[str, str, str]]) -> list[dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for prompt, chosen, rejected in pairs:
        messages = [{"role": "user", "content": prompt}]
        prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        chosen_ids = tokenizer(chosen, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rejected_ids = tokenizer(rejected, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        common = 0
        while common < min(len(chosen_ids), len(rejected_ids)) and chosen_ids[common] == rejected_ids[common]:
            common += 1
        rows.append(
            {
                "pair_id": pair_id(messages, chosen, rejected),
                "prompt_ids": prompt_ids,
                "chosen_ids": chosen_ids,
                "rejected_ids": rejected_ids,
                "ref_chosen_logps": None,
                "ref_rejected_logps": None,
                "common_prefix_len": common,
                "edit_ratio": 0.05,
            }
        )
    return rows


def write_dataset(
    workspace: Workspace,
    model_dir: Path,
    train: int = 32,
    eval: int = 8,
    seed: int = 0,
    dataset_id: str = "synthetic-0001",
    rows_per_shard: int = 20,
    tokenizer_sha256_override: str | None = None,
) -> str:
    """A dpop_shard dataset version (no reference log-probs) in `workspace`; returns its id."""
    out_dir = workspace.dataset_dir(dataset_id)
    splits = {}
    pairs = synthetic_pairs(train + eval, seed=seed)
    for split, chunk in (("train", pairs[:train]), ("eval", pairs[train:])):
        table = pa.Table.from_pylist(tokenised_rows(model_dir, chunk), schema=shard_schema())
        infos = write_split(out_dir, split, table, rows_per_shard=rows_per_shard)
        splits[split] = {"rows": table.num_rows, "shards": [info.as_dict() for info in infos]}
    write_manifest(
        out_dir,
        {
            "dataset_id": dataset_id,
            "parents": [],
            "tokenizer": {
                "path": str(model_dir),
                "sha256": tokenizer_sha256_override or tokenizer_sha256(model_dir),
                "pad_token_id": 0,
            },
            "max_length": 1024,
            "reference_model": None,
            "splits": splits,
        },
    )
    return dataset_id
