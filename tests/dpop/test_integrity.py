"""What the trainer reads back is what was written: a corrupt shard stops `dpop refs` and `dpop train` with
one line (and no version is made from it), and no entry point unpickles model weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from dpop.model_io import PickledWeightsError, load_causal_lm
from dpop.refs import compute_reference_logps
from dpop.sft import Example, warm_up
from pipeline.catalog import Catalog
from pipeline.shards import load_manifest
from tests.dpop.conftest import write_dataset
from tests.pipeline.test_shards import flip_one_byte

runner = CliRunner()


def dpop(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def corrupt_first_train_shard(workspace, dataset_id: str) -> tuple[Path, str]:
    info = load_manifest(workspace, dataset_id)["splits"]["train"]["shards"][0]
    shard = workspace.dataset_dir(dataset_id) / info["file"]
    flip_one_byte(shard)
    return shard, info["sha256"]


def test_refs_refuses_a_corrupt_shard_and_records_nothing(workspace, tiny_model_dir):
    dataset_id = write_dataset(workspace, tiny_model_dir, train=8, eval=4)
    shard, expected = corrupt_first_train_shard(workspace, dataset_id)
    result = dpop("refs", "-w", workspace.root, "--dataset", dataset_id, "--model", tiny_model_dir)
    assert result.exit_code == 1
    [line] = error_lines(result)
    assert f"shard {shard} is corrupt" in line and expected in line
    assert [p.name for p in workspace.datasets_dir.iterdir()] == [dataset_id]
    assert [a.id for a in Catalog(workspace).find("dataset")] == []


def test_train_refuses_a_corrupt_shard(workspace, tiny_model_dir):
    refs_id = compute_reference_logps(
        workspace, write_dataset(workspace, tiny_model_dir, train=8, eval=4), tiny_model_dir, progress=False
    )
    shard, expected = corrupt_first_train_shard(workspace, refs_id)
    result = dpop(
        "train", "-w", workspace.root, "--dataset", refs_id, "--model", tiny_model_dir,
        "--max-steps", 1,
    )  # fmt: skip
    assert result.exit_code == 1
    [line] = error_lines(result)
    assert f"shard {shard} is corrupt" in line and expected in line
    assert not workspace.runs_dir.exists()  # refused before a run folder was made


@pytest.fixture
def pickled_model(tiny_model_dir, tmp_path, monkeypatch) -> Path:
    """The tiny model with its weights as `pytorch_model.bin` only (torch.save of its state dict), and a
    tripwire: any torch.load in this test fails it (loading a .bin is unpickling it)."""
    folder = tmp_path / "pickled-model"
    shutil.copytree(tiny_model_dir, folder)
    model = load_causal_lm(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")

    def tripwire(*args, **kwargs):
        raise AssertionError(f"torch.load called on {args[:1]}: pickled weights were opened")

    monkeypatch.setattr(torch, "load", tripwire)
    return folder


def assert_refused(result, folder: Path) -> None:
    assert result.exit_code == 1, result.output
    [line] = error_lines(result)
    assert f"model folder {folder.resolve()} has only pickled weights (pytorch_model.bin)" in line


def test_no_command_unpickles_weights(workspace, pickled_model, tmp_path):
    dataset_id = write_dataset(workspace, pickled_model, train=8, eval=4)
    refs = dpop("refs", "-w", workspace.root, "--dataset", dataset_id, "--model", pickled_model)
    assert_refused(refs, pickled_model)
    train = dpop(
        "train", "-w", workspace.root, "--dataset", dataset_id, "--model", pickled_model, "--max-steps", 1
    )
    assert_refused(train, pickled_model)
    run_workspace = tmp_path / "run-ws"
    run = dpop("run", "-w", run_workspace, "--model", pickled_model, "--sft-steps", 2, "--engine", "direct")
    assert_refused(run, pickled_model)
    assert not (run_workspace / "sources").exists()  # refused before any work


def test_sft_warm_up_does_not_unpickle(workspace, pickled_model):
    with pytest.raises(PickledWeightsError, match=f"{pickled_model.resolve()} has only pickled weights"):
        warm_up(workspace, pickled_model, [Example([1, 2, 3], [4, 5])])
