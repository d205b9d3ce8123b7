"""Score preference pairs: edit distances, lengths and score margins, all vectorised.

Character distances come from rapidfuzz's `process.cpdist` (C++, all cores). Word distances reuse the
same kernel: within each pair, every distinct word is given one code point (a dense rank over the
pair's words), so "chosen" and "rejected" become short strings of word symbols and their character
Levenshtein distance is exactly the word Levenshtein distance. No per-row Python loop anywhere.

The word distance costs more than the character kernel itself (a split of every text, a hash of every
word), so it is a column computed on demand: `score_pairs(..., word_distance=False)` leaves it out,
and the build asks for it only when a filter of its curation config reads it
(`pipeline.build_parts.needs_word_distance`). Word counts do not need the split: they are counted
by one regex pass per text (Polars, a column per core).

Words are maximal runs of non-whitespace characters, whitespace as Python's `str.isspace` (and
`str.split()`) defines it: Unicode White_Space plus the separators U+001C..U+001F.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from pipeline.contracts import load_contract

SCORE_COLUMNS = (
    "edit_distance",
    "edit_ratio",
    "word_edit_distance",
    "len_prompt_chars",
    "len_chosen_chars",
    "len_rejected_chars",
    "len_prompt_words",
    "len_chosen_words",
    "len_rejected_words",
    "score_margin",
)
WORD_PATTERN = r"[^\s\x1c-\x1f]+"  # a word; Rust regex's \s is Unicode White_Space, Python adds 1C-1F
_MAX_SYMBOLS = 0x10FFFF - 0x10000  # symbols are the supplementary planes, U+10000 upwards
SCORE_BATCH_ROWS = 8192  # as the build's batches


def edit_distances(chosen: pa.Array | list[str], rejected: pa.Array | list[str]) -> np.ndarray:
    """Character Levenshtein distance per pair (rapidfuzz cpdist on every core), as int64."""
    if isinstance(chosen, pa.ChunkedArray | pa.Array):
        chosen, rejected = chosen.to_pylist(), rejected.to_pylist()
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return process.cpdist(chosen, rejected, scorer=Levenshtein.distance, workers=-1, dtype=np.int64)


class Words(NamedTuple):
    """The whitespace words of a column of texts, flat. `pieces` still holds the empty strings
    pyarrow yields around leading/trailing whitespace; `keep` marks the real words."""

    pieces: pa.Array
    keep: np.ndarray
    owner: np.ndarray  # index of the text of each kept word
    counts: np.ndarray  # words per text


def split_words(texts: pa.Array | pa.ChunkedArray) -> Words:
    texts = _as_array(texts)
    nested = pc.utf8_split_whitespace(texts)
    pieces = pc.list_flatten(nested)
    keep = pc.not_equal(pieces, "").to_numpy(zero_copy_only=False)
    owner = pc.list_parent_indices(nested).to_numpy()[keep]
    return Words(pieces, keep, owner, np.bincount(owner, minlength=len(texts)).astype(np.int64))


def word_edit_distances(chosen: pa.Array, rejected: pa.Array) -> np.ndarray:
    """Levenshtein distance over whitespace-separated words, per pair."""
    chosen_symbols, rejected_symbols = words_to_symbols(split_words(chosen), split_words(rejected))
    return edit_distances(chosen_symbols, rejected_symbols)


def words_to_symbols(chosen: Words, rejected: Words) -> tuple[pa.Array, pa.Array]:
    """Encode words as code points (same word, same symbol) and rebuild each text as a symbol string.

    Symbols are dense ids over the batch's vocabulary: one Arrow dictionary encoding over both sides
    (a chunked array shares one dictionary, so no concatenation). Only a batch with more distinct words
    than Unicode has code points falls back to per-pair ids."""
    encoded = pc.dictionary_encode(pa.chunked_array([chosen.pieces, rejected.pieces]))
    chosen_ids = encoded.chunk(0).indices.to_numpy()[chosen.keep].astype(np.int64)
    rejected_ids = encoded.chunk(1).indices.to_numpy()[rejected.keep].astype(np.int64)
    if len(encoded.chunk(0).dictionary) > _MAX_SYMBOLS:
        words = pa.concat_arrays(
            [chosen.pieces.filter(pa.array(chosen.keep)), rejected.pieces.filter(pa.array(rejected.keep))]
        )
        owner = np.concatenate([chosen.owner, rejected.owner])
        frame = pl.DataFrame({"pair": owner, "word": pl.Series(words, dtype=pl.String)})
        ids = frame.select(pl.col("word").rank("dense").over("pair")).to_series().to_numpy().astype(np.int64)
        chosen_ids, rejected_ids = ids[: len(chosen.owner)], ids[len(chosen.owner) :]
    return _utf8_strings(chosen_ids, chosen.counts), _utf8_strings(rejected_ids, rejected.counts)


def _as_array(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _utf8_strings(ids: np.ndarray, lengths: np.ndarray) -> pa.StringArray:
    """Strings of one symbol per id (flat ids, per-string lengths), encoded as UTF-8 in numpy.

    Every symbol is a 4-byte code point (U+10000 + id), so the encoding is a fixed-width reshape:
    no per-character branching, and the byte offsets are 4 x the symbol offsets."""
    cp = ids.astype(np.uint32) + 0x10000
    data = np.empty((cp.size, 4), dtype=np.uint8)
    data[:, 0] = 0xF0 | (cp >> 18)
    data[:, 1] = 0x80 | ((cp >> 12) & 0x3F)
    data[:, 2] = 0x80 | ((cp >> 6) & 0x3F)
    data[:, 3] = 0x80 | (cp & 0x3F)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths * 4, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError("word batch too large for one string array; score in smaller batches")
    return pa.StringArray.from_buffers(
        len(lengths), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)
    )


def word_counts(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Words per text (as `len(text.split())`), int64."""
    frame = pl.DataFrame({"text": pl.Series(_as_array(texts), dtype=pl.String)})
    return (
        frame.select(pl.col("text").str.count_matches(WORD_PATTERN)).to_series().to_numpy().astype(np.int64)
    )


