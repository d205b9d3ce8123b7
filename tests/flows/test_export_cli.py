"""`dpop export` from the command line: what it prints and writes, and every failure as one clean line
(an unknown id, a folder in the way, a push while offline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.pipeline._export_data import build_small_dataset

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return build_small_dataset(tmp_path_factory.mktemp("export-cli"))


def export(small, *arguments: str):
    return runner.invoke(app, ["export", *arguments, "-w", str(small.workspace.root)])


def test_export_prints_what_it_wrote(small, tmp_path):
    out = tmp_path / "out"
    result = export(small, small.dataset_id[:10], "--out", str(out), "--format", "parquet")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"exported 52 pairs of {small.dataset_id} (train ")
    assert lines[0].endswith(f") as parquet (conversational) to {out}")
    assert lines[1] == f"licences: apache-2.0, mit; card: {out / 'README.md'}"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "test.parquet", "train.parquet"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["ds-nope", "--out", "{out}"], "error: no dataset version 'ds-nope' in "),
        (["ds-", "--out", "{file}"], "error: --out {file} exists and is not a folder"),
    ],
)
def test_failures_are_one_line(small, tmp_path, arguments, message):
    names = {"out": str(tmp_path / "out"), "file": str(tmp_path / "file.txt")}
    (tmp_path / "file.txt").write_text("x")
    result = export(small, *[a.format(**names) for a in arguments])
    assert result.exit_code == 1
    assert result.output.startswith(message.format(**names)) and result.output.count("\n") == 1
    assert "Traceback" not in result.output


def test_bad_format_is_refused_by_the_option_itself(small, tmp_path):
    result = export(small, small.dataset_id, "--out", str(tmp_path / "out"), "--format", "csv")
    assert result.exit_code == 2 and "'csv' is not one of" in result.output


def test_push_while_offline_is_one_line_after_a_complete_export(small, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cli.main", "export", small.dataset_id, "--out", str(out)]
    command += ["--push-to-hub", "someone/prefs", "-w", str(small.workspace.root)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stdout.startswith("exported 52 pairs")
    assert done.stderr.splitlines() == [
        "error: could not push to the Hub dataset repo someone/prefs: offline mode is on (HF_HUB_OFFLINE). "
        f"The export in {out} is complete; push it later with: hf upload someone/prefs {out} --repo-type dataset"
    ]
    assert (out / "README.md").is_file() and list((out / "data").glob("train-*.parquet"))
