"""Shards are TRL's format: they open with datasets and pyarrow memory mapping, and TRL's collator
batches them; the streaming writer bounds shard size and leaves nothing behind when aborted."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from datasets import Dataset
from trl.trainer.dpo_trainer import DataCollatorForPreference

from pipeline.build import build_dataset
from pipeline.shards import SplitWriter, load_manifest, open_shard, shard_paths, shard_schema
from pipeline.workspace import Workspace
from tests.pipeline._pairs import tiny_tokenizer, write_ingest


def rows(count: int) -> pa.Table:
    data = [
        {
            "pair_id": f"{i:032x}",
            "prompt_ids": [1, 2, i],
            "chosen_ids": [3, 4],
            "rejected_ids": [3, 5, 6],
            "ref_chosen_logps": None,
            "ref_rejected_logps": None,
            "common_prefix_len": 1,
            "edit_ratio": 0.25,
        }
        for i in range(count)
    ]
    return pa.Table.from_pylist(data, schema=shard_schema())


def test_split_writer_streams_bounded_shards(tmp_path: Path) -> None:
    writer = SplitWriter(tmp_path, "train", rows_per_shard=4)
    for start, size in ((0, 3), (3, 3), (6, 4)):
        writer.write(rows(10).slice(start, size))
    infos = writer.close()
    assert [(i.file, i.rows) for i in infos] == [
        ("train-00000.arrow", 4),
        ("train-00001.arrow", 4),
        ("train-00002.arrow", 2),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [i.file for i in infos]
    combined = pa.concat_tables([open_shard(tmp_path / i.file) for i in infos])
    assert combined.equals(rows(10))


def test_aborted_writer_leaves_only_finished_shards(tmp_path: Path) -> None:
    writer = SplitWriter(tmp_path, "eval", rows_per_shard=4)
    writer.write(rows(6))  # one full shard, one open
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval-00000.arrow"]
    with pytest.raises(ValueError, match="split"):
        SplitWriter(tmp_path, "test")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, str]:
    root = tmp_path_factory.mktemp("shards")
    workspace = Workspace.open(root / "ws")
    pairs = [
        {
            "prompt": f"What is {i} + {i}?",
            "chosen": f"It is {2 * i}.",
            "rejected": f"It is {2 * i + 1}, I think.",
        }
        for i in range(40)
    ]
    ingest = write_ingest(workspace.root, pairs)
    config = {"split": {"eval_fraction": 0.2}, "shards": {"rows_per_shard": 16}}
    result = build_dataset(workspace, config, tiny_tokenizer(root / "tok"), [ingest])
    return workspace, result.dataset_id


def test_shards_open_with_datasets_and_memory_map(built: tuple[Workspace, str]) -> None:
    workspace, dataset_id = built
    paths = shard_paths(workspace, dataset_id, "train", verify=True)
    assert len(paths) >= 2
    for path in paths:
        dataset = Dataset.from_file(str(path))
        mapped = open_shard(path)
        assert dataset.num_rows == mapped.num_rows > 0
        assert dataset.column_names == shard_schema().names
        assert dataset[0]["pair_id"] == mapped["pair_id"][0].as_py()
        assert mapped.schema.equals(shard_schema())
        # zero-copy: the column buffers live inside the mapped file
        assert mapped["prompt_ids"].chunks[0].values.buffers()[1].address != 0


def test_trl_collator_batches_our_rows(built: tuple[Workspace, str]) -> None:
    workspace, dataset_id = built
    manifest = load_manifest(workspace, dataset_id)
    dataset = Dataset.from_file(str(shard_paths(workspace, dataset_id, "train")[0]))
    pad = manifest["tokenizer"]["pad_token_id"]
    # reference log-probs are null until computed, so only the token columns go to the collator
    examples = [{k: dataset[i][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for i in range(4)]
    batch = DataCollatorForPreference(pad_token_id=pad)(examples)
    assert batch["input_ids"].shape[0] == 8  # chosen half, then rejected half
    for i, example in enumerate(examples):
        chosen = example["prompt_ids"] + example["chosen_ids"]
        rejected = example["prompt_ids"] + example["rejected_ids"]
        assert batch["input_ids"][i, : len(chosen)].tolist() == chosen
        assert batch["input_ids"][i + 4, : len(rejected)].tolist() == rejected
        assert int(batch["completion_mask"][i].sum()) == len(example["chosen_ids"])
        assert example["chosen_ids"][-1] == manifest["tokenizer"]["eos_token_id"]
    assert set(batch["input_ids"][batch["attention_mask"] == 0].tolist()) <= {pad}
