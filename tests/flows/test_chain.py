"""The chain spec: plain JSON both ways (a deployment carries it as its parameters), and `--losses`."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.chain import SMOKE_TEST, ChainSpec, with_losses

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False) | names
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=8,
)
sections = st.dictionaries(names, values, max_size=4)
specs = st.builds(
    ChainSpec,
    sources=st.lists(names, max_size=3).map(tuple),
    synth_n=st.integers(1, 10**6),
    seed=st.integers(0, 2**32 - 1),
    fmt=st.none() | names,
    ingest_options=sections,
    base_model=st.none() | names,
    tiny_model=sections,
    curation=sections,
    sft=sections,
    training=st.lists(sections, min_size=1, max_size=3).map(tuple),
    warm_start=st.booleans(),
)


@given(specs)
def test_spec_survives_json(spec: ChainSpec) -> None:
    assert ChainSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_spec_refuses_unknown_keys_and_flags_the_smoke_test() -> None:
    with pytest.raises(ValueError, match="unknown key.*sourcez"):
        ChainSpec.from_json({"sourcez": ["a.jsonl"]})
    assert ChainSpec().smoke_test is None  # the demo: synthetic data, its own tiny model and SFT
    assert ChainSpec(sources=("a.jsonl",), base_model="m").smoke_test is None
    assert ChainSpec(sources=("a.jsonl",)).smoke_test == SMOKE_TEST  # user data, a random tiny model


def test_losses_give_one_training_config_each() -> None:
    base = {"max_steps": 4, "loss": "ipo", "penalty_lambda": 5.0}
    dpop, dpo = with_losses(base, "dpop:50, dpo")
    assert dpop == {"max_steps": 4, "loss": "dpop", "penalty_lambda": 50.0}
    assert dpo == {"max_steps": 4, "loss": "dpo", "penalty_lambda": 5.0}
    with pytest.raises(ValueError, match="must be a number"):
        with_losses(base, "dpop:lots")
    with pytest.raises(ValueError, match="names no loss"):
        with_losses(base, " , ")