def _word_counts(prompt: pa.Array, chosen: pa.Array, rejected: pa.Array) -> dict[str, np.ndarray]:
    """len_{prompt,chosen,rejected}_words in one Polars query: its three expressions run in parallel,
    one regex pass over each text (the prompt's messages counted one by one: a word never spans two)."""
    frame = pl.DataFrame(
        [pl.Series("prompt", prompt), pl.Series("chosen", chosen), pl.Series("rejected", rejected)]
    )
    content = pl.element().struct.field("content").str.count_matches(WORD_PATTERN)
    counts = frame.select(
        pl.col("prompt").list.eval(content).list.sum().alias("len_prompt_words"),
        pl.col("chosen").str.count_matches(WORD_PATTERN).alias("len_chosen_words"),
        pl.col("rejected").str.count_matches(WORD_PATTERN).alias("len_rejected_words"),
    )
    return {name: counts[name].to_numpy().astype(np.int64) for name in counts.columns}


def score_pairs(table: pa.Table, batch_rows: int = SCORE_BATCH_ROWS, word_distance: bool = True) -> pa.Table:
    """Add the score columns of the `preference_pair` contract (replacing any present) to a pair table;
    `word_distance=False` leaves out `word_edit_distance` (the costly one; see the module docstring).

    A large table is scored `batch_rows` pairs at a time: the symbol strings of the word distance
    allocate several times the text size, and a bounded batch reuses the same (already mapped) memory
    instead of touching fresh pages for the whole table. The scores do not depend on the batching."""
    if table.num_rows <= batch_rows:
        return _score_batch(table, word_distance)
    return pa.concat_tables(
        [
            _score_batch(table.slice(start, batch_rows), word_distance)
            for start in range(0, table.num_rows, batch_rows)
        ]
    )


def _score_batch(table: pa.Table, word_distance: bool) -> pa.Table:
    base = table.drop_columns([c for c in SCORE_COLUMNS if c in table.column_names])
    chosen, rejected = base.column("chosen").combine_chunks(), base.column("rejected").combine_chunks()
    prompt = base.column("prompt").combine_chunks()
    contents = pc.struct_field(pc.list_flatten(prompt), "content")
    message_owner = pc.list_parent_indices(prompt).to_numpy()
    n = base.num_rows
    lengths = {
        "len_prompt_chars": np.bincount(message_owner, pc.utf8_length(contents).to_numpy(), minlength=n),
        "len_chosen_chars": pc.utf8_length(chosen).to_numpy(),
        "len_rejected_chars": pc.utf8_length(rejected).to_numpy(),
        **_word_counts(prompt, chosen, rejected),
    }
    distance = edit_distances(chosen, rejected)
    longest = np.maximum(lengths["len_chosen_chars"], lengths["len_rejected_chars"])
    ratio = np.divide(distance, longest, out=np.zeros(len(distance), dtype=np.float64), where=longest > 0)
    if "chosen_score" in base.column_names and "rejected_score" in base.column_names:
        margin = pc.subtract(base.column("chosen_score"), base.column("rejected_score"))
    else:
        margin = pa.nulls(base.num_rows, pa.float64())
    columns = {"edit_distance": pa.array(distance, pa.int64()), "edit_ratio": pa.array(ratio, pa.float64())}
    if word_distance:
        columns["word_edit_distance"] = pa.array(word_edit_distances(chosen, rejected), pa.int64())
    columns.update({name: pa.array(values.astype(np.int64)) for name, values in lengths.items()})
    columns["score_margin"] = margin
    for name, values in columns.items():
        base = base.append_column(name, values)
    contract = load_contract("preference_pair")
    return base.select([c for c in contract.columns if c in base.column_names])
