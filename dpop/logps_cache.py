"""A per-pair cache of summed log-probs in the workspace, keyed by (token ids digest, model id, precision).

A refreshed dataset (new data built into a new version) shares most of its pairs with the previous
one, and a pair's log-probs under a model depend only on its tokens, the model and the precision of
the forward pass: not on the dataset version it sits in, nor on its neighbours in a batch (beyond
float rounding). So `dpop refs` and `dpop logps` look every pair up here first and run the model only
on the pairs not seen before under that model and precision. TRL keys its precomputed reference
log-probs on the whole dataset's fingerprint instead: one new pair recomputes them all.

Layout: `<ws>/cache/logps/<key>-<segment>.parquet`, `key` = hash(model id, precision label); each
call that computes new pairs adds one segment (digest: 16 bytes, chosen, rejected: float32), written
under a temporary name and renamed, so concurrent writers never clash and a killed one leaves nothing
a reader would take. Past `MAX_SEGMENTS` segments they are merged into one. The cache is a cache: a
missing or unreadable segment means those pairs are computed again, never a wrong value.

The digest (`pair_digests`) is blake2b-128 over the three token lists with their lengths, so two
pairs with the same tokens (the same pair in two versions) share one entry, and any change to the
prompt, either response or the tokenizer's output is a new entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import TMP_PREFIX, atomic_file
from pipeline.identity import stable_hash
from pipeline.workspace import Workspace

CACHE_DIR = "logps"  # under <ws>/cache/
MAX_SEGMENTS = 16
DIGEST_BYTES = 16
_SCHEMA = pa.schema(
    [
        pa.field("digest", pa.binary(DIGEST_BYTES), nullable=False),
        pa.field("chosen", pa.float32(), nullable=False),
        pa.field("rejected", pa.float32(), nullable=False),
    ]
)
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def pair_digests(table: pa.Table) -> list[bytes]:
    """The token digest of every row of a dpop_shard table (row order): what the cache is keyed by."""
    columns = []
    for name in TOKEN_COLUMNS:
        column = table.column(name).combine_chunks() if table.num_rows else pa.array([], pa.list_(pa.int32()))
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False).astype("<i4", copy=False)
        columns.append((offsets, values))
    digests = []
    for row in range(table.num_rows):
        digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
        for offsets, values in columns:
            piece = values[offsets[row] : offsets[row + 1]]
            # the length first: [1, 2] + [3] and [1] + [2, 3] must not hash alike
            digest.update(len(piece).to_bytes(4, "little"))
            digest.update(piece.tobytes())
        digests.append(digest.digest())
    return digests


@dataclass(frozen=True)
class Lookup:
    """What the cache holds for a list of digests: `found` per row, and the values where found."""

    found: np.ndarray  # bool
    chosen: np.ndarray  # float32 (0 where not found)
    rejected: np.ndarray  # float32


class LogpsCache:
    """The cached log-probs of one model in one precision (see the module docstring)."""

    def __init__(self, ws: Workspace, model_id: str, precision: str):
        self.folder = ws.cache_dir / CACHE_DIR
        self.key = stable_hash({"model": model_id, "precision": precision}, 16)

    def segments(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(
            p for p in self.folder.glob(f"{self.key}-*.parquet") if not p.name.startswith(TMP_PREFIX)
        )

    def _entries(self) -> pl.DataFrame:
        frames = []
        for path in self.segments():
            # a segment merged away (or damaged) meanwhile: its pairs are simply computed again
            with contextlib.suppress(OSError, pa.ArrowException):
                frames.append(pl.from_arrow(pq.read_table(path, schema=_SCHEMA)))
        if not frames:
            return pl.from_arrow(_SCHEMA.empty_table())
        return pl.concat(frames).unique(subset="digest", keep="first", maintain_order=True)

    def lookup(self, digests: list[bytes]) -> Lookup:
        wanted = pl.DataFrame({"digest": pl.Series(digests, dtype=pl.Binary)}).with_row_index("row")
        hits = wanted.join(self._entries(), on="digest", how="inner")
        rows = hits["row"].to_numpy()
        found = np.zeros(len(digests), dtype=bool)
        chosen = np.zeros(len(digests), dtype=np.float32)
        rejected = np.zeros(len(digests), dtype=np.float32)
        found[rows] = True
        chosen[rows] = hits["chosen"].to_numpy()
        rejected[rows] = hits["rejected"].to_numpy()
        return Lookup(found, chosen, rejected)

    def add(self, digests: list[bytes], chosen: np.ndarray, rejected: np.ndarray) -> None:
        """Store new entries as one segment (merging the segments when there are too many)."""
        if not digests:
            return
        table = pa.table(
            {
                "digest": pa.array(digests, pa.binary(DIGEST_BYTES)),
                "chosen": pa.array(np.asarray(chosen, np.float32)),
                "rejected": pa.array(np.asarray(rejected, np.float32)),
            },
            schema=_SCHEMA,
        )
        self._write(table)
        if len(self.segments()) > MAX_SEGMENTS:
            self._merge()

    def _write(self, table: pa.Table) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.key}-{uuid.uuid4().hex[:12]}.parquet"
        with atomic_file(path) as tmp:
            pq.write_table(table, tmp)
        return path

    def _merge(self) -> None:
        old = self.segments()
        merged = self._write(self._entries().to_arrow().cast(_SCHEMA))
        for path in old:
            if path != merged:
                path.unlink(missing_ok=True)
