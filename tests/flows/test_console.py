"""The console of `dpop run` (cli/console.py): a line per stage and the summary, without the libraries'
chatter (Prefect's INFO lines, transformers' "Loading weights"/"Writing model shards" bars, the Trainer's
tqdm bar and printed metric dicts); `-v` gives that chatter back. Each run is the CLI in its own process,
as a user starts it, on a reduced demo (see tests/test_run_default.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from cli.console import StageDisplay, WarningLog, quiet_libraries

REPO = Path(__file__).resolve().parents[2]
PREFECT_INFO = re.compile(r"\|\s*INFO\s*\|")
TQDM_BAR = re.compile(r"\d+%\|.*\| \d+/\d+ \[")
NOISE = ("Loading weights", "Writing model shards", "{'loss'", "Running hook", "Task run")


def _dpop(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in its own process: Prefect's temporary server with its database in the workspace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "OPENLINEAGE", "TQDM_"))}
    env.update(COLUMNS="120", DO_NOT_TRACK="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "cli.main", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _config(path: Path, new_tokens: int) -> Path:
    """A small demo: one loss, short generations (the gate's) on a few prompts."""
    gate = {"generation": {"max_new_tokens": new_tokens, "max_prompts": 4}}
    path.write_text(yaml.safe_dump({"losses": ["dpop:50"], "gate": gate}), encoding="utf-8")
    return path


@pytest.mark.slow  # two reduced runs through Prefect: about 50 s
def test_dpop_run_prints_a_line_per_stage_and_the_summary_and_v_the_libraries(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    small = ["run", "-w", str(ws), "--n", "40", "--steps", "2", "--sft-steps", "0", "--no-report"]
    quiet = _dpop([*small, "--config", str(_config(tmp_path / "a.yaml", 4))], tmp_path)
    assert quiet.returncode == 0, quiet.stdout[-3000:] + quiet.stderr[-3000:]
    shown = quiet.stdout + quiet.stderr
    assert not PREFECT_INFO.search(shown) and not TQDM_BAR.search(shown), shown
    assert not [noise for noise in NOISE if noise in shown], shown
    lines = shown.splitlines()
    for stage in (
        "ingest",
        "tiny Llama",
        "build",
        "log-probs of",
        "train dpop",
        "eval ",
        "generate",
    ):
        assert any(line.startswith(f"✓ {stage}") for line in lines), (stage, shown)
    for part in ("Prefect flow, trained", "reference policy", "dpop lineage run-", "gate (champion)"):
        assert part in quiet.stdout, (part, quiet.stdout)
    assert len(lines) <= 40, shown  # one screen

    # -v, and only the gate's generations to redo: the flow runs (Prefect's INFO lines, transformers'
    # bars while the models load), the stages already done are reused (one line each)
    loud = _dpop([*small, "-v", "--config", str(_config(tmp_path / "b.yaml", 6))], tmp_path)
    assert loud.returncode == 0, loud.stdout[-3000:] + loud.stderr[-3000:]
    assert PREFECT_INFO.search(loud.stderr) and "Loading weights" in loud.stderr, loud.stderr[-3000:]
    assert "↺ train dpop" in loud.stdout and "→ generate" in loud.stdout, loud.stdout


def test_quiet_libraries_sets_only_what_the_user_left_unset_and_puts_it_back(monkeypatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")  # the user's choice wins
    with quiet_libraries(verbose=False):
        assert os.environ["TQDM_DISABLE"] == "1" and os.environ["TRANSFORMERS_VERBOSITY"] == "info"
        assert os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] == "CRITICAL"
    assert "TQDM_DISABLE" not in os.environ and os.environ["TRANSFORMERS_VERBOSITY"] == "info"
    with quiet_libraries(verbose=True):
        assert "TQDM_DISABLE" not in os.environ


def test_a_warning_is_one_line_once_and_library_deprecations_are_hidden() -> None:
    console = Console(record=True, width=200)
    log = WarningLog(console)
    with log.installed():
        for _ in range(3):
            warnings.warn_explicit(
                "fp16 needs a GPU and this machine has none", UserWarning, "/r/dpop/config.py", 1
            )
        warnings.warn_explicit("x is deprecated", FutureWarning, "/v/site-packages/transformers/a.py", 2)
        warnings.warn_explicit("odd shapes", UserWarning, "/v/site-packages/torch/nn/b.py", 3)
    text = console.export_text()
    assert text.count("warning: fp16 needs a GPU") == 1 and "deprecated" not in text
    assert "warning: odd shapes (torch)" in text and log.hidden == 1


def test_the_display_shows_a_line_per_finished_reused_or_failed_stage() -> None:
    from pipeline.stage import StageRecord

    class Stage:
        name = "ingest"

        def label(self) -> str:
            return "ingest pairs.jsonl"

    record = StageRecord(
        "ingest", 1, "ing-1", "sources/ing-1", (), (), {}, {"rows_read": 5, "pairs_written": 4, "rows_rejected": 1},
        {}, {"format": "flat"}, "", "", "",
    )  # fmt: skip
    console = Console(record=True, width=120)
    display = StageDisplay(console, live=False)
    with display.active():
        display.event("start", Stage())
        display.progress("ingest pairs.jsonl", 3, None, "format flat")
        display.event("done", Stage(), record)
        display.event("reused", Stage(), record)
        display.event("failed", Stage())
    text = console.export_text()
    assert "5 rows → 4 pairs, 1 rejected (flat)" in text and "↺ ingest pairs.jsonl" in text
    assert "✗ ingest pairs.jsonl" in text and "→ ingest pairs.jsonl" in text
