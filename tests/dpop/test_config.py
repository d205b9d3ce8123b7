"""TrainConfig: a TrainingArguments subclass loaded by the one config loader; one spelling per option,
errors that name the file and the key, an identity for run ids; SFTConfig and dpop.yaml too."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import TrainingArguments

from demo.defaults import load_run_config, run_config_class
from dpop.config import NOT_IN_IDENTITY, TrainConfig, has_accelerator
from dpop.sft import SFTConfig, SFTSettings
from pipeline.config import ConfigError, numeric_fields, spec_of
from pipeline.curate.config import Split, Tokenize
from pipeline.identity import stable_hash

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train.yaml"
BOMB = (
    'a: &a ["lol","lol"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n'
    + "".join(f"{chr(100 + i)}: &{chr(100 + i)} [{','.join(['*' + chr(99 + i)] * 9)}]\n" for i in range(12))
)


def test_example_yaml_loads():
    config = TrainConfig.from_yaml(EXAMPLE)
    assert config.loss == "dpop" and config.penalty_lambda == 50.0
    assert isinstance(config, TrainingArguments)


def test_yaml_values_and_coercion(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("loss: dpop\npenalty_lambda: 5\nbeta: 1\nlora_target_modules: [q_proj, v_proj]\n")
    config = TrainConfig.from_yaml(path)
    assert config.penalty_lambda == 5.0 and isinstance(config.beta, float)
    assert config.lora_target_modules == ["q_proj", "v_proj"]
    assert config.loss_kwargs() == {"beta": 1.0, "penalty_lambda": 5.0}
    assert TrainConfig(loss="dpo").loss_kwargs() == {"beta": 0.1}
    path.write_text("learning_rate: 1e-5\n")  # YAML 1.1 reads this as a string; we read a float
    assert TrainConfig.from_yaml(path).learning_rate == 1e-5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lerning_rate: 0.1\n", r"unknown key 'lerning_rate'; did you mean learning_rate\?"),
        ("beta: fast\n", "key 'beta' must be float"),
        ("beta: -1\n", r"config key 'beta' must be float in \(0, 100\], got -1"),
        ("loss: kto\n", "config key 'loss' must be one of dpop, dpo, ipo, robust, hinge, got 'kto'"),
        (
            "per_device_train_batch_size: 2.5\n",
            r"key 'per_device_train_batch_size' must be int in \[1, 65536\]",
        ),
        ("training_args: {not_a_field: 1}\n", "unknown key 'training_args.not_a_field'"),
        (
            "training_args: {seed: 1}\n",
            "config key 'training_args.seed' is in training_args, a retired .* write it as seed",
        ),
        ("- a\n- b\n", "expected a mapping"),
        ("bf16: true\nfp16: true\n", "choose at most one"),
        ("lambda: 5\n", r"config key 'lambda' is an old spelling; did you mean penalty_lambda\?"),
        ("dpop_lambda: 5\n", r"config key 'dpop_lambda' is an old spelling; did you mean penalty_lambda\?"),
        ("gradient_checkpointing: true\n", r"did you mean activation_checkpointing\?"),
        ("output_dir: /tmp/x\n", "config key 'output_dir' is not settable"),
        ("optim: adamw_torh\n", r"config key 'optim' must be one of .* \(did you mean adamw_torch\?\)"),
        ("lr_scheduler_type: cosin\n", r"\(did you mean cosine\?\)"),
        ("max_steps: 0\nnum_train_epochs: 0\n", "one must be positive"),
        ("seed: 1e30\n", r"config key 'seed' must be int in \[0, 4294967295\]"),
        ("load_best_model_at_end: true\n", "load_best_model_at_end requires"),  # TrainingArguments' own check
        ("beta: &b 1\nlabel_smoothing: *b\n", "refused at line 1, column 7: anchors and aliases"),
        ("beta: 1\nbeta: 2\n", "'beta' appears twice"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, message):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        TrainConfig.from_yaml(path)
    assert str(path) in str(error.value)
    assert isinstance(error.value, ConfigError) and "\n" not in str(error.value)


def test_overrides_keep_the_rest():
    config = TrainConfig(beta=0.5).with_overrides(penalty_lambda=0.0, loss=None)
    assert config.beta == 0.5 and config.penalty_lambda == 0.0 and config.loss == "dpop"
    with pytest.raises(ConfigError, match="command line: config key 'penalty_lambda' must be float in"):
        config.with_overrides(penalty_lambda=-1.0)


def test_any_training_arguments_field_passes_through(tmp_path):
    """Fields dpop does not declare reach the Trainer as TrainingArguments has them, and survive as_dict."""
    path = tmp_path / "train.yaml"
    path.write_text(
        "adam_beta2: 0.95\nlr_scheduler_type: cosine_with_min_lr\nlr_scheduler_kwargs: {min_lr_rate: 0.1}\n"
        "dataloader_drop_last: true\nlogging_first_step: true\ninclude_num_input_tokens_seen: true\n"
        "torch_compile_mode: null\nlabel_names: [labels]\n"
    )
    config = TrainConfig.from_yaml(path)
    assert config.adam_beta2 == 0.95 and config.lr_scheduler_type.value == "cosine_with_min_lr"
    assert config.lr_scheduler_kwargs == {"min_lr_rate": 0.1} and config.dataloader_drop_last
    assert config.include_num_input_tokens_seen == "all"  # TrainingArguments' own normalisation ran
    stored = config.as_dict()
    assert json.loads(json.dumps(stored)) == stored
    again = TrainConfig.from_dict(stored)
    assert again.as_dict() == stored and again.identity() == config.identity()
    assert "adam_beta2" in config.identity() and "dataloader_drop_last" in config.identity()
    # every TrainingArguments field is a TrainConfig field, and none was copied by hand
    assert {f.name for f in dataclasses.fields(TrainingArguments)} <= {
        f.name for f in dataclasses.fields(config)
    }


def test_identity_is_stable_and_path_free(tmp_path):
    base = TrainConfig(penalty_lambda=5.0, max_steps=10)
    noisy = TrainConfig(
        penalty_lambda=5.0,
        max_steps=10,
        output_dir=str(tmp_path / "somewhere"),
        report_to="tensorboard",
        disable_tqdm=True,
        logging_steps=1,
        eval_steps=3,
        save_steps=2,
        save_total_limit=2,
        dataloader_num_workers=2,
        run_name="mine",
    )
    assert noisy.identity() == base.identity()
    assert stable_hash(base.identity()) == stable_hash(TrainConfig.from_dict(base.as_dict()).identity())
    assert str(tmp_path) not in json.dumps(noisy.identity()) and "/" not in json.dumps(base.identity())
    assert TrainConfig(penalty_lambda=6.0, max_steps=10).identity() != base.identity()
    assert TrainConfig(penalty_lambda=5.0, max_steps=10, adam_beta2=0.9).identity() != base.identity()
    # which checkpoint becomes the model depends on eval/save once load_best_model_at_end is on
    best = dict(load_best_model_at_end=True, eval_strategy="steps", save_strategy="steps", max_steps=10)
    assert (
        TrainConfig(eval_steps=2, save_steps=2, **best).identity()
        != TrainConfig(eval_steps=5, save_steps=5, **best).identity()
    )
    assert {"output_dir", "report_to", "logging_steps", "disable_tqdm"} <= NOT_IN_IDENTITY


def test_cpu_fallback_warns_once_in_words_for_the_user():
    if has_accelerator():
        pytest.skip("the fallback is for machines without a GPU")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = TrainConfig(fp16=True)
        TrainConfig.from_dict(config.as_dict())  # a copy does not warn again
    assert [str(w.message) for w in caught if "fp16" in str(w.message)] == [
        "fp16 needs a GPU and this machine has none: training runs in float32"
    ]
    assert not config.fp16 and config.use_cpu and "use_cpu" not in config.as_dict()


# ----- every numeric setting has a range, and out-of-range values are refused -----------------------

CLASSES = [TrainConfig, SFTConfig, SFTSettings, run_config_class()]


def _all_numeric(cls, prefix=""):
    from pipeline.config import nested_configs

    found = {prefix + name: item for name, item in numeric_fields(cls).items()}
    for name, sub in nested_configs(cls).items():
        if sub.__module__.startswith(("dpop", "pipeline")):
            found.update(_all_numeric(sub, f"{prefix}{name}."))
    return found


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_numeric_setting_has_a_range(cls):
    unbounded = [name for name, (_, spec) in _all_numeric(cls).items() if spec is None or not spec.bounded]
    assert unbounded == []


def _outside(spec) -> st.SearchStrategy:
    low = spec.ge if spec.ge is not None else spec.gt
    high = spec.le if spec.le is not None else spec.lt
    below = st.floats(max_value=low, exclude_max=spec.ge is not None, allow_nan=False, allow_infinity=False)
    above = st.floats(min_value=high, exclude_min=spec.le is not None, allow_nan=False, allow_infinity=False)
    return st.one_of(
        below, above, st.just(float("nan")), st.just(float("inf")), below.map(int), above.map(int)
    )


RUN_NUMERIC = {
    name: spec
    for name, (_, spec) in _all_numeric(run_config_class()).items()
    if "." in name or name == "seed"
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_out_of_range_values_in_dpop_yaml_are_refused(tmp_path_factory, data):
    """Any numeric key of dpop.yaml (any section), set out of its range in a YAML file: a ConfigError
    naming the file and the key's full path, never an accepted value and never another exception."""
    key = data.draw(st.sampled_from(sorted(RUN_NUMERIC)))
    spec = RUN_NUMERIC[key]
    value = data.draw(_outside(spec).filter(lambda v: not spec.within(v) if v == v else True))
    *sections, leaf = key.split(".")
    text = "".join(f"{'  ' * depth}{name}:\n" for depth, name in enumerate(sections))
    shown = ".nan" if value != value else (".inf" if value == float("inf") else repr(value))
    text += f"{'  ' * len(sections)}{leaf}: {shown}\n"
    path = tmp_path_factory.mktemp("cfg") / "dpop.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_run_config(path)
    assert str(error.value).startswith(f"{path}: config key '{key}' must be ")


