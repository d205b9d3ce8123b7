"""The product path from the command line: build, `dpop refs`, `dpop logps` of a probe, `dpop select` with
weights, `dpop train` on the selection (a weighted loss), and `dpop sql` showing what was left out."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from pipeline.build import build_dataset
from pipeline.ingest import ingest_source
from pipeline.manifest import load as load_manifest
from pipeline.sql import query
from tests.dpop.conftest import synthetic_pairs

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    result.flat = " ".join(result.output.split())
    return result


@pytest.fixture
def built(workspace, tiny_model_dir, tmp_path):
    for name, seed, count in (("hh", 1, 24), ("gsm", 2, 16)):
        path = tmp_path / f"{name}.jsonl"
        with path.open("w") as handle:
            for prompt, chosen, rejected in synthetic_pairs(count, seed=seed):
                handle.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
        ingest_source(path, workspace)
    config = {"split": {"eval_fraction": 0.2}, "tokenize": {"max_length": 256, "max_prompt_length": 128}}
    return build_dataset(workspace, config, tiny_model_dir).dataset_id


def test_logps_select_train_sql(workspace, tiny_model_dir, built, tmp_path):
    from demo.tiny_model import make_tiny_model

    probe = make_tiny_model(
        tiny_model_dir, tmp_path / "probe", num_layers=2, hidden_size=32, num_heads=2, seed=3
    )
    result = invoke("refs", "-w", workspace.root, "-d", built, "-m", tiny_model_dir)
    assert result.exit_code == 0, result.output
    ref_id = result.output.strip().splitlines()[-1]

    result = invoke("logps", "-w", workspace.root, "-d", ref_id, "-m", probe)
    assert result.exit_code == 0, result.output
    assert "computed 40, from the cache 0" in result.flat and result.output.strip().splitlines()[
        -1
    ].startswith("lp-")

    result = invoke(
        "select", "-w", workspace.root, "-d", ref_id, "--rule", "margin", "--keep", 0.5, "--probe", probe,
        "--mix", "hh=0.5,gsm=0.5", "--weight", "1 + score", "--source-weights", "gsm=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    selected = result.output.strip().splitlines()[-1]
    assert selected.startswith(ref_id + "-sel-")
    assert "kept vs dropped, by source" in result.output and "reference ranking accuracy" in result.flat

    yaml_path = tmp_path / "train.yaml"
    yaml_path.write_text(
        "learning_rate: 0.001\nlogging_steps: 1\nper_device_train_batch_size: 4\ndisable_tqdm: true\n"
    )
    result = invoke(
        "train", "-w", workspace.root, "--dataset", selected, "--model", tiny_model_dir, "--config", yaml_path,
        "--max-steps", 2,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run_id = result.output.strip().splitlines()[-1]
    metrics = [
        json.loads(line) for line in (workspace.run_dir(run_id) / "metrics.jsonl").read_text().splitlines()
    ]
    train = [m for m in metrics if m["split"] == "train"]
    assert train and all(m["weights/mean"] >= 1.0 for m in train)  # 1 + clip(margin) >= 1, gsm doubled
    assert all("weights/mean" not in m for m in metrics if m["split"] == "eval")

    # the selection is the current version (the latest run's): SQL shows what it left out and why
    result = invoke(
        "sql", "-w", workspace.root, "SELECT reason, count(*) AS n FROM rejections GROUP BY reason"
    )
    assert result.exit_code == 0, result.output
    assert "not_selected" in result.output
    kept = query(
        workspace, "SELECT source, count(*) AS n FROM selections WHERE kept AND split = 'train' GROUP BY 1"
    )
    train_rows = load_manifest(workspace, selected).split_rows("train")
    assert sum(kept["n"]) == train_rows and max(kept["n"]) - min(kept["n"]) <= 1  # the mix: half each


def test_select_errors_are_one_line(workspace, tiny_model_dir, built):
    result = invoke("select", "-w", workspace.root, "-d", built, "--rule", "small_gap")
    assert result.exit_code == 1 and "needs the log-probs of the reference and probe model" in result.flat
    assert "Traceback" not in result.output
    result = invoke("select", "-w", workspace.root, "-d", built, "--rule", "random", "--mix", "hh=half")
    assert result.exit_code == 1 and "--mix: expected name=value" in result.flat
    result = invoke("select", "-w", workspace.root, "-d", built, "--rule", "random", "--band", "3")
    assert result.exit_code == 1 and "--band: expected MIN,MAX" in result.flat
