"""TrainConfig: YAML loading, aliases, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpop.config import TrainConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train.yaml"


def test_example_yaml_loads():
    config = TrainConfig.from_yaml(EXAMPLE)
    assert config.loss == "dpop" and config.penalty_lambda == 50.0


def test_yaml_aliases_and_coercion(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("loss: dpop\nlambda: 5\nbeta: 1\nlora_target_modules: [q_proj, v_proj]\n")
    config = TrainConfig.from_yaml(path)
    assert config.penalty_lambda == 5.0 and isinstance(config.beta, float)
    assert config.lora_target_modules == ["q_proj", "v_proj"]
    assert config.loss_kwargs() == {"beta": 1.0, "penalty_lambda": 5.0}
    assert TrainConfig(loss="dpo").loss_kwargs() == {"beta": 0.1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lerning_rate: 0.1\n", "unknown key 'lerning_rate'"),
        ("beta: fast\n", "key 'beta' must be float"),
        ("beta: -1\n", "config key 'beta'"),
        ("loss: kto\n", "unknown loss 'kto'"),
        ("per_device_train_batch_size: 2.5\n", "key 'per_device_train_batch_size' must be int"),
        ("training_args: {not_a_field: 1}\n", "training_args.not_a_field"),
        ("training_args: {seed: 1}\n", "training_args.seed"),
        ("- a\n- b\n", "expected a mapping"),
        ("bf16: true\nfp16: true\n", "choose at most one"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, message):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        TrainConfig.from_yaml(path)
    assert str(path) in str(error.value)


def test_overrides_keep_the_rest():
    config = TrainConfig(beta=0.5).with_overrides(penalty_lambda=0.0, loss=None)
    assert config.beta == 0.5 and config.penalty_lambda == 0.0 and config.loss == "dpop"
