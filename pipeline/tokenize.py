"""Tokenise pairs into dpop_shard rows with a Hugging Face tokenizer from a local folder.

Prompt: the tokenizer's chat template over the prompt messages with `add_generation_prompt=True`;
without a chat template, the plain template

    <bos>User: <content>\\n\\nAssistant: <content>\\n\\n ... Assistant:<space>

(roles title-cased, messages joined by a blank line, BOS only when the tokenizer has one). Responses
are tokenised as they are, without special tokens, and EOS is appended to each.

Truncation rule ("keep_prompt_end_reject_long_response"): the prompt keeps its LAST
`max_prompt_length` tokens (the question sits at the end of a conversation); then a pair whose prompt
plus chosen or prompt plus rejected exceeds `max_length` is rejected as `too_long` (stage tokenize),
never cut, because a cut response is a different response.

Texts go through the fast tokenizer in batches (Rust, parallel); truncation, EOS and the common
prefix are numpy operations over flat token arrays and offsets, not per-row Python.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.curate.filters import PROMPT_KEY
from pipeline.identity import file_sha256, tree_sha256

TRUNCATION_RULE = "keep_prompt_end_reject_long_response"
_TOKENIZE_CHUNK = 1024
PLAIN_TEMPLATE = "<bos>{Role}: {content}\\n\\n... Assistant: "


def tokenizer_sha256(path: Path) -> str:
    """sha256 of the folder's `tokenizer.json` (the rule dpop.model_io.check_tokenizer applies), so a
    model folder with the same tokenizer matches the shards and its weights are not hashed; a folder
    without one (a slow tokenizer) falls back to the hash of the whole folder."""
    tokenizer_json = Path(path) / "tokenizer.json"
    return file_sha256(tokenizer_json) if tokenizer_json.is_file() else tree_sha256(path)


@dataclass
class Tokenised:
    """Token arrays for a batch of pairs (list<int32>), `too_long` mask and the common prefix length."""

    prompt_ids: pa.ListArray
    chosen_ids: pa.ListArray
    rejected_ids: pa.ListArray
    common_prefix_len: np.ndarray
    too_long: np.ndarray
    total_tokens: np.ndarray  # prompt + longer response, for the rejection detail


class PairTokenizer:
    """A local tokenizer plus the length limits; `encode(frame)` tokenises a batch of pairs."""

    def __init__(self, path: str | os.PathLike[str], max_length: int, max_prompt_length: int):
        from transformers import AutoTokenizer

        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"tokenizer folder {self.path} not found")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {self.path} has no eos_token: responses need an end token")
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        # our own limits apply (and reject instead of cutting): silence the model_max_length warning
        self.tokenizer.model_max_length = sys.maxsize
        self.chat_template = (
            self.tokenizer.chat_template if isinstance(self.tokenizer.chat_template, str) else None
        )

    def info(self) -> dict[str, Any]:
        """What the manifest records about the tokenizer (hashes make the dataset id change with it)."""
        template = self.chat_template if self.chat_template is not None else f"plain:{PLAIN_TEMPLATE}"
        return {
            "path": str(self.path.resolve()),
            "sha256": tokenizer_sha256(self.path),
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
            "chat_template": "tokenizer" if self.chat_template is not None else "plain",
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }

    def prompt_texts(self, prompts: pl.Series) -> list[str]:
        if self.chat_template is not None:
            conversations = prompts.to_list()
            return self.tokenizer.apply_chat_template(
                conversations, tokenize=False, add_generation_prompt=True
            )
        turn = (
            pl.element().struct.field("role").str.to_titlecase() + ": " + pl.element().struct.field("content")
        )
        bos = self.tokenizer.bos_token or ""
        text = (
            pl.lit(bos)
            + prompts.to_frame("p").select(pl.col("p").list.eval(turn).list.join("\n\n")).to_series()
        )
        return (pl.select(text).to_series() + "\n\nAssistant: ").to_list()

    def _ids(self, texts: pa.Array | list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat int32 token ids and int64 offsets for a batch of texts; each distinct text is
        tokenised once (real data repeats prompts and chosen answers across pairs)."""
        encoded = pc.dictionary_encode(pa.array(texts, pa.string()) if isinstance(texts, list) else texts)
        unique = encoded.dictionary.to_pylist()
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        pieces = []
        # chunks bound the Python lists of ids (36 bytes per token) to a few MB whatever the batch
        for start in range(0, len(unique), _TOKENIZE_CHUNK):
            chunk = unique[start : start + _TOKENIZE_CHUNK]
            if backend is not None:  # the Rust tokenizer directly: no per-text Python wrappers
                ids = [e.ids for e in backend.encode_batch_fast(chunk, add_special_tokens=False)]
            else:
                ids = self.tokenizer(chunk, add_special_tokens=False, return_attention_mask=False)[
                    "input_ids"
                ]
            pieces.append(pa.array(ids, type=pa.list_(pa.int32())))
        array = pa.concat_arrays(pieces) if pieces else pa.array([], pa.list_(pa.int32()))
        array = array.take(encoded.indices)
        offsets = array.offsets.to_numpy().astype(np.int64)
        values = array.values.to_numpy() if len(array.values) else np.zeros(0, np.int32)
        return values, offsets - offsets[0] if len(offsets) else offsets

    def encode(self, frame: pl.DataFrame) -> Tokenised:
        prompt_values, prompt_offsets = self._ids(self._prompt_texts_once(frame))
        prompt_values, prompt_offsets = _keep_end(prompt_values, prompt_offsets, self.max_prompt_length)
        eos = self.tokenizer.eos_token_id
        chosen_values, chosen_offsets = _append(*self._ids(frame["chosen"].to_arrow()), eos)
        rejected_values, rejected_offsets = _append(*self._ids(frame["rejected"].to_arrow()), eos)
        prompt_len = np.diff(prompt_offsets)
        longest = np.maximum(np.diff(chosen_offsets), np.diff(rejected_offsets))
        total = prompt_len + longest
        return Tokenised(
            prompt_ids=_list_array(prompt_values, prompt_offsets),
            chosen_ids=_list_array(chosen_values, chosen_offsets),
            rejected_ids=_list_array(rejected_values, rejected_offsets),
            common_prefix_len=common_prefix_lengths(
                chosen_values, chosen_offsets, rejected_values, rejected_offsets
            ),
            too_long=total > self.max_length,
            total_tokens=total,
        )

    def _prompt_texts_once(self, frame: pl.DataFrame) -> pa.Array:
        """Prompt texts per row, rendering each distinct prompt once (by prompt key when present)."""
        if PROMPT_KEY not in frame.columns:
            return pa.array(self.prompt_texts(frame["prompt"]), pa.string())
        keys = pc.dictionary_encode(frame[PROMPT_KEY].to_arrow().cast(pa.string()))
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        first = pl.Series(keys.indices).arg_unique()  # first row of each distinct key, in key order
        texts = pa.array(self.prompt_texts(frame["prompt"].gather(first)), pa.string())
        return texts.take(keys.indices)


