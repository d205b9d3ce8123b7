"""`dpop ingest` through typer's CliRunner: summary table, clean one-line errors, --help."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app
from pipeline.ingest import latest_ingests
from pipeline.workspace import Workspace

runner = CliRunner()


def squash(text: str) -> str:
    """Output without whitespace: rich wraps long cells and paths at the terminal width."""
    return "".join(text.split())


def test_ingest_prints_summary_per_file(tmp_path):
    data = tmp_path / "mine.jsonl"
    rows = [{"question": f"q{i}", "good": "yes", "bad": "no"} for i in range(3)] + [
        {"question": "q", "good": "", "bad": "no"}
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    workspace = tmp_path / "ws"
    args = [
        "ingest",
        str(data),
        "--workspace",
        str(workspace),
        "--map",
        "prompt=question,chosen=good,rejected=bad",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = squash(result.output)
    assert "mine.jsonl" in out and "flat" in out
    assert "│4│3│3│1│empty_response1│" in out  # read, kept, pairs, rejected, by reason
    (ingest,) = latest_ingests(Workspace.open(workspace))
    assert (ingest.rows_read, ingest.rows_kept) == (4, 3)
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "(reused)" in squash(again.output)


def test_unreadable_file_exits_1_with_one_red_line_naming_it(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('[{"prompt": ')
    result = runner.invoke(app, ["ingest", str(bad), "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert squash(f"error: {bad}: not valid JSON") in squash(result.output)


def test_bad_options_fail_cleanly(tmp_path):
    data = tmp_path / "a.jsonl"
    data.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    result = runner.invoke(app, ["ingest", str(data), "-w", str(tmp_path / "ws"), "--format", "nope"])
    assert result.exit_code == 1 and "--format 'nope' is not one of" in result.output
    result = runner.invoke(app, ["ingest", str(data), "-w", str(tmp_path / "ws"), "--map", "prompt"])
    assert result.exit_code == 1 and "is not NAME=COLUMN" in result.output
    result = runner.invoke(app, ["ingest", str(tmp_path / "missing.jsonl"), "-w", str(tmp_path / "ws")])
    assert result.exit_code == 1 and "missing.jsonl" in squash(result.output)


def test_folder_notes_and_help(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "README.md").write_text("hello")
    (folder / "p.jsonl").write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    result = runner.invoke(app, ["ingest", str(folder), "-w", str(tmp_path / "ws")])
    assert result.exit_code == 0
    assert "note:skipped" in squash(result.output) and "README.md" in squash(result.output)
    help_text = runner.invoke(app, ["ingest", "--help"])
    assert help_text.exit_code == 0
    for option in ("--workspace", "--format", "--name", "--map", "--max-field-chars"):
        assert option in help_text.output


def test_example_input_of_the_readme(tmp_path):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "pairs.jsonl"
    result = runner.invoke(app, ["ingest", str(example), "-w", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    (ingest,) = latest_ingests(Workspace.open(tmp_path / "ws"))
    assert (ingest.rows_read, ingest.rows_kept, ingest.rows_rejected) == (20, 15, 5)
    assert ingest.rejected_by_reason == {
        "empty_response": 1,
        "malformed_json": 1,
        "missing_field": 1,
        "null_field": 1,
        "wrong_type": 1,
    }
