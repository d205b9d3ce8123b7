"""Shards are TRL's format: they open with datasets and pyarrow memory mapping, and TRL's collator
batches them; the streaming writer bounds shard size and leaves nothing behind when aborted."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pytest
from datasets import Dataset
from trl.trainer.dpo_trainer import DataCollatorForPreference

from pipeline.build import build_dataset
from pipeline.contracts import load_contract
from pipeline.shards import (
    ShardError,
    SplitWriter,
    load_manifest,
    open_shard,
    open_split,
    shard_paths,
    shard_schema,
    write_manifest,
    write_split,
)
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
        # every column but the optional ones a later stage adds (`weight`, from `dpop select`)
        built_columns = load_contract("dpop_shard").required_columns
        assert dataset.column_names == built_columns
        assert dataset[0]["pair_id"] == mapped["pair_id"][0].as_py()
        assert mapped.schema.equals(load_contract("dpop_shard").schema(built_columns))
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


def small_version(workspace: Workspace, count: int = 40, rows_per_shard: int = 16) -> str:
    """A dataset version written straight from rows (no build): its shards are ours to damage."""
    out_dir = workspace.dataset_dir("ds-small")
    infos = write_split(out_dir, "train", rows(count), rows_per_shard=rows_per_shard)
    write_manifest(
        out_dir,
        {
            "dataset_id": "ds-small",
            "splits": {"train": {"rows": count, "shards": [info.as_dict() for info in infos]}},
        },
    )
    return "ds-small"


def flip_one_byte(path: Path, keep_mtime: bool = False) -> None:
    """Change one byte in place: same size, same inode (what a bad disk or a stray write does)."""
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(stat.st_size // 2)
        byte = handle.read(1)
        handle.seek(stat.st_size // 2)
        handle.write(bytes([byte[0] ^ 0x01]))
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_corrupt_shard_fails_on_open_naming_file_and_digests(tmp_path: Path) -> None:
    workspace = Workspace.open(tmp_path / "ws")
    dataset_id = small_version(workspace)
    assert open_split(workspace, dataset_id, "train").equals(rows(40))  # clean: opens (and is remembered)
    shard = workspace.dataset_dir(dataset_id) / "train-00001.arrow"
    expected = load_manifest(workspace, dataset_id)["splits"]["train"]["shards"][1]["sha256"]
    # mtime put back: the remembered verdict must not vouch for changed bytes (ctime and inode count too)
    flip_one_byte(shard, keep_mtime=True)
    actual = hashlib.sha256(shard.read_bytes()).hexdigest()
    with pytest.raises(ShardError) as error:
        open_split(workspace, dataset_id, "train")
    message = str(error.value)
    assert "\n" not in message
    assert str(shard) in message and expected in message and actual in message
    with pytest.raises(ShardError, match="is corrupt"):  # every time: a bad verdict is not remembered
        shard_paths(workspace, dataset_id, "train")


def test_an_unchanged_shard_is_hashed_once(tmp_path: Path) -> None:
    io_counters = Path("/proc/self/io")
    if not io_counters.is_file():
        pytest.skip("no /proc/self/io to count the bytes read")
    workspace = Workspace.open(tmp_path / "ws")
    dataset_id = small_version(workspace, count=20_000, rows_per_shard=20_000)
    [shard] = shard_paths(workspace, dataset_id, "train", verify=False)

    def bytes_read_by(action) -> int:
        before = int(io_counters.read_text().split("rchar: ")[1].split()[0])
        action()
        return int(io_counters.read_text().split("rchar: ")[1].split()[0]) - before

    verify = lambda: shard_paths(workspace, dataset_id, "train")  # noqa: E731
    assert bytes_read_by(verify) >= shard.stat().st_size  # the first open reads it all
    assert bytes_read_by(verify) < shard.stat().st_size // 10  # the second: manifest and verdicts only
    shard.touch()  # a new version of the file as far as anyone can tell: hashed again
    assert bytes_read_by(verify) >= shard.stat().st_size


def test_size_mismatch_and_missing_shard(tmp_path: Path) -> None:
    workspace = Workspace.open(tmp_path / "ws")
    dataset_id = small_version(workspace)
    shard = workspace.dataset_dir(dataset_id) / "train-00000.arrow"
    with open(shard, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ShardError, match=f"shard {shard} has \\d+ bytes, but .* records \\d+"):
        open_split(workspace, dataset_id, "train")
    shard.unlink()
    with pytest.raises(ShardError, match="is missing"):
        open_split(workspace, dataset_id, "train")
