"""`dpop run`: every path and config checked before any work (naming the flag); one chain for every entry
point (`dpop run`, `--engine direct`, a `dpop serve` deployment give the same ids); the up-to-date answer
without Prefect or torch; Ctrl-C says how to resume, and rerunning does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from pipeline.stage import iter_records
from pipeline.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
# A tiny model and a few steps of everything: the chain in seconds on a CPU.
TINY = {
    "tiny_model": {"vocab_size": 300, "layers": 1, "hidden_size": 32, "heads": 2},
    "sft": {"steps": 2, "batch_size": 4},
    "curation": {"split": {"eval_fraction": 0.2}},
    "losses": ["dpop:50"],  # one run (the default compares two losses; the comparison has its own tests)
    "training": {"max_steps": 2, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
                 "eval_steps": 1, "logging_steps": 1, "save_steps": 1},
}  # fmt: skip


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """40 synthetic maths pairs outside every workspace, and a dpop.yaml with the tiny settings."""
    from demo.synth_math import write_math_pairs

    config = tmp_path / "dpop.yaml"
    config.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    return write_math_pairs(tmp_path / "data" / "math.jsonl", 40, seed=0), config


def _ids(ws: Path) -> set[tuple[str, str]]:
    return {(r.stage, r.id) for r in iter_records(Workspace.open(ws))}


def test_a_missing_model_fails_before_any_work(tmp_path: Path) -> None:
    started = time.monotonic()
    result = CliRunner().invoke(
        app, ["run", "-w", str(tmp_path / "ws"), "--model", str(tmp_path / "MISSING")]
    )
    assert result.exit_code == 1 and result.output.startswith(
        f"error: --model: model path {tmp_path / 'MISSING'}"
    )
    assert not (tmp_path / "ws").exists() and time.monotonic() - started < 5  # no data, no workspace


def test_a_mistyped_path_is_no_such_file_not_a_hub_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for typo in ("data/pairs", "data/pairs.jsonl", "pairs.parquet", "./pairs", str(tmp_path / "nope")):
        result = CliRunner().invoke(app, ["run", "-w", str(tmp_path / "ws"), "--input", typo])
        assert result.exit_code == 1 and result.output == f"error: --input {typo}: no such file or folder\n"
    result = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "none.yaml")])
    assert result.exit_code == 1 and "--config" in result.output and "dpop init" in result.output
    assert not (tmp_path / "ws").exists()


@pytest.mark.slow
def test_every_entry_point_gives_the_same_ids(prefect_server, inputs, tmp_path: Path) -> None:
    from cli.commands.run import chain_spec
    from cli.commands.serve import deployment
    from flows.data_to_model import data_to_model_flow

    data, config = inputs
    args = ["run", "--input", str(data), "--config", str(config), "--no-report", "-w"]
    prefect = CliRunner().invoke(app, [*args, str(tmp_path / "prefect")], terminal_width=250)
    assert prefect.exit_code == 0, prefect.output
    assert "smoke test" in prefect.output and "Prefect flow, trained" in prefect.output
    direct = CliRunner().invoke(app, [*args, str(tmp_path / "direct"), "--engine", "direct"])
    assert direct.exit_code == 0, direct.output
    # `dpop serve`'s deployment (the spec its options give), registered, run with what the server holds
    spec = chain_spec(
        [str(data)], None, config, dict.fromkeys(("n", "steps", "sft_steps", "seed")), None, False
    )
    parameters = {"workspace": str(tmp_path / "served"), "spec": spec.to_json()}
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        registered = client.read_deployment(deployment("entry-points", "0 3 * * *", parameters).apply())
    served = data_to_model_flow(**registered.parameters)
    assert served["smoke_test"] and served["status"] == "trained"
    ids = _ids(tmp_path / "prefect")
    assert {stage for stage, _ in ids} == {
        *("ingest", "tiny_model", "build", "sft", "logps", "train", "eval"),
        "generation_eval",  # the gate: the eval split's prompts are verifiable ("The answer is: N")
    }
    assert _ids(tmp_path / "direct") == ids == _ids(tmp_path / "served")
    run = json.loads((tmp_path / "prefect" / "runs" / served["run_id"] / "chain.json").read_text())
    assert run["smoke_test"] == served["smoke_test"]


@pytest.mark.slow
def test_an_up_to_date_run_starts_neither_prefect_nor_torch(inputs, tmp_path: Path) -> None:
    data, config = inputs
    config.write_text(yaml.safe_dump({k: v for k, v in TINY.items() if k != "losses"}), encoding="utf-8")
    args = ["run", "--input", str(data), "--config", str(config), "-w", str(tmp_path / "ws")]
    assert CliRunner().invoke(app, [*args, "--engine", "direct"]).exit_code == 0
    command = [sys.executable, "-X", "importtime", "-m", "cli.main", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250"}
    # The probe keys on the stages' code: where it changed meanwhile (a shared checkout), the run goes the
    # full way, finds every stage done and remembers their ids for this code; the next run is the probe.
    for _ in range(2):
        again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        if "every stage up to date" in again.stdout:
            break
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in again.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert not {"prefect", "torch", "transformers"} & imported, again.stdout[:3000]
    assert "every stage up to date" in again.stdout and "SMOKE TEST" in again.stdout
    assert len(list((tmp_path / "ws" / "runs").iterdir())) == 2  # the default: DPOP λ=50 and DPO


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_rerunning_does(inputs, tmp_path: Path) -> None:
    data, config = inputs
    long = {**TINY, "training": {**TINY["training"], "max_steps": 10, "eval_steps": 10}}
    config.write_text(yaml.safe_dump(long), encoding="utf-8")
    ws = tmp_path / "ws"
    command = [
        sys.executable,
        "-m",
        "cli.main",
        "run",
        "--input",
        str(data),
        "--config",
        str(config),
        "-w",
        str(ws),
        "--engine",
        "direct",
        "--no-report",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250"}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while not list(ws.glob("runs/*/checkpoint-*/trainer_state.json")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-3000:]
    assert "interrupted: run the same command again to resume" in " ".join(out.split())
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    [run] = [r for r in iter_records(Workspace.open(ws)) if r.stage == "train"]
    assert run.summary.get("resumed") is True


@pytest.mark.slow
def test_data_with_no_training_pair_fails_in_one_line_under_prefect(tmp_path: Path) -> None:
    """Every pair rejected: the chain stops after the build with where the rows went, once, without
    Prefect's task or flow tracebacks on the console (they stay in Prefect's logs); a rerun says it again
    from the finished stages, without starting Prefect."""
    data = tmp_path / "same.jsonl"
    rows = [{"prompt": f"{i} + {i}?", "chosen": str(2 * i), "rejected": str(2 * i)} for i in range(5)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    command = [sys.executable, "-m", "cli.main", "run", "--input", str(data), "-w", str(tmp_path / "ws")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250"}
    expected = "error: no training pairs left: 5 row(s) read, 0 kept, 0 in the train split (rejected: identical_responses 5)"
    for _ in range(2):
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stderr[-3000:]
        assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
        [error] = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
        assert error.startswith(expected) and "FROM rejections" in error
