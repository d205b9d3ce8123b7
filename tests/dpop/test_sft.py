"""The SFT warm-up lowers the loss on the chosen answers, saves a loadable model and is cached."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from demo.synth_math import generate_pairs
from demo.tiny_tokenizer import train_tiny_tokenizer
from dpop.model_io import model_id
from dpop.sft import SFTConfig, _batch, examples_from_pairs, warm_up
from pipeline.catalog import Catalog
from pipeline.stage import read_record


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Llama built from a config, saved with the tokenizer beside it."""
    root = tmp_path_factory.mktemp("base")
    pairs = [p.as_record() for p in generate_pairs(200, seed=1)]
    tok_dir = train_tiny_tokenizer(
        [p["prompt"] + "\n" + p["chosen"] for p in pairs], root / "tok", vocab_size=400
    )
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model_dir = root / "model"
    LlamaForCausalLM(config).save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    return model_dir


def test_examples_follow_the_chat_template_and_end_with_eos(tiny_base: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base))
    [example] = examples_from_pairs([{"prompt": "What is 2 + 3?", "chosen": "2 + 3 = 5"}], tokenizer)
    assert (
        tokenizer.decode(example.prompt_ids)
        == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert example.response_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example.response_ids[:-1]) == "2 + 3 = 5"
    batch = _batch([example], max_length=512, pad_id=tokenizer.pad_token_id)
    labels = batch["labels"][0].tolist()
    assert labels[: len(example.prompt_ids)] == [-100] * len(example.prompt_ids)
    assert labels[len(example.prompt_ids) :] == example.response_ids
    with pytest.raises(ValueError, match="pair 0: field 'prompt'"):
        examples_from_pairs([{"prompt": 3, "chosen": "x"}], tokenizer)


def test_warm_up_learns_saves_and_is_reused(workspace, tiny_base: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base))
    examples = examples_from_pairs([p.as_record() for p in generate_pairs(64, seed=2)], tokenizer)
    config = SFTConfig(steps=30, batch_size=8, learning_rate=3e-3)
    seen = []
    result = warm_up(workspace, tiny_base, examples, config, on_step=lambda s, t, loss: seen.append((s, t)))
    assert not result.reused and seen[-1] == (30, 30) and len(result.losses) == 30
    # a fresh model starts near log(vocab) per token; a few steps on repetitive maths text halve it
    assert result.losses[0] > 5.0 and sum(result.losses[-5:]) / 5 < 0.6 * result.losses[0]
    assert result.model_dir.parent == workspace.models_dir
    reloaded = AutoModelForCausalLM.from_pretrained(str(result.model_dir))
    assert AutoTokenizer.from_pretrained(str(result.model_dir)).eos_token_id == tokenizer.eos_token_id
    batch = _batch(examples[:8], 512, tokenizer.pad_token_id)
    with torch.no_grad():
        trained = float(reloaded(**batch).loss)
        base = float(AutoModelForCausalLM.from_pretrained(str(tiny_base))(**batch).loss)
    assert trained < 0.7 * base
    record = read_record(result.model_dir)  # the stage's record, in the model folder
    assert record.summary["examples"] == 64 and record.config["settings"]["steps"] == 30
    assert result.model_id == f"model-{record.id}" == model_id(result.model_dir)

    again = warm_up(workspace, tiny_base, examples, config)
    assert again.reused and again.model_dir == result.model_dir and again.model_id == result.model_id
    other = warm_up(workspace, tiny_base, examples, SFTConfig(steps=2, batch_size=8))
    assert not other.reused and other.model_dir != result.model_dir

    catalog = Catalog(workspace)
    assert catalog.get(result.model_id).kind == "model"
    assert [relation for _, relation in catalog.parents(result.model_id)] == ["sft_from"]


def test_same_inputs_in_two_workspaces_give_the_same_folder_and_model(
    tmp_path: Path, tiny_base: Path
) -> None:
    """The id hashes the base model's files, not its path, so the same warm-up in another workspace,
    from a byte-identical copy of the base elsewhere, is the same model."""
    import shutil

    from pipeline.workspace import Workspace

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base))
    examples = examples_from_pairs([p.as_record() for p in generate_pairs(16, seed=3)], tokenizer)
    config = SFTConfig(steps=2, batch_size=8)
    results = []
    for name in ("one", "two"):
        base = Path(shutil.copytree(tiny_base, tmp_path / name / "base"))
        results.append(warm_up(Workspace.open(tmp_path / name / "ws"), base, examples, config))
    first, second = results
    assert first.model_dir.name == second.model_dir.name and first.model_dir != second.model_dir
    assert first.model_id == second.model_id and first.losses == second.losses
    config = read_record(first.model_dir).config
    assert str(tmp_path) not in str(config)
