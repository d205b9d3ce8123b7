"""Decontamination: drop pairs that share a word n-gram with an evaluation set.

Texts are lower-cased and cut into words (runs of Unicode word characters, punctuation dropped), as
GPT-3's contamination check did with n = 13. Each n-gram becomes one 64-bit polynomial hash of its
word hashes, computed for all positions of all texts at once with numpy (n array passes, no per-row
loop); the evaluation set's n-grams are a sorted hash array, and a pair is contaminated when any of
its n-grams is found there. A hash collision could only flag a clean pair (never miss a dirty one),
at a rate of about (pair n-grams x eval n-grams) / 2^64: none in practice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

_BASE = np.uint64(0x100000001B3)  # FNV prime: an odd multiplier spreads the word hashes


def ngram_hashes(texts: pa.Array | pa.ChunkedArray | pl.Series, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hash of every word n-gram, index of the text it comes from) for a column of texts."""
    series = texts if isinstance(texts, pl.Series) else pl.Series(texts)
    words = series.str.to_lowercase().str.extract_all(r"\w+").to_arrow()
    if isinstance(words, pa.ChunkedArray):
        words = words.combine_chunks()
    flat = pc.list_flatten(words)
    owner = pc.list_parent_indices(words).to_numpy().astype(np.int64)
    if len(flat) < n:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    word_hash = pl.Series(flat, dtype=pl.String).hash(seed=0).to_numpy()
    positions = len(word_hash) - n + 1
    combined = np.zeros(positions, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            combined = combined * _BASE + word_hash[k : k + positions]
    # an n-gram is real only when its first and last words belong to the same text
    valid = owner[:positions] == owner[n - 1 :]
    return combined[valid], owner[:positions][valid]


class EvalNgrams:
    """The n-gram hashes of an evaluation JSONL file's text fields (e.g. GSM8K test `question`, `answer`)."""

    def __init__(self, path: str | os.PathLike[str], fields: tuple[str, ...], n: int):
        self.path, self.fields, self.n = Path(path), tuple(fields), n
        if not self.path.is_file():
            raise FileNotFoundError(f"decontamination file {self.path} not found")
        texts = []
        with open(self.path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"decontamination file {self.path} line {line_number}: {error}"
                    ) from error
                for field in self.fields:
                    value = record.get(field) if isinstance(record, dict) else None
                    if not isinstance(value, str):
                        raise ValueError(
                            f"decontamination file {self.path} line {line_number}: field {field!r} is not a string"
                        )
                    texts.append(value)
        hashes, _ = ngram_hashes(pl.Series(texts, dtype=pl.String), n)
        self.hashes = np.unique(hashes)

    def contaminated(
        self, texts: pa.Array | pa.ChunkedArray | pl.Series, rows: int | None = None
    ) -> np.ndarray:
        """Boolean per text: does it share an n-gram with the evaluation set?"""
        rows = len(texts) if rows is None else rows
        hashes, owner = ngram_hashes(texts, self.n)
        hit = np.zeros(rows, dtype=bool)
        if hashes.size and self.hashes.size:
            where = np.searchsorted(self.hashes, hashes).clip(max=self.hashes.size - 1)
            hit[owner[self.hashes[where] == hashes]] = True
        return hit

    def pair_mask(self, frame: pl.DataFrame, check: tuple[str, ...]) -> pl.Series:
        """True for pairs whose prompt (any message) or responses, as listed in `check`, are contaminated."""
        mask = np.zeros(frame.height, dtype=bool)
        for column in check:
            if column == "prompt":
                messages = frame.select(pl.col("prompt").list.explode(keep_nulls=False, empty_as_null=False))
                prompt_owner = frame.select(
                    pl.int_range(pl.len()).repeat_by(pl.col("prompt").list.len()).explode()
                )
                contents = messages.to_series().struct.field("content")
                hit = self.contaminated(contents)
                mask[prompt_owner.to_series().to_numpy()[hit]] = True
            else:
                mask |= self.contaminated(frame[column])
        return pl.Series("contaminated", mask)
