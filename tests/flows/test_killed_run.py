"""A run killed with SIGKILL in the middle of training, started again: it resumes from the finished stages
and the last complete checkpoint, and leaves no half-written file behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.chain import TRAINED
from pipeline.atomic import TMP_PREFIX
from pipeline.workspace import Workspace
from tests.flows.real_slice import TRAINING, chain_spec, hh_slice, pandalm_slice, run_flow, tiny_base_model

pytestmark = [pytest.mark.slow, pytest.mark.real_data]

REPO = Path(__file__).resolve().parents[2]
LONG_TRAINING = {**TRAINING, "max_steps": 60, "save_steps": 5, "logging_steps": 5}


def _complete_checkpoint(ws: Workspace) -> bool:
    return any(ws.runs_dir.glob("*/checkpoint-*/trainer_state.json"))


def test_killed_run_resumes(prefect_server, shared_data, tmp_path):
    from prefect.settings import PREFECT_API_URL

    data = tmp_path / "data"
    data.mkdir()
    hh = hh_slice(shared_data, data, 30)
    pandalm = pandalm_slice(shared_data, data, 30)
    ws = Workspace.open(tmp_path / "ws")
    base = tiny_base_model(ws, [hh, pandalm])
    spec = chain_spec(data, base, LONG_TRAINING)
    arguments = {"workspace": str(ws.root), "spec": spec.to_json()}

    script = (
        "import json, sys\n"
        "from flows.data_to_model import data_to_model_flow\n"
        "data_to_model_flow(**json.loads(sys.argv[1]))\n"
    )
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(arguments)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not _complete_checkpoint(ws):
            assert process.poll() is None, "the flow ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # no clean-up handlers run
        process.wait(30)
    [run_dir] = list(ws.runs_dir.iterdir())
    assert not (run_dir / "model").exists()

    summary = run_flow(ws, spec)
    assert summary["status"] == TRAINED and summary["resumed"] is True
    assert summary["cached"]["build"] and summary["cached"]["refs"]
    assert summary["files_cached"] == 2
    assert Path(summary["run_dir"]) == run_dir
    assert (run_dir / "model" / "config.json").is_file() and (run_dir / "run.json").is_file()
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == LONG_TRAINING["max_steps"]
    assert not [p for p in ws.root.rglob(f"{TMP_PREFIX}*")]
