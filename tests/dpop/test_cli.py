"""`dpop model tiny`, `dpop refs`, `dpop train` from the command line, and their one-line errors."""

from __future__ import annotations

import json

import pyarrow as pa
from typer.testing import CliRunner

from cli.main import app
from pipeline.shards import write_manifest
from tests.dpop.conftest import write_dataset

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    result.flat = " ".join(result.output.split())  # rich wraps long lines at the terminal width
    return result


def test_tiny_refs_train(workspace, tiny_model_dir, tmp_path):
    out = tmp_path / "made"
    result = invoke(
        "model",
        "tiny",
        "--tokenizer",
        tiny_model_dir,
        "--out",
        out,
        "--layers",
        1,
        "--hidden",
        16,
        "--heads",
        2,
    )
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["architectures"] == ["LlamaForCausalLM"]

    dataset_id = write_dataset(workspace, tiny_model_dir)
    result = invoke("refs", "-w", workspace.root, "--dataset", dataset_id, "--model", tiny_model_dir)
    assert result.exit_code == 0, result.output
    ref_id = result.output.strip().splitlines()[-1]
    assert ref_id.startswith(dataset_id + "-ref-")

    yaml_path = tmp_path / "train.yaml"
    yaml_path.write_text(
        "learning_rate: 0.001\nlogging_steps: 1\nper_device_train_batch_size: 4\ndisable_tqdm: true\n"
    )
    result = invoke(
        "train", "-w", workspace.root, "--dataset", ref_id, "--model", tiny_model_dir,
        "--config", yaml_path, "--max-steps", 2, "--penalty-lambda", 5,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run_id = result.output.strip().splitlines()[-1]
    assert run_id.startswith("run-") and "reused" not in result.output
    record = json.loads((workspace.run_dir(run_id) / "run.json").read_text())
    assert record["config"]["penalty_lambda"] == 5.0 and record["config"]["max_steps"] == 2

    again = invoke(
        "train", "-w", workspace.root, "--dataset", ref_id, "--model", tiny_model_dir,
        "--config", yaml_path, "--max-steps", 2, "--penalty-lambda", 5,
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert again.output.strip().splitlines()[-1] == run_id and f"run {run_id} had finished" in again.flat


def test_errors_are_one_line(workspace, tiny_model_dir, tmp_path):
    good = write_dataset(workspace, tiny_model_dir)
    result = invoke("train", "-w", workspace.root, "--dataset", good, "--model", tmp_path / "missing")
    assert result.exit_code == 1 and "does not exist" in result.flat and "Traceback" not in result.output

    mismatch = write_dataset(
        workspace, tiny_model_dir, dataset_id="other-tok", tokenizer_sha256_override="0" * 64
    )
    result = invoke("train", "-w", workspace.root, "--dataset", mismatch, "--model", tiny_model_dir)
    assert result.exit_code == 1 and "tokenizer mismatch" in result.flat

    # a dataset version whose shards are not dpop_shard rows (e.g. written by another tool)
    folder = workspace.dataset_dir("not-shards")
    folder.mkdir(parents=True)
    shard = folder / "train-00000.arrow"
    table = pa.table({"prompt": ["hi"], "chosen": ["a"], "rejected": ["b"]})
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    from dpop.model_io import tokenizer_sha256
    from pipeline.identity import file_sha256

    sha = file_sha256(shard)  # the shard is whole: what fails is its columns

    write_manifest(
        folder,
        {
            "dataset_id": "not-shards",
            "tokenizer": {"sha256": tokenizer_sha256(tiny_model_dir)},
            "splits": {
                "train": {
                    "rows": 1,
                    "shards": [{"file": shard.name, "rows": 1, "bytes": shard.stat().st_size, "sha256": sha}],
                }
            },
        },
    )
    result = invoke("train", "-w", workspace.root, "--dataset", "not-shards", "--model", tiny_model_dir)
    assert result.exit_code == 1 and "missing column(s) prompt_ids" in result.flat

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lr: 1\n")
    result = invoke(
        "train", "-w", workspace.root, "--dataset", good, "--model", tiny_model_dir, "--config", bad_yaml
    )
    assert result.exit_code == 1 and "unknown key 'lr'" in result.flat
