"""`dpop tokenizer train` and `dpop build` end to end on a small JSONL file: funnel, histogram, id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from pipeline.ingest import ingest_source
from pipeline.shards import load_manifest
from pipeline.workspace import Workspace

runner = CliRunner()


@pytest.mark.slow
def test_tokenizer_train_then_build(workspace: Workspace, tmp_path: Path) -> None:
    source = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
        for i in range(30)
    ]
    rows.append({"prompt": "x", "chosen": "same", "rejected": "same"})
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ingest_source(source, workspace)
    tokenizer = tmp_path / "tok"
    trained = runner.invoke(
        app, ["tokenizer", "train", "-w", str(workspace.root), "--out", str(tokenizer), "--vocab-size", "300"]
    )
    assert trained.exit_code == 0, trained.output
    assert (tokenizer / "tokenizer.json").is_file()

    config = tmp_path / "curate.yaml"
    config.write_text(
        "split: {eval_fraction: 0.2}\ntokenize: {max_length: 128, max_prompt_length: 64}\n", encoding="utf-8"
    )
    args = ["build", "-w", str(workspace.root), "--config", str(config), "--tokenizer", str(tokenizer)]
    built = runner.invoke(app, args)
    assert built.exit_code == 0, built.output
    dataset_id = built.output.strip().splitlines()[-1]
    manifest = load_manifest(workspace, dataset_id)
    assert manifest["dataset_id"] == dataset_id
    assert "identical_responses" in built.output and "edit ratio of kept pairs" in built.output
    assert "[0.9, 1.0]" in built.output
    again = runner.invoke(app, args)
    assert (
        again.exit_code == 0
        and "reused" in again.output
        and again.output.strip().splitlines()[-1] == dataset_id
    )

    config.write_text("filters:\n  edit_ration: {max: 0.5}\n", encoding="utf-8")
    bad = runner.invoke(app, args)
    assert bad.exit_code == 1 and "filters.edit_ration" in bad.output
