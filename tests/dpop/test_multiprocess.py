"""Two CPU processes (gloo) under `accelerate launch`: 2 processes × batch b follow 1 process × batch 2b.

`accelerate launch --cpu` uses its single-process launcher (multi-CPU there means mpirun), so the
test uses the torchrun launcher (`--multi_gpu`); with no GPU present, `train` tells accelerate it runs
on CPU and the processes talk over gloo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpop.refs import compute_reference_logps
from pipeline.catalog import Catalog
from tests.dpop.conftest import write_dataset

SCRIPT = Path(__file__).with_name("mp_train_script.py")
ROOT = Path(__file__).resolve().parents[2]


def launch(args: list[str], processes: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    if processes == 1:
        command = [sys.executable, str(SCRIPT), *args]
    else:
        accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
        command = [
            accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517", str(SCRIPT), *args,
        ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]


def train_losses(run_dir: Path) -> list[float]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [event["loss"] for event in events if event["split"] == "train"]


@pytest.mark.slow
def test_two_processes_match_one_process_with_double_batch(workspace, tiny_model_dir):
    dataset_id = compute_reference_logps(
        workspace, write_dataset(workspace, tiny_model_dir, train=32), tiny_model_dir, progress=False
    )
    common = [str(workspace.root), dataset_id, str(tiny_model_dir)]
    launch([*common, "two-procs", "2", "4"], processes=2)
    launch([*common, "one-proc", "4", "4"], processes=1)

    two = train_losses(workspace.run_dir("two-procs"))
    one = train_losses(workspace.run_dir("one-proc"))
    assert len(two) == len(one) == 4  # rank 0 alone writes the metrics: no duplicated events
    assert two == pytest.approx(one, abs=1e-5)
    assert len([a for a in Catalog(workspace).find("run") if a.id == "two-procs"]) == 1
    assert (workspace.run_dir("two-procs") / "run.json").is_file()