def test_sft_config_is_checked_in_python_too():
    with pytest.raises(ConfigError, match=r"config key 'batch_size' must be int in \[1, 65536\], got 0"):
        SFTConfig(batch_size=0)
    spec = spec_of({f.name: f for f in dataclasses.fields(SFTConfig)}["max_length"])
    assert spec.bounded and spec.le == 1 << 20


# ----- dpop.yaml ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "curation:\n  tokenize:\n    max_length: 1e18\n",
            r"dpop.yaml: config key 'curation.tokenize.max_length' must be int in \[2, 1048576\], got 1e\+18",
        ),
        (
            "training:\n  lambda: 5\n",
            r"dpop.yaml: config key 'training.lambda' is an old spelling; did you mean penalty_lambda\?",
        ),
        ("trainig: {}\n", r"dpop.yaml: unknown key 'trainig'; did you mean training\?"),
        ("sft:\n  max_lenght: 10\n", r"dpop.yaml: unknown key 'sft.max_lenght'; did you mean max_length\?"),
        ("sft:\n  seed: 3\n", "dpop.yaml: unknown key 'sft.seed'"),  # one seed: the top-level one
        (
            "tiny_model:\n  hidden_size: 100\n  heads: 3\n",
            r"config key 'tiny_model.hidden_size' \(100\) is not a multiple",
        ),
        (
            "training:\n  beta: 0\n",
            r"dpop.yaml: config key 'training.beta' must be float in \(0, 100\], got 0",
        ),
        ("training:\n  bf16: true\n  fp16: true\n", "dpop.yaml: in 'training': bf16 and fp16 are both true"),
        (BOMB, "anchors and aliases"),
    ],
)
def test_dpop_yaml_errors_name_the_key_path(tmp_path, text, message):
    path = tmp_path / "dpop.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_run_config(path)
    assert "\n" not in str(error.value)