def _list_array(values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values.astype(np.int32)))


def _keep_end(values: np.ndarray, offsets: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the last `limit` tokens of each row."""
    lengths = np.diff(offsets)
    keep = np.minimum(lengths, limit)
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(keep, out=new_offsets[1:])
    # source index of output position j in row i: (end_i - keep_i) + (j - new_offsets_i)
    shift = np.repeat(offsets[1:] - keep - new_offsets[:-1], keep)
    return values[np.arange(new_offsets[-1]) + shift], new_offsets


def _append(values: np.ndarray, offsets: np.ndarray, token: int) -> tuple[np.ndarray, np.ndarray]:
    """Append `token` to every row."""
    rows = len(offsets) - 1
    new_offsets = offsets + np.arange(rows + 1)
    out = np.empty(len(values) + rows, dtype=np.int32)
    is_end = np.zeros(len(out), dtype=bool)
    is_end[new_offsets[1:] - 1] = True
    out[is_end] = token
    out[~is_end] = values
    return out, new_offsets


def common_prefix_lengths(
    a_values: np.ndarray, a_offsets: np.ndarray, b_values: np.ndarray, b_offsets: np.ndarray
) -> np.ndarray:
    """Per row, the number of leading tokens rows of `a` and `b` share (the first edit's index)."""
    shortest = np.minimum(np.diff(a_offsets), np.diff(b_offsets))
    starts = np.zeros(len(shortest) + 1, dtype=np.int64)
    np.cumsum(shortest, out=starts[1:])
    row = np.repeat(np.arange(len(shortest)), shortest)
    position = np.arange(starts[-1]) - starts[:-1][row]
    differs = a_values[a_offsets[:-1][row] + position] != b_values[b_offsets[:-1][row] + position]
    prefix = shortest.copy()
    # the first differing position per row: minimum over that row's differing positions
    np.minimum.at(prefix, row[differs], position[differs])
    return prefix.astype(np.int32)
