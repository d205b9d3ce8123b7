"""`dpop run` end to end on a reduced default: synthetic pairs -> tiny model -> SFT reference -> DPOP,
each a stage of the Prefect data-to-model flow -> report; a second run finds every stage done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from pipeline.catalog import Catalog
from pipeline.workspace import Workspace


def _dpop(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in its own process, as a user runs it: Prefect's ephemeral server with its database in
    the workspace (no PREFECT_HOME / PREFECT_API_URL from the caller), a wide terminal for rich."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "OPENLINEAGE"))}
    env.update(COLUMNS="250", DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    command = [sys.executable, "-m", "cli.main", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_dpop_run_default_to_a_report_then_up_to_date(tmp_path: Path) -> None:
    args = ["run", "-w", str(tmp_path / "ws"), "--n", "120", "--steps", "4", "--sft-steps", "8"]
    first = _dpop(args, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    ws = Workspace.open(tmp_path / "ws")
    # the default compares DPOP (λ = 50) with DPO: two runs from one reference, one comparison
    chain = json.loads((next(ws.runs_dir.iterdir()) / "chain.json").read_text())
    assert len(chain["runs"]) == 2 and chain["comparison_id"]
    dpo = json.loads((ws.run_dir(chain["runs"][1]) / "run.json").read_text())
    assert dpo["loss"]["name"] == "dpo" and (ws.run_dir(chain["runs"][1]) / "report" / "index.html").is_file()
    run_dir = ws.run_dir(chain["runs"][0])
    run = json.loads((run_dir / "run.json").read_text())
    assert dpo["base_model"] == run["base_model"] and dpo["dataset_id"] == run["dataset_id"]

    # the reference policy is the SFT warm-up of the tiny model, and the run trained from it with DPOP
    [sft_dir] = list(ws.models_dir.glob("sft-*"))
    assert run["base_model"]["path"] == str(sft_dir)
    assert run["config"]["loss"] == "dpop" and run["config"]["penalty_lambda"] == 50.0
    assert run["config"]["max_steps"] == 4
    sft_record = json.loads((sft_dir / "stage.json").read_text())
    losses = sft_record["summary"]["losses"]
    assert sft_record["config"]["settings"]["steps"] == 8 and losses[-1] < losses[0]
    [base] = [i for i in sft_record["inputs"] if i["relation"] == "sft_from"]
    assert Path(base["path"]).name.startswith("tiny-") and base["meta"]["made_by"] == "tiny_model"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {m["split"] for m in metrics} == {"train", "eval"} and max(m["step"] for m in metrics) == 4

    # the report, the model, and the lineage from the model back to the synthetic file
    index = run_dir / "report" / "index.html"
    assert index.is_file() and (run_dir / "report" / "training.png").is_file()
    assert (run_dir / "model" / "config.json").is_file()
    assert ws.lineage_events_path.is_file()
    catalog = Catalog(ws)
    relations = dict((relation, parent) for parent, relation in catalog.parents(run_dir.name))
    assert relations["trained_on"] == run["dataset_id"]
    assert "synth-math-n120-seed0.jsonl" in index.read_text()
    for text in (str(index), f"dpop lineage {run_dir.name}", "Prefect flow, trained"):
        assert text in first.stdout

    # unchanged inputs: no new SFT, no retraining. The probe finds every stage done without Prefect (where
    # the stages' code changed in between, in a shared checkout, the flow runs and finds them done)
    second = _dpop(args, cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "reference policy" in second.stdout
    assert len(list(ws.models_dir.glob("sft-*"))) == 1 and len(list(ws.runs_dir.iterdir())) == 2
    assert "every stage up to date" in second.stdout or "Prefect flow, up to date" in second.stdout


def test_run_refuses_a_bad_config_with_the_key(tmp_path: Path) -> None:
    config = tmp_path / "dpop.yaml"
    config.write_text("training:\n  penalty_lamda: 5\n")
    result = CliRunner().invoke(app, ["run", "-w", str(tmp_path / "ws"), "--config", str(config)])
    assert result.exit_code == 1 and "penalty_lamda" in result.output
    config.write_text("sft:\n  stepz: 5\n")
    result = CliRunner().invoke(app, ["run", "-w", str(tmp_path / "ws"), "--config", str(config)])
    assert result.exit_code == 1 and "sft.stepz" in result.output
    result = CliRunner().invoke(
        app, ["run", "-w", str(tmp_path / "ws"), "--config", str(tmp_path / "none.yaml")]
    )
    assert result.exit_code == 1 and "dpop init" in result.output
