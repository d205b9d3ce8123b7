"""The curation config: defaults, strict validation naming the key, YAML loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.curate import ConfigError, CurationConfig, load_curation_config


def test_defaults_and_dict_values() -> None:
    config = load_curation_config(None)
    assert config == CurationConfig()
    assert config.filters.duplicate_pair and config.split.eval_fraction == 0.05
    config = load_curation_config({"filters": {"edit_ratio": {"max": 0.5}, "max_pairs_per_prompt": 3}})
    assert config.filters.edit_ratio.max == 0.5 and config.filters.edit_ratio.min is None
    assert config.filters.max_pairs_per_prompt == 3


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"filter": {}}, "'filter'"),
        ({"filters": {"edit_ratio": {"maximum": 1}}}, "'filters.edit_ratio.maximum'"),
        ({"filters": {"edit_ratio": {"max": "high"}}}, "'filters.edit_ratio.max'"),
        ({"filters": {"edit_ratio": {"min": 0.6, "max": 0.5}}}, "'filters.edit_ratio.min'"),
        ({"filters": {"duplicate_pair": "yes"}}, "'filters.duplicate_pair'"),
        ({"filters": {"max_pairs_per_prompt": 0}}, "'filters.max_pairs_per_prompt'"),
        ({"filters": {"max_pairs_per_prompt": 1.5}}, "'filters.max_pairs_per_prompt'"),
        ({"filters": {"length_ratio": 0.5}}, "'filters.length_ratio'"),
        ({"filters": {"user": [{"name": "a"}]}}, "'filters.user[0]'"),
        ({"filters": {"user": [{"name": "a", "drop_where": "x", "keep_where": "y"}]}}, "'filters.user[0]'"),
        ({"filters": {"user": [{"drop_where": "x"}]}}, "'filters.user[0].name'"),
        ({"filters": {"user": [{"name": "a", "drop_where": "x", "where": "y"}]}}, "'filters.user[0].where'"),
        (
            {"filters": {"decontaminate": {"file": "t.jsonl", "check": ["answer"]}}},
            "'filters.decontaminate.check'",
        ),
        ({"split": {"eval_fraction": 1.0}}, "'split.eval_fraction'"),
        ({"tokenize": {"max_length": 100, "max_prompt_length": 100}}, "'tokenize.max_prompt_length'"),
        ({"shards": {"rows_per_shard": -1}}, "'shards.rows_per_shard'"),
        (["not", "a", "mapping"], "top level"),
    ],
)
def test_bad_config_names_the_key(data, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_curation_config(data)
    assert key in str(error.value)


def test_yaml_file_and_relative_eval_path(tmp_path: Path) -> None:
    path = tmp_path / "curate.yaml"
    path.write_text(
        "filters:\n  decontaminate:\n    file: evals/test.jsonl\n    n: 8\n"
        "  user:\n    - name: short_prompt\n      drop_where: len_prompt_chars < 10\n",
        encoding="utf-8",
    )
    config = load_curation_config(path)
    assert config.filters.decontaminate.file == str(tmp_path / "evals" / "test.jsonl")
    assert config.filters.decontaminate.n == 8 and config.filters.decontaminate.fields == (
        "question",
        "answer",
    )
    assert config.filters.user[0].drop_where == "len_prompt_chars < 10"
    path.write_text("filters: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_curation_config(path)
    with pytest.raises(FileNotFoundError):
        load_curation_config(tmp_path / "missing.yaml")


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "curate.yaml"
    if not example.is_file():
        pytest.skip("examples/curate.yaml not written yet")
    config = load_curation_config(example)
    assert config.tokenize.max_prompt_length < config.tokenize.max_length
