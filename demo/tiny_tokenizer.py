"""A tiny byte-level BPE tokenizer for tests and the offline demo (no hub access here).

Trained with the `tokenizers` library on a handful of texts and saved as a
`transformers.PreTrainedTokenizerFast` folder, so `AutoTokenizer.from_pretrained(folder)` loads it like
any hub tokenizer. It carries a ChatML-like chat template (`<|im_start|>role\\n...<|im_end|>\\n`) with
`add_generation_prompt` support, distinct bos / eos / pad tokens (pad != eos so TRL's padding never
masks a real end-of-sequence), and is deterministic: the same texts give byte-identical files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pipeline.atomic import atomic_dir

BOS = "<|bos|>"
EOS = "<|im_end|>"
PAD = "<|pad|>"
UNK = "<|unk|>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, UNK]

# ChatML-like; the generation prompt opens an assistant turn the model continues. EOS (<|im_end|>)
# closes every turn, so the tokenise stage appends the same EOS after each response.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_DEFAULT_TEXTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? #### 72",
    "Human: What is the capital of France? Assistant: The capital of France is Paris.",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) $ % .",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
]


def default_tokenizer_texts() -> list[str]:
    """A few built-in sentences (maths word problems and dialogue) for a tokenizer without data."""
    return list(_DEFAULT_TEXTS)


def train_tiny_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike[str], vocab_size: int = 512
) -> Path:
    """Train a byte-level BPE on `texts` and save it as a PreTrainedTokenizerFast folder at `out_dir`.

    The folder is written to a temporary sibling and renamed, so a crash leaves no half tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + special tokens)")
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The BPE trainer counts words in parallel but merges ties by a stable order, so the result only
    # depends on the texts; a list (not a generator) keeps the input order identical between runs.
    tokenizer.train_from_iterator([t for t in texts if t], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[IM_START],
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    final = Path(out_dir)
    with atomic_dir(final) as tmp:
        fast.save_pretrained(str(tmp))
    return final


def tokenizer_texts_from_pairs(
    pairs_paths: Iterable[str | os.PathLike[str]], max_texts: int = 50_000
) -> list[str]:
    """Prompt contents, chosen and rejected texts of ingested pair tables, in file order, at most `max_texts`."""
    import polars as pl

    texts: list[str] = []
    for path in pairs_paths:
        if len(texts) >= max_texts:
            break
        frame = pl.read_parquet(path, columns=["prompt", "chosen", "rejected"], n_rows=max_texts)
        contents = frame.select(
            pl.col("prompt").list.eval(pl.element().struct.field("content")).list.join("\n")
        )
        for column in (contents.to_series(), frame["chosen"], frame["rejected"]):
            texts.extend(column.to_list())
    return texts[:max_texts]
