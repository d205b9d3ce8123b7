"""`dpop init` writes the commented default config, which `dpop run` reads back as its defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from typer.testing import CliRunner

from cli.main import app
from demo.defaults import DEFAULT_CONFIG_YAML, load_run_config


def test_init_writes_a_commented_config_that_loads(tmp_path: Path) -> None:
    path = tmp_path / "dpop.yaml"
    result = CliRunner().invoke(app, ["init", str(path)])
    assert result.exit_code == 0, result.output
    text = path.read_text()
    assert text == DEFAULT_CONFIG_YAML and text.count("#") >= 20
    assert set(yaml.safe_load(text)) == {
        "seed",
        "synth",
        "tiny_model",
        "sft",
        "curation",
        "losses",
        "training",
        "gate",
    }
    settings = load_run_config(path)
    assert settings.sft_explicit and not load_run_config(None).sft_explicit  # the file names sft.steps
    assert dataclasses.replace(settings, sft_explicit=False) == load_run_config(None)
    assert settings.training["loss"] == "dpop" and settings.curation.split.eval_fraction == 0.1
    assert settings.losses == ("dpop:50", "dpo")  # `dpop run` compares DPOP with DPO by default

    again = CliRunner().invoke(app, ["init", str(path)])
    assert again.exit_code == 1 and "--force" in again.output
    assert CliRunner().invoke(app, ["init", str(path), "--force"]).exit_code == 0


def test_partial_config_and_flags_override_defaults(tmp_path: Path) -> None:
    path = tmp_path / "dpop.yaml"
    path.write_text("training:\n  penalty_lambda: 5\ncuration:\n  split:\n    eval_fraction: 0.2\n")
    settings = load_run_config(path, n=50, steps=7, sft_steps=0, seed=3)
    assert settings.training["penalty_lambda"] == 5 and settings.training["beta"] == 0.1
    assert settings.training["max_steps"] == 7 and settings.training["seed"] == 3
    assert settings.curation.split.eval_fraction == 0.2 and settings.curation.tokenize.max_length == 384
    assert settings.synth_n == 50 and settings.sft["steps"] == 0 and settings.sft["seed"] == 3


def test_a_bad_key_deep_in_dpop_yaml_is_one_line_naming_its_path(tmp_path: Path) -> None:
    path = tmp_path / "dpop.yaml"
    path.write_text("curation:\n  tokenize:\n    max_length: 1e18\n")
    result = CliRunner().invoke(app, ["run", "--config", str(path), "-w", str(tmp_path / "ws")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"error: {path}: config key 'curation.tokenize.max_length' must be int in [2, 1048576], got 1e+18"
    ]
    path.write_text("training:\n  lambda: 5\n")
    result = CliRunner().invoke(app, ["run", "--config", str(path), "-w", str(tmp_path / "ws")])
    assert "did you mean penalty_lambda?" in result.output and len(result.output.strip().splitlines()) == 1
