"""A small real dataset version for the export, card and tracker tests: two source files, each under a folder
with a LICENSE file (MIT beside one, Apache-2.0 two levels above the other, as published datasets ship them),
ingested and built by the real stages, with a tiny tokenizer (and, for training, a tiny model) of its own."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from demo.synth_math import write_math_pairs
from pipeline.build import build_dataset
from pipeline.ingest import ingest_source
from pipeline.workspace import Workspace

MIT = """MIT License

Copyright (c) 2024 Example Maths

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction."""

APACHE = """
                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/

   TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION"""

CURATION = {
    "split": {"eval_fraction": 0.25},
    "tokenize": {"max_length": 384, "max_prompt_length": 192},
    "shards": {"rows_per_shard": 16},
}


@dataclass(frozen=True)
class SmallDataset:
    workspace: Workspace
    dataset_id: str
    tokenizer: Path
    math_file: Path
    chat_file: Path


def chat_rows() -> list[dict]:
    """Flat rows with a system text and scores; one without `rejected` (an ingest rejection) and one
    repeating an earlier pair (a curation rejection, `duplicate_pair`)."""
    rows = [
        {
            "system": "You are terse.",
            "prompt": f"Name a colour number {i}.",
            "chosen": f"Blue {i}.",
            "rejected": f"Bleu {i}.",
            "chosen_score": 8.0,
            "rejected_score": 3.5,
        }
        for i in range(12)
    ]
    rows.append({"prompt": "Broken row", "chosen": "no rejected side"})
    rows.append(dict(rows[0]))
    return rows


def write_sources(root: Path) -> tuple[Path, Path]:
    maths = root / "data" / "maths"
    maths.mkdir(parents=True)
    (maths / "LICENSE").write_text(MIT)
    math_file = write_math_pairs(maths / "math.jsonl", n=40, seed=3)
    chat_dir = root / "data" / "chat" / "v1" / "jsonl"
    chat_dir.mkdir(parents=True)
    (root / "data" / "chat" / "LICENSE.txt").write_text(APACHE)
    chat_file = chat_dir / "chat.jsonl"
    chat_file.write_text("".join(json.dumps(row) + "\n" for row in chat_rows()))
    return Path(math_file), chat_file


def build_small_dataset(root: Path) -> SmallDataset:
    from demo.tiny_tokenizer import train_tiny_tokenizer

    ws = Workspace.open(root / "ws")
    math_file, chat_file = write_sources(root)
    for source in (math_file, chat_file):
        ingest_source(source, ws)
    texts = [line for path in (math_file, chat_file) for line in path.read_text().splitlines()]
    tokenizer = train_tiny_tokenizer(texts, root / "tokenizer", vocab_size=320)
    result = build_dataset(ws, CURATION, tokenizer)
    return SmallDataset(ws, result.dataset_id, tokenizer, math_file, chat_file)


def tiny_model(dataset: SmallDataset, out: Path) -> Path:
    from demo.tiny_model import make_tiny_model

    return make_tiny_model(dataset.tokenizer, out, num_layers=2, hidden_size=32, num_heads=2)