def test_flags_are_validated_with_the_file(tmp_path):
    with pytest.raises(ConfigError, match="with the command-line flags: config key 'synth.n' must be int"):
        load_run_config(None, n=0)


@pytest.mark.parametrize("kind", ["train.yaml", "dpop.yaml"])
def test_alias_bomb_is_refused_fast_in_bounded_memory(tmp_path, kind):
    """Billion laughs (9**14 leaves once expanded): refused at its first anchor, in well under a
    second and a few MB, by the training config and by dpop.yaml (the curation config: pipeline tests)."""
    import time
    import tracemalloc

    path = tmp_path / kind
    path.write_text(BOMB)
    read = TrainConfig.from_yaml if kind == "train.yaml" else load_run_config
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match=f"{path}: refused at line 1, column 4: anchors and aliases"):
            read(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0 and peak < 5_000_000, peak


VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["dpop", "ipo", "cosine", "adamw_torch", "", "all-linear", "bfloat16", "1e-5"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)


def _value_for(hint, spec):
    """Mostly plausible values (in range, a choice, a bool), sometimes anything."""
    import typing

    members = typing.get_args(hint) or (hint,)
    plausible = []
    if spec is not None and spec.bounded and (int in members or float in members):
        low = max(spec.ge if spec.ge is not None else spec.gt, -1e6)
        high = min(spec.le if spec.le is not None else spec.lt, 1e6)
        numbers = st.floats(min_value=low, max_value=high, allow_nan=False)
        plausible.append(numbers.map(round) if int in members else numbers)
    if spec is not None and spec.choices:
        plausible.append(st.sampled_from(spec.choices))
    if bool in members:
        plausible.append(st.booleans())
    return st.one_of(*plausible, VALUES) if plausible else VALUES


def _section(cls, extra=()):
    from pipeline.config import _hints

    hints = _hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name in cls.__dict__.get("__annotations__", {})]
    optional = {f.name: _value_for(hints[f.name], spec_of(f)) for f in fields}
    optional.update({key: VALUES for key in extra})
    return st.fixed_dictionaries({}, optional=optional)


