"""The train/eval split is a pure function of the prompt: deterministic, never both sides."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.curate.split import prompt_keys, split_expr
from pipeline.identity import prompt_key


def splits(prompts: list[str], fraction: float) -> list[str]:
    messages = pa.array([[{"role": "user", "content": p}] for p in prompts])
    frame = pl.DataFrame({"key": prompt_keys(messages)})
    return frame.select(split_expr("key", fraction)).to_series().to_list()


def test_keys_are_identity_prompt_keys() -> None:
    prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert prompt_keys(pa.array([prompt])).to_list() == [prompt_key(prompt)]


def test_fraction_and_determinism() -> None:
    prompts = [f"question {i}" for i in range(4000)]
    first = splits(prompts, 0.1)
    assert 0.08 < first.count("eval") / len(first) < 0.12
    assert splits(list(reversed(prompts)), 0.1) == list(reversed(first))  # order does not matter
    assert set(splits(prompts, 0.0)) == {"train"}
    # a larger fraction only moves prompts from train to eval
    larger = splits(prompts, 0.3)
    assert all(b == "eval" for a, b in zip(first, larger, strict=True) if a == "eval")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", " a", "a\r\n", "d"]), min_size=1, max_size=30))
def test_same_prompt_same_side(prompts: list[str]) -> None:
    result = splits(prompts, 0.5)
    side: dict[str, str] = {}
    for prompt, split in zip(prompts, result, strict=True):
        assert side.setdefault(prompt.strip(), split) == split
