"""Tokenisation: chat template, EOS, keep-the-end prompt truncation, too_long, common prefix."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.tokenize import PairTokenizer, _keep_end, common_prefix_lengths
from tests.pipeline._pairs import tiny_tokenizer


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


def frame(rows: list[tuple[list[dict] | str, str, str]]) -> pl.DataFrame:
    prompts = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p, _, _ in rows]
    return pl.DataFrame(
        {"prompt": pa.array(prompts), "chosen": [c for _, c, _ in rows], "rejected": [r for _, _, r in rows]}
    )


def test_chat_template_eos_and_common_prefix(tok_path: Path) -> None:
    pairs = PairTokenizer(tok_path, max_length=256, max_prompt_length=128)
    tok = pairs.tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    out = pairs.encode(frame([(messages, "It is 4.", "It is 5.")]))
    prompt = out.prompt_ids[0].as_py()
    expected_prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.decode(prompt) == expected_prompt
    chosen, rejected = out.chosen_ids[0].as_py(), out.rejected_ids[0].as_py()
    assert chosen[-1] == rejected[-1] == tok.eos_token_id
    assert tok.decode(chosen[:-1]) == "It is 4." and tok.decode(rejected[:-1]) == "It is 5."
    first_diff = next(i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b)
    assert out.common_prefix_len.tolist() == [first_diff] and first_diff > 0
    assert out.too_long.tolist() == [False]
    info = pairs.info()
    assert info["chat_template"] == "tokenizer" and info["eos_token_id"] == tok.eos_token_id
    assert info["pad_token_id"] != info["eos_token_id"]


def test_prompt_keeps_its_end_and_long_responses_are_rejected(tok_path: Path) -> None:
    pairs = PairTokenizer(tok_path, max_length=40, max_prompt_length=10)
    long_prompt = "Natalia sold clips to 48 of her friends in April. " * 5 + "How many?"
    out = pairs.encode(frame([(long_prompt, "72", "73"), ("short", "72 " * 40, "73")]))
    full = pairs.tokenizer(
        pairs.prompt_texts(frame([(long_prompt, "", "")])["prompt"]), add_special_tokens=False
    )
    full_ids = full["input_ids"][0]
    assert len(full_ids) > 10
    assert out.prompt_ids[0].as_py() == full_ids[-10:]  # the END of the prompt survives
    assert out.too_long.tolist() == [False, True]  # a response is never cut, the pair is rejected
    assert int(out.total_tokens[1]) > 40
    assert len(out.chosen_ids[1].as_py()) > 40  # still whole (the build drops it)


def test_plain_template_without_chat_template(tok_path: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(tok_path, plain)
    (plain / "chat_template.jinja").unlink()
    pairs = PairTokenizer(plain, max_length=256, max_prompt_length=128)
    assert pairs.chat_template is None and pairs.info()["chat_template"] == "plain"
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert pairs.prompt_texts(frame([(messages, "a", "b")])["prompt"]) == [
        "<|bos|>System: s\n\nUser: q\n\nAssistant: "
    ]
    with_template = PairTokenizer(tok_path, max_length=256, max_prompt_length=128)
    assert pairs.info()["chat_template_sha256"] != with_template.info()["chat_template_sha256"]


def test_missing_tokenizer_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer folder"):
        PairTokenizer(tmp_path / "nope", 10, 5)


rows_strategy = st.lists(st.lists(st.integers(0, 3), max_size=8), min_size=1, max_size=20)


def flat(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    array = pa.array(rows, type=pa.list_(pa.int32()))
    return array.values.to_numpy(), array.offsets.to_numpy().astype(np.int64)


@settings(max_examples=80, deadline=None)
@given(rows_strategy, rows_strategy, st.integers(1, 6))
def test_vector_helpers_match_python(a: list[list[int]], b: list[list[int]], limit: int) -> None:
    b = (b * len(a))[: len(a)]
    expected = []
    for x, y in zip(a, b, strict=True):
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]:
            n += 1
        expected.append(n)
    assert common_prefix_lengths(*flat(a), *flat(b)).tolist() == expected
    values, offsets = _keep_end(*flat(a), limit)
    kept = [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(a))]
    assert kept == [row[-limit:] if len(row) > limit else row for row in a]


def test_repeated_prompts_and_responses_tokenise_once_with_same_result(tok_path: Path) -> None:
    from pipeline.curate.filters import PROMPT_KEY
    from pipeline.curate.split import prompt_keys

    pairs = PairTokenizer(tok_path, max_length=256, max_prompt_length=128)
    base = frame(
        [
            ("What is 2+2?", "It is 4.", "It is 5."),
            ("Other", "It is 4.", "x"),
            ("What is 2+2?", "y", "It is 5."),
        ]
    )
    keyed = base.with_columns(prompt_keys(base["prompt"]).alias(PROMPT_KEY))
    plain, deduped = pairs.encode(base), pairs.encode(keyed)
    for name in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert getattr(plain, name).equals(getattr(deduped, name))
    tok = pairs.tokenizer
    one_by_one = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in base["chosen"]]
    assert plain.chosen_ids.to_pylist() == one_by_one
