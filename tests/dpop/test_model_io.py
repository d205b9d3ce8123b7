"""Model identity in one place (`dpop.model_io.model_artifact`): a folder a stage made has that stage's
model id, any other folder a content hash that does not depend on where it lies and is cached per file
version, so asking again costs a stat per file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import dpop.model_io as model_io
from dpop.model_io import model_artifact, model_id
from dpop.sft import Example, SFTConfig, warm_up
from pipeline.identity import tree_sha256
from pipeline.workspace import Workspace


def test_a_user_folder_is_its_content_wherever_it_lies(tiny_model_dir, tmp_path):
    first = Path(shutil.copytree(tiny_model_dir, tmp_path / "here" / "model"))
    second = Path(shutil.copytree(tiny_model_dir, tmp_path / "there" / "other-name"))
    one, two = model_artifact(first), model_artifact(second)
    assert one.id == two.id == f"model-{tree_sha256(first)[:16]}"  # the rule the catalog rebuild uses
    assert (one.kind, one.path, two.path) == ("model", str(first.resolve()), str(second.resolve()))
    (second / "config.json").write_text((second / "config.json").read_text() + " ")
    assert model_artifact(second).id != one.id  # other bytes, another model


def test_file_digests_are_cached_by_file_version(tiny_model_dir, tmp_path, monkeypatch):
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    first = model_id(folder)
    hashed = []
    real = model_io.file_sha256
    monkeypatch.setattr(model_io, "file_sha256", lambda path: hashed.append(Path(path).name) or real(path))
    assert model_id(folder) == first and hashed == []  # every file known: nothing read
    weights = folder / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched: hashed again
    assert model_id(folder) == first and hashed == ["model.safetensors"]


def test_an_unreadable_cache_is_an_empty_one(tiny_model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / model_io.DIGEST_CACHE_FILE).write_text("{not json")
    monkeypatch.setenv("DPOP_CACHE_DIR", str(cache))
    assert model_id(tiny_model_dir) == f"model-{tree_sha256(tiny_model_dir)[:16]}"


def test_a_folder_a_stage_made_has_the_stage_model_id(tiny_model_dir, tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    made = warm_up(ws, tiny_model_dir, [Example([1, 2, 3], [4, 5, 6])], SFTConfig(steps=0))
    assert made.model_id.startswith("model-sft-") and model_id(made.model_dir) == made.model_id
    artifact = model_artifact(made.model_dir)
    assert artifact.meta["made_by"] == "sft" and artifact.path == str(made.model_dir.resolve())
    # the folder with its record elsewhere (a moved workspace) is still that model
    moved = Path(shutil.copytree(ws.root, tmp_path / "moved"))
    assert model_id(moved / made.model_dir.relative_to(ws.root)) == made.model_id
    # without the record it is just files
    (made.model_dir / "stage.json").unlink()
    assert model_id(made.model_dir) == f"model-{tree_sha256(made.model_dir)[:16]}"


def test_missing_folder_fails_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"model path {tmp_path / 'nowhere'} does not exist"):
        model_artifact(tmp_path / "nowhere")
