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
