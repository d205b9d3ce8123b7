"""The shards as a torch dataset (memory-mapped, zero-copy) and a length-grouped, deterministic sampler.

`ShardDataset` keeps the memory-mapped Arrow table of a split and, per row, hands out numpy views
into the mapped file: a 10 GB dataset costs page cache, not process memory, and every rank of a
multi-process job shares the same pages.

`LengthGroupedSampler` cuts padding: it shuffles, cuts the order into windows of `window` rows,
and sorts each window by length, so consecutive rows (one batch) have similar lengths. The order
depends only on (seed, epoch, window), never on the batch size or the number of processes, so
2 processes × batch b read exactly the rows 1 process × batch 2b reads (accelerate gives rank r
the batches r, r + n, …), and a resumed run replays the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.shards import open_split
from pipeline.workspace import Workspace

LIST_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
# `weight`: optional per-pair loss weight (`dpop select`); null or absent means 1
SCALAR_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", "common_prefix_len", "weight")
REQUIRED_COLUMNS = (*LIST_COLUMNS, "common_prefix_len")


class _ListColumn:
    """Offsets and values of one list<int32> column, per Arrow chunk, as numpy views (no copy)."""

    def __init__(self, column: pa.ChunkedArray):
        self.offsets = [chunk.offsets.to_numpy() for chunk in column.chunks]
        self.values = [chunk.values.to_numpy() for chunk in column.chunks]

    def get(self, chunk: int, row: int) -> np.ndarray:
        offsets = self.offsets[chunk]
        return self.values[chunk][offsets[row] : offsets[row + 1]]

    def lengths(self) -> np.ndarray:
        if not self.offsets:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.diff(offsets) for offsets in self.offsets]).astype(np.int64)


class ShardDataset(torch.utils.data.Dataset):
    """Rows of one split of a dataset version: dicts of numpy token arrays and scalars."""

    def __init__(self, table: pa.Table, name: str = "dataset"):
        missing = [column for column in REQUIRED_COLUMNS if column not in table.column_names]
        if missing:
            raise ValueError(f"{name} is not a dpop_shard dataset: missing column(s) {', '.join(missing)}")
        table = table.combine_chunks() if table.num_rows == 0 else table
        self.table = table
        self.name = name
        # Where the rows come from (set by `open`): the trainer reports the dataset and its lineage to trackers.
        self.workspace: Workspace | None = None
        self.dataset_id: str | None = None
        chunk_rows = [len(chunk) for chunk in table.column("prompt_ids").chunks]
        self._chunk_starts = np.cumsum([0, *chunk_rows])
        self._lists = {column: _ListColumn(table.column(column)) for column in LIST_COLUMNS}
        self._scalars = {
            column: table.column(column).to_numpy(zero_copy_only=False)
            for column in SCALAR_COLUMNS
            if column in table.column_names
        }

    @classmethod
    def open(cls, workspace: Workspace, dataset_id: str, split: str) -> ShardDataset:
        dataset = cls(open_split(workspace, dataset_id, split), name=f"dataset {dataset_id} ({split})")
        dataset.workspace, dataset.dataset_id = workspace, dataset_id
        return dataset

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {self.name} with {len(self)} rows")
        chunk = int(np.searchsorted(self._chunk_starts, index, side="right")) - 1
        row = index - int(self._chunk_starts[chunk])
        item: dict[str, Any] = {column: values.get(chunk, row) for column, values in self._lists.items()}
        for column, values in self._scalars.items():
            item[column] = values[index].item()
        return item

    def lengths(self) -> np.ndarray:
        """Longest sequence of each pair: prompt + max(chosen, rejected) tokens."""
        prompt = self._lists["prompt_ids"].lengths()
        longest = np.maximum(self._lists["chosen_ids"].lengths(), self._lists["rejected_ids"].lengths())
        return prompt + longest

    def token_count(self) -> int:
        """Tokens of both sequences of every pair (what one epoch feeds the model, without padding)."""
        prompt = self._lists["prompt_ids"].lengths()
        return int(
            (2 * prompt + self._lists["chosen_ids"].lengths() + self._lists["rejected_ids"].lengths()).sum()
        )

    def has_reference_logps(self) -> bool:
        """True when every row carries both reference log-probs (a `dpop refs` dataset version)."""
        for column in ("ref_chosen_logps", "ref_rejected_logps"):
            if column not in self.table.column_names or self.table.column(column).null_count:
                return False
        return len(self) > 0


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Shuffle, then sort each window of `window` rows by length (longest first); see module doc."""

    def __init__(self, lengths: np.ndarray, window: int, seed: int = 0, shuffle: bool = True):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.lengths = np.asarray(lengths)
        self.window = window
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        count = len(self.lengths)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(count)
        else:
            order = np.arange(count)
        groups = []
        for start in range(0, count, self.window):
            group = order[start : start + self.window]
            # stable sort on (−length) keeps the shuffled order among equal lengths: deterministic
            groups.append(group[np.argsort(-self.lengths[group], kind="stable")])
        return np.concatenate(groups) if groups else order

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return len(self.lengths)
