"""The tiny tokenizer loads offline through AutoTokenizer, has a chat template and is deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from demo.tiny_tokenizer import default_tokenizer_texts, train_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_tokenizer(
        default_tokenizer_texts(), tmp_path_factory.mktemp("tok") / "tiny", vocab_size=320
    )


def test_loads_with_autotokenizer_and_special_tokens(tiny_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tiny_path))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>" and tok.bos_token == "<|bos|>"
    assert len({tok.eos_token_id, tok.pad_token_id, tok.bos_token_id}) == 3
    assert len(tok) <= 320
    text = "Natalia sold 48 clips, héllo ✓"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level: any text round-trips


def test_chat_template_with_generation_prompt(tiny_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tiny_path))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    no_gen = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert no_gen == text.removesuffix("<|im_start|>assistant\n")


def test_deterministic_bytes(tmp_path: Path, tiny_path: Path) -> None:
    again = train_tiny_tokenizer(default_tokenizer_texts(), tmp_path / "again", vocab_size=320)
    names = sorted(p.name for p in tiny_path.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (tiny_path / name).read_bytes() == (again / name).read_bytes(), name


def test_rejects_too_small_vocab(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tiny_tokenizer(["abc"], tmp_path / "x", vocab_size=100)