SECTIONS_STRATEGY = st.fixed_dictionaries(
    {},
    optional={
        "seed": _value_for(int, spec_of(dataclasses.fields(run_config_class())[0])),
        "training": _section(TrainConfig, extra=("lambda", "training_args", "optimm", "adam_beta2")),
        "sft": _section(SFTSettings, extra=("seed",)),
        "tiny_model": _section(run_config_class().__dataclass_fields__["tiny_model"].type),
        "synth": _section(run_config_class().__dataclass_fields__["synth"].type),
        "curation": st.fixed_dictionaries(
            {}, optional={"tokenize": _section(Tokenize), "split": _section(Split)}
        ),
    },
)


def _in_range(config, prefix=""):
    from pipeline.config import nested_configs

    for name, (_, spec) in numeric_fields(type(config)).items():
        value = getattr(config, name)
        if isinstance(value, int | float) and not isinstance(value, bool) and spec is not None:
            assert spec.within(value), (prefix + name, value)
    for name in nested_configs(type(config)):
        inner = getattr(config, name)
        if inner is not None and dataclasses.is_dataclass(inner):
            _in_range(inner, f"{prefix}{name}.")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=SECTIONS_STRATEGY)
def test_random_dpop_yaml_documents_load_or_fail_with_one_config_error(document):
    """Random sections and values through the loader: a valid config with every number in range, or
    one ConfigError line; never another exception."""
    from pipeline.config import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp16 fallbacks and transformers' deprecations
        try:
            config = load(run_config_class(), document, source="dpop.yaml")
        except ConfigError as error:
            assert str(error).startswith("dpop.yaml: ") and "\n" not in str(error)
            return
    _in_range(config)
