"""A tiny Llama-architecture causal LM built from a config, for tests, benchmarks and the offline demo.

No hub download: the architecture is the real `LlamaForCausalLM`, only small, with random weights
drawn from a fixed seed, so the same call writes the same weights. Saved with `save_pretrained`
(safetensors) beside a copy of the tokenizer, so `AutoModelForCausalLM.from_pretrained(folder)` and
`AutoTokenizer.from_pretrained(folder)` both work on the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.atomic import atomic_dir


def make_tiny_model(
    tokenizer_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised Llama model sized for the tokenizer's vocabulary to `out_dir`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer_path = Path(tokenizer_path)
    if not tokenizer_path.is_dir():
        raise FileNotFoundError(f"tokenizer folder {tokenizer_path} does not exist")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


def tiny_model_for_pairs(
    models_dir: str | os.PathLike[str],
    pairs_paths: list[str | os.PathLike[str]],
    cache_key: str,
    vocab_size: int = 512,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    seed: int = 0,
) -> tuple[Path, bool]:
    """A tokenizer trained on the texts of ingested pair tables and a tiny Llama sized for it, in
    `<models_dir>/tiny-llama-<cache_key>`; returns (model folder, reused). The caller's `cache_key`
    names the inputs and settings, so the same data and sizes reuse the folder (the demo's base model)."""
    from pipeline.tiny_tokenizer import tokenizer_texts_from_pairs, train_tiny_tokenizer

    models_dir = Path(models_dir)
    model_dir = models_dir / f"tiny-llama-{cache_key}"
    if (model_dir / "config.json").is_file():
        return model_dir, True
    texts = tokenizer_texts_from_pairs(pairs_paths)
    tokenizer_dir = train_tiny_tokenizer(texts, models_dir / f"tokenizer-{cache_key}", vocab_size=vocab_size)
    make_tiny_model(
        tokenizer_dir,
        model_dir,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        seed=seed,
    )
    return model_dir, False
