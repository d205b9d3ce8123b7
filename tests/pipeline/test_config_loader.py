"""The one config loader (pipeline.config): safe bounded YAML, typed validation with ranges and
"did you mean", one-line errors naming the file and the key's path; the curation config on top."""

from __future__ import annotations

import dataclasses
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    ConfigError,
    Spec,
    load,
    nested_configs,
    numeric_fields,
    parse_yaml,
    read_yaml,
)
from pipeline.curate.config import CurationConfig, load_curation_config


def alias_bomb(levels: int = 12) -> str:
    """Billion laughs: each level a list of nine aliases of the one before (9**12 leaves)."""
    lines = ['l0: &l0 ["lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def bounded(call) -> tuple[float, int]:
    """(seconds, peak bytes allocated) of `call()`, which must raise ConfigError."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as error:
            call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert "anchors and aliases" in str(error.value)
    return time.perf_counter() - started, peak


def test_alias_bomb_is_refused_fast_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "curate.yaml"
    path.write_text(alias_bomb())
    for call in (lambda: read_yaml(path), lambda: load_curation_config(path)):
        seconds, peak = bounded(call)
        assert seconds < 1.0 and peak < 2_000_000, (seconds, peak)
    with pytest.raises(ConfigError, match=r"t.yaml: refused at line 2, column 4: anchors and aliases"):
        parse_yaml("a: 1\nb: &x 2\n", "t.yaml")  # an anchor alone is refused too


def test_size_depth_duplicates_and_encoding_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match=f"{big}: .* at most {MAX_CONFIG_BYTES:,}"):
        read_yaml(big)
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_DEPTH} levels"):
        parse_yaml("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "deep.yaml")
    with pytest.raises(
        ConfigError, match=r"dup.yaml: not valid YAML at line 3, column 1: key 'a' appears twice"
    ):
        parse_yaml("a: 1\nb: 2\na: 3\n", "dup.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(binary)
    with pytest.raises(FileNotFoundError, match="is a folder"):
        read_yaml(tmp_path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set\n")
    assert read_yaml(empty) == {}


def test_yaml_12_numbers() -> None:
    """`1e-5` is a float (YAML 1.1 would read a string); a whole float is accepted where an int is due."""
    assert parse_yaml("a: 1e-5\nb: 5E+3\nc: -2.5e2\nd: 1_000\ne: 3.0\n", "t") == {
        "a": 1e-5,
        "b": 5000.0,
        "c": -250.0,
        "d": 1000,
        "e": 3.0,
    }
    assert load_curation_config({"shards": {"rows_per_shard": 5e4}}).shards.rows_per_shard == 50_000


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = dataclasses.field(default=0.5, metadata={"dpop_config": Spec(gt=0, lt=1)})
    mode: str = dataclasses.field(default="fast", metadata={"dpop_config": Spec(choices=("fast", "slow"))})


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    count: int = dataclasses.field(default=1, metadata={"dpop_config": Spec(ge=1, le=10)})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"inner": {"rte": 0.1}},
            r"x.yaml: unknown key 'inner.rte'; did you mean rate\? \(known keys: mode, rate\)",
        ),
        ({"inner": {"rate": 1}}, r"x.yaml: config key 'inner.rate' must be float in \(0, 1\), got 1"),
        (
            {"inner": {"mode": "fsat"}},
            r"x.yaml: config key 'inner.mode' must be one of fast, slow, got 'fsat' \(did you mean fast\?\)",
        ),
        ({"count": 11}, r"x.yaml: config key 'count' must be int in \[1, 10\], got 11"),
        ({"count": True}, r"x.yaml: config key 'count' must be int in \[1, 10\], got true"),
        ({"count": "3"}, r"x.yaml: config key 'count' must be int in \[1, 10\], got '3'"),
        ({"inner": [1]}, "x.yaml: config key 'inner' must be a mapping of keys to values, got a list"),
        ({"zzz": 1}, r"x.yaml: unknown key 'zzz' \(known keys: count, inner\)"),
        ({"count": float("inf")}, r"config key 'count' must be int in \[1, 10\], got inf"),
    ],
)
def test_messages_name_file_key_and_what_is_allowed(data, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        load(Outer, data, source="x.yaml")
    assert "\n" not in str(error.value)


def test_config_error_is_one_line_and_picklable() -> None:
    import pickle

    error = ConfigError("must be\nint", key="a.b", source="f.yaml")
    assert str(error) == "f.yaml: config key 'a.b' must be int"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert (
        str(ConfigError("is bad", key="max").under("filters.edit_ratio."))
        == "config key 'filters.edit_ratio.max' is bad"
    )
    assert str(ConfigError("a rule").under("filters.user[0].")) == "in 'filters.user[0]': a rule"


# ----- every numeric curation setting has a range; out-of-range values and random documents -------


def _numeric(cls: type, prefix: str = "") -> dict[str, Spec | None]:
    found = {prefix + name: spec for name, (_, spec) in numeric_fields(cls).items()}
    for name, sub in nested_configs(cls).items():
        found.update(_numeric(sub, f"{prefix}{name}."))
    return found


CURATION_NUMERIC = _numeric(CurationConfig)


def test_every_numeric_curation_setting_has_a_range() -> None:
    assert "tokenize.max_length" in CURATION_NUMERIC and "filters.decontaminate.n" in CURATION_NUMERIC
    assert [name for name, spec in CURATION_NUMERIC.items() if spec is None or not spec.bounded] == []


def _outside(spec: Spec) -> st.SearchStrategy:
    low = spec.ge if spec.ge is not None else spec.gt
    high = spec.le if spec.le is not None else spec.lt
    below = st.floats(max_value=low, exclude_max=spec.ge is not None, allow_nan=False, allow_infinity=False)
    above = st.floats(min_value=high, exclude_min=spec.le is not None, allow_nan=False, allow_infinity=False)
    edges = st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**400, -(10**400)])
    return st.one_of(below, above, below.map(int), above.map(int), edges)


def _nest(key: str, value) -> dict:
    *sections, leaf = key.split(".")
    document = {leaf: value}
    for section in reversed(sections):
        document = {section: document}
    return document


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_out_of_range_curation_values_are_refused(tmp_path_factory, data) -> None:
    key = data.draw(st.sampled_from(sorted(CURATION_NUMERIC)))
    spec = CURATION_NUMERIC[key]
    value = data.draw(_outside(spec).filter(lambda v: v != v or not spec.within(v)))
    document = _nest(key, value)
    if key.startswith("filters.decontaminate."):
        document["filters"]["decontaminate"]["file"] = "eval.jsonl"
    path = tmp_path_factory.mktemp("cfg") / "curate.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as error:
        load_curation_config(path)
    assert str(error.value).startswith(f"{path}: config key '{key}' must be ")


KEYS = sorted(
    {part for name in CURATION_NUMERIC for part in name.split(".")} | {"user", "name", "drop_where"}
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), children, max_size=4),
    ),
    max_leaves=12,
)


def _numbers_within_their_ranges(config: object, prefix: str = "") -> None:
    for name, (_, spec) in numeric_fields(type(config)).items():
        value = getattr(config, name)
        if value is not None:
            assert spec.within(value), (prefix + name, value)
    for name in nested_configs(type(config)):
        inner = getattr(config, name)
        if inner is not None:
            _numbers_within_their_ranges(inner, f"{prefix}{name}.")


@settings(max_examples=300, deadline=None)
@given(document=st.dictionaries(st.sampled_from(["filters", "split", "tokenize", "shards", "x"]), DOCUMENTS))
def test_random_documents_give_a_valid_config_or_a_config_error(document) -> None:
    """Never a crash other than ConfigError, never an accepted out-of-range number."""
    try:
        config = load_curation_config(document)
    except ConfigError as error:
        assert "\n" not in str(error) and str(error).startswith("curation config: ")
        return
    _numbers_within_their_ranges(config)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab:-&*[]{}!|>'\"#\n 1.e,?%@`\t")), max_size=60))
def test_random_text_is_parsed_or_refused_in_one_line(text: str) -> None:
    try:
        parse_yaml(text, "t.yaml")
    except ConfigError as error:
        assert str(error).startswith("t.yaml: ") and "\n" not in str(error)
