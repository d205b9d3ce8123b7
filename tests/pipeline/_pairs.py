"""Contract-conformant pair tables for pipeline tests, written as the ingest stage writes them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.contracts import load_contract
from pipeline.identity import pair_id


def pair_table(rows: list[dict], source_uri: str = "file:///data/test.jsonl") -> pa.Table:
    """rows: dicts with `prompt` (str or messages), `chosen`, `rejected`, optional scores."""
    sha = hashlib.sha256(source_uri.encode()).hexdigest()
    records = []
    for index, row in enumerate(rows):
        prompt = row["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        records.append(
            {
                "pair_id": pair_id(prompt, row["chosen"], row["rejected"]),
                "prompt": prompt,
                "chosen": row["chosen"],
                "rejected": row["rejected"],
                "chosen_score": row.get("chosen_score"),
                "rejected_score": row.get("rejected_score"),
                "source": "test:jsonl",
                "source_uri": source_uri,
                "source_row": row.get("source_row", index),
                "source_sha256": sha,
            }
        )
    contract = load_contract("preference_pair")
    schema = contract.schema([c for c in contract.columns if c in records[0]]) if records else None
    return contract.conform(pa.Table.from_pylist(records, schema=schema))


@dataclass(frozen=True)
class FakeIngest:
    """The attributes of pipeline.ingest.IngestResult that the build reads."""

    ingest_id: str
    source_uri: str
    pairs_path: Path
    rejections_path: Path


def write_ingest(root: Path, rows: list[dict], name: str = "test") -> FakeIngest:
    uri = f"file:///data/{name}.jsonl"
    table = pair_table(rows, uri)
    ingest_id = hashlib.sha256(name.encode()).hexdigest()[:16]
    folder = root / "sources" / ingest_id
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "pairs.parquet")
    rejections = load_contract("rejection").schema().empty_table()
    pq.write_table(rejections, folder / "rejections.parquet")
    return FakeIngest(ingest_id, uri, folder / "pairs.parquet", folder / "rejections.parquet")


MATH_TEXTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? It is 72. The answer is 72.",
    "Weng earns $12 an hour for babysitting. Yesterday she did 50 minutes. She earned $10.",
    "What is 2+2? It is 4. What is 3+3? It is 6. 0 1 2 3 4 5 6 7 8 9",
]


def tiny_tokenizer(folder: Path) -> Path:
    """A tiny byte-level BPE with the ChatML-like template (see demo.tiny_tokenizer)."""
    from demo.tiny_tokenizer import train_tiny_tokenizer

    return train_tiny_tokenizer(MATH_TEXTS * 4, folder, vocab_size=300)
