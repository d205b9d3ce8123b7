"""`dpop train` killed with SIGKILL in the middle of training, then run again with the same arguments: the
same run (its id is content) continues from its last complete checkpoint, a checkpoint the kill left
half-written is dropped, every step is logged once, and a third run finds the run finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.atomic import TMP_PREFIX
from pipeline.stage import read_record
from tests.dpop.conftest import write_dataset

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS, SAVE_STEPS, LOGGING_STEPS = 150, 5, 5


def dpop(*args: object, **popen: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "cli.main", *map(str, args)]
    return subprocess.Popen(command, cwd=REPO, env=env, text=True, **popen)


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return " ".join(out.split())


@pytest.mark.slow
def test_a_killed_training_run_resumes_from_its_last_whole_checkpoint(workspace, tiny_model_dir, tmp_path):
    dataset_id = write_dataset(workspace, tiny_model_dir, train=32, eval=0)
    settings = tmp_path / "train.yaml"
    settings.write_text(
        f"max_steps: {MAX_STEPS}\nsave_steps: {SAVE_STEPS}\nlogging_steps: {LOGGING_STEPS}\n"
        "per_device_train_batch_size: 4\nlearning_rate: 0.001\ndisable_tqdm: true\n"
    )
    arguments = (
        "train",
        "-w",
        workspace.root,
        "--dataset",
        dataset_id,
        "--model",
        tiny_model_dir,
        "-c",
        settings,
    )

    process = dpop(*arguments, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while not list(workspace.runs_dir.glob("*/checkpoint-*/trainer_state.json")):
        assert process.poll() is None, f"ended before it could be killed: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # no clean-up handler runs
    process.wait(30)
    [run_dir] = list(workspace.runs_dir.iterdir())
    assert read_record(run_dir) is None and not (run_dir / "model").exists()  # not finished
    half = run_dir / "checkpoint-100000"  # what a kill during a save leaves: no trainer_state.json
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")

    output = finish(dpop(*arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    assert f"run {run_dir.name} was interrupted before: resumed from its last checkpoint" in output
    assert output.split()[-1] == run_dir.name and not half.exists()
    record = read_record(run_dir)
    assert record.id == run_dir.name and record.summary["resumed"] is True
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(LOGGING_STEPS, MAX_STEPS + 1, LOGGING_STEPS))  # each step once, to the end
    assert not list(workspace.root.rglob(f"{TMP_PREFIX}*"))

    again = finish(dpop(*arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    assert f"run {run_dir.name} had finished with these inputs: reused, nothing trained" in again
