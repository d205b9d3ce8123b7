"""The typed dataset manifest (pipeline/manifest.py) and funnel (pipeline/funnel.py): round trips, the
keys readers rely on, older and partial manifests, malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import manifest as manifest_io
from pipeline.build import build_dataset
from pipeline.funnel import FunnelStep, funnel_json, read_funnel, rejected_by_reason
from pipeline.manifest import DatasetManifest, Parent, SplitInfo, TokenizerInfo
from pipeline.shards import ShardError, ShardInfo, write_manifest
from pipeline.workspace import Workspace
from tests.pipeline._pairs import tiny_tokenizer, write_ingest
from tests.pipeline.test_build import math_rows

READER_KEYS = {
    "contract",
    "dataset_id",
    "parents",
    "inputs",
    "tokenizer",
    "max_length",
    "max_prompt_length",
    "truncation",
    "config",
    "identity",
    "reference_model",
    "splits",
    "funnel",
}

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@st.composite
def funnel_steps(draw) -> FunnelStep:
    rows_in = draw(st.integers(0, 10**9))
    return FunnelStep(
        draw(names), rows_in, draw(st.integers(0, rows_in)), draw(st.sampled_from(["", "too_long"]))
    )


@given(st.lists(funnel_steps(), max_size=8))
def test_funnel_round_trips_in_list_and_dict_form(steps: list[FunnelStep]) -> None:
    stored = json.loads(json.dumps(funnel_json(steps)))
    assert read_funnel(stored) == steps
    assert read_funnel([step.as_dict() for step in steps]) == steps
    assert all(step.rows_out == step.rows_in - step.dropped for step in steps)


def test_funnel_counts_reasons_and_rejects_malformed_entries() -> None:
    steps = read_funnel(
        [["input", 10, 0, ""], ["max_chars.prompt", 10, 2, "too_long"], ["tok", 8, 1, "too_long"]]
    )
    assert rejected_by_reason(steps) == {"too_long": 3}
    assert read_funnel(None) == []
    for bad, message in (
        ([["input", 10]], "entry 0: expected"),
        ([["input", 10, 0, ""], ["x", 5, 6, "r"]], "entry 1 \\(x\\): dropped 6 is above rows_in 5"),
        ([["x", -1, 0, ""]], "rows_in must be a count"),
        ([[3, 1, 0, ""]], "step must be a non-empty string"),
    ):
        with pytest.raises(ValueError, match=message):
            read_funnel(bad)


shards = st.builds(
    ShardInfo, names, st.integers(0, 10**6), st.integers(0, 10**9), st.text("0123456789abcdef")
)
manifests = st.builds(
    DatasetManifest,
    dataset_id=names,
    splits=st.dictionaries(
        st.sampled_from(["train", "eval"]),
        st.builds(SplitInfo, st.integers(0, 10**6), st.lists(shards, max_size=3).map(tuple)),
    ),
    parents=st.lists(st.builds(Parent, names, names, names), max_size=3).map(tuple),
    tokenizer=st.builds(TokenizerInfo, sha256=st.none() | names, pad_token_id=st.none() | st.integers(0, 99)),
    max_length=st.none() | st.integers(1, 4096),
    reference_model=st.none() | st.fixed_dictionaries({"id": names, "dtype": names}),
    funnel=st.lists(funnel_steps(), max_size=4).map(tuple),
    extra=st.dictionaries(st.sampled_from(["added_later", "note"]), names),
)


@given(manifests)
def test_manifest_round_trips_through_json(manifest: DatasetManifest) -> None:
    data = json.loads(json.dumps(manifest.to_json()))
    assert DatasetManifest.from_json(data) == manifest
    assert data.keys() >= READER_KEYS


def test_built_manifest_has_the_keys_readers_use(workspace: Workspace, tmp_path: Path) -> None:
    ingest = write_ingest(workspace.root, math_rows(0, 12))
    config = {"split": {"eval_fraction": 0.3}, "tokenize": {"max_length": 64, "max_prompt_length": 24}}
    result = build_dataset(workspace, config, tiny_tokenizer(tmp_path / "tok"), [ingest])
    stored = json.loads((result.dataset_dir / "manifest.json").read_text())
    assert set(stored) == READER_KEYS
    manifest = manifest_io.load(workspace, result.dataset_id)
    assert manifest.to_json() == stored
    assert manifest.rows == result.rows_kept and list(manifest.funnel) == result.funnel
    assert manifest.parents == (Parent(f"pairs-{ingest.ingest_id}", "pairs", "curated_from"),)
    assert stored["tokenizer"]["eos_token_id"] == manifest.tokenizer.eos_token_id is not None
    assert stored["identity"]["config"]["partition_rows"] == 100_000


def test_partial_and_newer_manifests_load_and_bad_ones_fail_clearly(workspace: Workspace) -> None:
    folder = workspace.dataset_dir("ds-min")
    folder.mkdir(parents=True)
    # what older writers and test fixtures write: only some keys, plus one this version does not know
    shard = {"file": "train-00000.arrow", "rows": 3, "bytes": 10, "sha256": "ab"}
    write_manifest(
        folder, {"dataset_id": "ds-min", "splits": {"train": {"rows": 3, "shards": [shard]}}, "new": 1}
    )
    manifest = manifest_io.load(workspace, "ds-min")
    assert manifest.split_rows("train") == 3 and manifest.split_rows("eval") == 0
    assert manifest.funnel == () and manifest.tokenizer == TokenizerInfo()
    manifest.write(folder)
    assert json.loads((folder / "manifest.json").read_text())["new"] == 1
    with pytest.raises(ShardError, match="not found"):
        manifest_io.load(workspace, "ds-none")
    (folder / "manifest.json").write_text('{"splits": {}}')
    with pytest.raises(ShardError, match=r"manifest.json is malformed: KeyError: 'dataset_id'"):
        manifest_io.load(workspace, "ds-min")
    (folder / "manifest.json").write_text("{oops")
    with pytest.raises(ShardError, match="not valid JSON"):
        manifest_io.load(workspace, "ds-min")
