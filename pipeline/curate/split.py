"""Deterministic train/eval split by a hash of the prompt, so one prompt never lands on both sides.

The key is `pipeline.identity.prompt_key` (sha256 of the normalised prompt messages). A pair goes to
eval when the first 60 bits of its key, read as a fraction of 2^60, fall below `eval_fraction`: the
same prompt gets the same side in every build, on every machine, whatever the other rows are.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from pipeline.identity import prompt_key

_BITS = 60  # 15 hex digits fit an Int64


def prompt_keys(prompts: pa.Array | pa.ChunkedArray | pl.Series) -> pl.Series:
    """`identity.prompt_key` of each prompt (a list of {role, content} messages)."""
    values = prompts.to_list() if isinstance(prompts, pl.Series) else prompts.to_pylist()
    # sha256 over a few short strings per row: the one per-row Python step of curation, kept so the
    # key stays exactly identity.prompt_key (same normalisation as pair ids).
    return pl.Series("prompt_key", [prompt_key(messages) for messages in values], dtype=pl.String)


def split_expr(key_column: str, eval_fraction: float) -> pl.Expr:
    """Polars expression giving "train" or "eval" from a prompt-key column."""
    threshold = int(eval_fraction * (1 << _BITS))
    position = pl.col(key_column).str.slice(0, _BITS // 4).str.to_integer(base=16)
    return pl.when(position < threshold).then(pl.lit("eval")).otherwise(pl.lit("train"))
