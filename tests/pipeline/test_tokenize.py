"""Tokenisation: chat template, EOS, keep-the-end prompt truncation, too_long, common prefix; the
torch-free tokenizer gives transformers' ids (tiny tokenizer, a template with a default system prompt,
a legacy folder layout) and tokenising never imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.tokenize import FastTokenizer, PairTokenizer, _keep_end, _take, common_prefix_lengths
from tests.pipeline._pairs import tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]

# A Qwen2-style template: a default system prompt when the conversation has none, plus the features
# transformers' sandbox offers (bos_token, namespace, loop controls, tojson, generation blocks).
SYSTEM_PROMPT_TEMPLATE = """{{- bos_token }}
{%- set ns = namespace(turns=0) %}
{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant. Today: ' + ('x' | tojson) + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'system' and loop.first %}{% continue %}{% endif %}
    {%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}
        {{- raise_exception('unknown role ' + message['role']) }}
    {%- endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {%- if message['role'] == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


@pytest.fixture(scope="module")
def system_tok_path(tok_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny tokenizer with the system-prompt template, saved by transformers."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tok") / "system"
    hf = AutoTokenizer.from_pretrained(str(tok_path))
    hf.chat_template = SYSTEM_PROMPT_TEMPLATE
    hf.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def legacy_tok_path(tok_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An older folder layout: the template inside tokenizer_config.json, special tokens as AddedToken
    dicts in special_tokens_map.json (which overrides the config there), a pad token tokenizer.json
    does not know (transformers adds it after the vocabulary)."""
    folder = tmp_path_factory.mktemp("tok") / "legacy"
    folder.mkdir()
    shutil.copy(tok_path / "tokenizer.json", folder / "tokenizer.json")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": [{"name": "default", "template": SYSTEM_PROMPT_TEMPLATE}],
        "bos_token": "<|bos|>",
        "eos_token": "<|bos|>",  # overridden by special_tokens_map.json
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    added = {
        "__type": "AddedToken",
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "single_word": False,
    }
    special = {
        "eos_token": {**added, "content": "<|im_end|>"},
        "pad_token": {**added, "content": "<|padding|>"},
        "unk_token": "<|unk|>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    return folder


def frame(rows: list[tuple[list[dict] | str, str, str]]) -> pl.DataFrame:
    prompts = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p, _, _ in rows]
    return pl.DataFrame(
        {"prompt": pa.array(prompts), "chosen": [c for _, c, _ in rows], "rejected": [r for _, _, r in rows]}
    )


def hf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def test_chat_template_eos_and_common_prefix(tok_path: Path) -> None:
    pairs = PairTokenizer(tok_path, max_length=256, max_prompt_length=128)
    tok = hf_tokenizer(tok_path)
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
    assert info["pad_token_id"] == tok.pad_token_id != info["eos_token_id"]


def test_prompt_keeps_its_end_and_long_responses_are_rejected(tok_path: Path) -> None:
    pairs = PairTokenizer(tok_path, max_length=40, max_prompt_length=10)
    long_prompt = "Natalia sold clips to 48 of her friends in April. " * 5 + "How many?"
    out = pairs.encode(frame([(long_prompt, "72", "73"), ("short", "72 " * 40, "73")]))
    full_ids = hf_tokenizer(tok_path).apply_chat_template(
        [{"role": "user", "content": long_prompt}], add_generation_prompt=True, return_dict=False
    )
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


def test_missing_tokenizer_folder_or_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer folder"):
        PairTokenizer(tmp_path / "nope", 10, 5)
    (tmp_path / "slow").mkdir()
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        PairTokenizer(tmp_path / "slow", 10, 5)


def test_several_templates_use_the_default_one(tok_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "multi"
    shutil.copytree(tok_path, folder)
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "tool_use.jinja").write_text("{{ 'tools' }}")
    hf = hf_tokenizer(folder)
    assert isinstance(hf.chat_template, dict)  # transformers sees two templates and uses "default"
    messages = [{"role": "user", "content": "hi"}]
    ours = FastTokenizer(folder).render([messages])
    assert ours == [hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)]
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="none named 'default'"):
        FastTokenizer(folder)


texts = st.lists(
    st.sampled_from([*"ab é日 \n\t12.?\u00a0", "<|im_end|>", "<|im_start|>", "<|bos|>", "  ", "It is"]),
    max_size=20,
).map("".join)
conversations = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": texts}),
    min_size=1,
    max_size=4,
)


@pytest.mark.parametrize("which", ["tiny", "system", "legacy"])
def test_ids_equal_transformers(which: str, tok_path, system_tok_path, legacy_tok_path) -> None:
    """Prompt ids = transformers' apply_chat_template(add_generation_prompt=True), response ids =
    tokenizer(text, add_special_tokens=False) + EOS, special ids the same, on any conversation."""
    path = {"tiny": tok_path, "system": system_tok_path, "legacy": legacy_tok_path}[which]
    hf = hf_tokenizer(path)
    pairs = PairTokenizer(path, max_length=10_000, max_prompt_length=5_000)
    assert (pairs.eos_token_id, pairs.info()["pad_token_id"]) == (hf.eos_token_id, hf.pad_token_id)
    assert pairs.tokenizer.special_tokens == hf.special_tokens_map

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(conversations, texts, texts), min_size=1, max_size=6))
    def check(rows: list[tuple[list[dict], str, str]]) -> None:
        out = pairs.encode(frame(rows))
        for index, (messages, chosen, rejected) in enumerate(rows):
            expected = hf.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
            assert out.prompt_ids[index].as_py() == expected
            for column, text in ((out.chosen_ids, chosen), (out.rejected_ids, rejected)):
                ids = hf(text, add_special_tokens=False)["input_ids"]
                assert column[index].as_py() == ids + [hf.eos_token_id]

    check()


def test_legacy_layout_reads_special_tokens_map(legacy_tok_path: Path) -> None:
    tokenizer = FastTokenizer(legacy_tok_path)
    assert tokenizer.special_tokens["eos_token"] == "<|im_end|>"  # the map overrides the config
    vocab = tokenizer.backend.get_vocab_size(with_added_tokens=False)
    assert tokenizer.token_id("pad_token") >= vocab  # added after the vocabulary, as transformers does
    assert "You are a helpful assistant" in tokenizer.render([[{"role": "user", "content": "q"}]])[0]


def test_template_errors_are_raised_as_jinja_reports_them(system_tok_path: Path) -> None:
    from jinja2.exceptions import TemplateError

    tokenizer = FastTokenizer(system_tok_path)
    with pytest.raises(TemplateError, match="unknown role narrator"):  # the template's raise_exception
        tokenizer.render([[{"role": "user", "content": "q"}], [{"role": "narrator", "content": "x"}]])


def test_tokenising_does_not_import_torch(tok_path: Path) -> None:
    script = (
        "import sys\n"
        "import polars as pl, pyarrow as pa\n"
        "from pipeline.tokenize import PairTokenizer\n"
        f"pairs = PairTokenizer({str(tok_path)!r}, 64, 32)\n"
        "prompt = pa.array([[{'role': 'user', 'content': 'q'}]])\n"
        "out = pairs.encode(pl.DataFrame({'prompt': prompt, 'chosen': ['a'], 'rejected': ['b']}))\n"
        "assert len(out.prompt_ids) == 1\n"
        "print(' '.join(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.split() == []


rows_strategy = st.lists(st.lists(st.integers(0, 3), max_size=8), min_size=1, max_size=20)


def flat(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    array = pa.array(rows, type=pa.list_(pa.int32()))
    return array.values.to_numpy(), array.offsets.to_numpy().astype(np.int64)


@settings(max_examples=80, deadline=None)
@given(rows_strategy, rows_strategy, st.integers(1, 6), st.lists(st.integers(0, 19), max_size=30))
def test_vector_helpers_match_python(
    a: list[list[int]], b: list[list[int]], limit: int, picks: list[int]
) -> None:
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
    rows = np.array([p % len(a) for p in picks], dtype=np.int64)
    values, offsets = _take(*flat(a), rows)
    assert [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(rows))] == [a[r] for r in rows]


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
    tok = hf_tokenizer(tok_path)
    one_by_one = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in base["chosen"]]
    assert plain.chosen_ids.to_pylist() == one_by_one


def test_started_batches_finish_in_any_order_with_the_same_ids(tok_path: Path) -> None:
    """`start` queues a batch on the encoder threads; batches started together give the ids each gives
    alone, whichever is finished first."""
    pairs = PairTokenizer(tok_path, max_length=256, max_prompt_length=128)
    first = frame([(f"What is {i} + {i}?", f"It is {2 * i}.", f"It is {2 * i + 1}.") for i in range(50)])
    second = frame([("q", "a " * i, "b " * i) for i in range(50)])
    alone = [pairs.encode(first), pairs.encode(second)]
    started = [pairs.start(first), pairs.start(second)]
    finished = [pairs.finish(started[1]), pairs.finish(started[0])][::-1]
    for expected, got in zip(alone, finished, strict=True):
        for name in ("prompt_ids", "chosen_ids", "rejected_ids"):
            assert getattr(got, name).equals(getattr(expected, name))
        assert (got.common_prefix_len == expected.common_prefix_len).all()
