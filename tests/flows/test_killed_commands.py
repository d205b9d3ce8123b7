"""A command killed with SIGKILL leaves its `.tmp-*` temporaries behind; the next command that writes to
the workspace removes them, finishes the work, and leaves alone the temporaries of a command still
running in the same workspace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.atomic import TMP_PREFIX
from pipeline.shards import load_manifest, shard_paths
from pipeline.workspace import Workspace
from tests.dpop.conftest import tiny_model_dir, write_dataset  # noqa: F401 (a fixture)
from tests.pipeline.test_atomic import start_holder

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def dpop(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> None:
    """SIGKILL `process` (no clean-up handler runs) as soon as `ready()`; fail if it ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"finished before it could be killed: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "never reached the point to kill it"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait(30)


def temporaries(ws: Workspace) -> list[Path]:
    return sorted(ws.root.rglob(f"{TMP_PREFIX}*"))


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return out


@pytest.mark.slow  # three `dpop` processes, each importing torch
def test_ingest_killed_as_it_starts_writing(tmp_path: Path) -> None:
    source = tmp_path / "pairs.jsonl"
    rows = [
        {
            "prompt": f"What is {i} plus {i}?",
            "chosen": f"It is {2 * i}. " * 4,
            "rejected": f"It is {2 * i + 1}.",
        }
        for i in range(5000)
    ]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ws = Workspace.open(tmp_path / "ws")

    kill_when(dpop("ingest", source, "-w", ws.root), lambda: bool(temporaries(ws)))
    left = temporaries(ws)
    assert left and not list(ws.sources_dir.glob("*/ingest.json"))  # killed before it published

    # A command writing to the same workspace at the same time: its temporary must survive the sweep.
    holder, held = start_holder(ws.datasets_dir / "ds-being-built")
    try:
        finish(dpop("ingest", source, "-w", ws.root))
        assert temporaries(ws) == [held]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    [record] = [json.loads(p.read_text()) for p in ws.sources_dir.glob("*/ingest.json")]
    assert (record["rows_read"], record["rows_kept"]) == (5000, 5000)


@pytest.mark.slow
def test_refs_killed_mid_run(workspace: Workspace, tiny_model_dir: Path) -> None:  # noqa: F811
    dataset_id = write_dataset(workspace, tiny_model_dir, train=8, eval=8, rows_per_shard=4)

    def train_split_written() -> bool:  # the new version's train shards are written, eval is running
        return any(path.is_dir() and any(path.glob("train-*.arrow")) for path in temporaries(workspace))

    arguments = ("refs", "-w", workspace.root, "--dataset", dataset_id, "--model", tiny_model_dir)
    kill_when(dpop(*arguments, "--batch-size", 1), train_split_written)
    assert temporaries(workspace)
    assert [p.name for p in workspace.datasets_dir.iterdir() if not p.name.startswith(TMP_PREFIX)] == [
        dataset_id
    ]

    new_id = finish(dpop(*arguments)).strip().splitlines()[-1]
    assert temporaries(workspace) == []
    manifest = load_manifest(workspace, new_id)
    assert {split: info["rows"] for split, info in manifest["splits"].items()} == {"train": 8, "eval": 8}
    assert len(shard_paths(workspace, new_id, "train")) == 2  # all there, sizes and sha256 match
