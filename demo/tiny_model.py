"""A tiny Llama-architecture causal LM built from a config, for tests, benchmarks and the offline demo.

No hub download: the architecture is the real `LlamaForCausalLM`, only small, with random weights
drawn from a fixed seed, so the same call writes the same weights. Saved with `save_pretrained`
(safetensors) beside a copy of the tokenizer, so `AutoModelForCausalLM.from_pretrained(folder)` and
`AutoTokenizer.from_pretrained(folder)` both work on the folder.

`TinyModelStage` is the demo's base model as a stage: a tokenizer trained on the texts of ingested pair
tables (`tokenizer_trained_on`) and a tiny Llama sized for it, in `<ws>/models/tiny-<hash>/`; its id
hashes the pair tables' ids, the sizes and the seed, so the same data and settings reuse the model.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from demo.defaults import TinyModel
from demo.tiny_tokenizer import tokenizer_texts_from_pairs, train_tiny_tokenizer
from pipeline.atomic import atomic_dir
from pipeline.stage import Artifact, Input, Stage, StageContext, StageOutput, StageRecord, workspace_path
from pipeline.workspace import Workspace

MAX_TEXTS = 50_000  # tokenizer training texts, first ones in source order


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
    """Write a randomly initialised Llama model sized for the tokenizer's vocabulary to `out_dir`
    (written to a temporary folder and renamed)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        _write_tiny_model(
            tokenizer_path,
            tmp,
            num_layers,
            hidden_size,
            num_heads,
            intermediate_size,
            max_position_embeddings,
            seed,
        )
    return out_dir


def _write_tiny_model(
    tokenizer_path: str | os.PathLike[str],
    out: Path,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    intermediate_size: int | None,
    max_position_embeddings: int,
    seed: int,
) -> int:
    """The model and a copy of the tokenizer, saved into the existing folder `out`; returns the number
    of parameters."""
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
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return sum(parameter.numel() for parameter in model.parameters())


@dataclass(frozen=True)
class PairsTable:
    """An ingest's pair table as the tiny model reads it: its ingest id, source and (maybe
    workspace-relative) path."""

    ingest_id: str
    source_uri: str
    path: str

    @classmethod
    def of(cls, item: Any) -> PairsTable:
        """From an ingest's stage record, an `IngestResult` or anything with `ingest_id`,
        `source_uri` and `pairs_path`."""
        if isinstance(item, StageRecord):
            return cls(item.id, item.summary["source_uri"], str(item.output("pairs").path))
        return cls(item.ingest_id, item.source_uri, str(item.pairs_path))


@dataclass(frozen=True)
class TinyModelStage(Stage):
    """A tokenizer trained on the texts of `ingests`' pair tables and a tiny Llama sized for it.

    `settings`: the `tiny_model` section of dpop.yaml (`demo.defaults.TinyModel` or its keys), with an
    optional `seed` (else `seed`): it draws the initial weights."""

    name = "tiny_model"
    id_prefix = "tiny"

    ingests: Sequence[Any]
    settings: TinyModel | Mapping[str, Any] = dataclasses.field(default_factory=TinyModel)
    seed: int = 0

    def __post_init__(self) -> None:
        tables = sorted({PairsTable.of(i) for i in self.ingests}, key=lambda t: (t.source_uri, t.ingest_id))
        if not tables:
            raise ValueError("the tiny model needs ingested pairs to train its tokenizer on")
        settings = self.settings
        if not isinstance(settings, TinyModel):
            settings = dict(settings)
            object.__setattr__(self, "seed", int(settings.pop("seed", self.seed)))
            settings = TinyModel(**settings)
        object.__setattr__(self, "ingests", tuple(tables))
        object.__setattr__(self, "settings", settings)

    def inputs(self) -> list[Input]:
        return [
            Input(Artifact(f"pairs-{t.ingest_id}", "pairs", t.path), "tokenizer_trained_on")
            for t in self.ingests
        ]

    @cached_property
    def _config(self) -> dict[str, Any]:
        return {"tiny_model": dataclasses.asdict(self.settings), "seed": self.seed, "max_texts": MAX_TEXTS}

    def config(self) -> dict[str, Any]:
        return self._config

    def folder(self, ws: Workspace) -> Path:
        return ws.models_dir / self.id

    def label(self) -> str:
        return f"tiny Llama ({self.settings.layers} layers, hidden {self.settings.hidden_size})"

    def run(self, ctx: StageContext) -> StageOutput:
        settings = self.settings
        paths = [Artifact(t.ingest_id, "pairs", t.path).location(ctx.ws) for t in self.ingests]
        ctx.progress(0, 2, f"training a {settings.vocab_size}-token BPE tokenizer")
        texts = tokenizer_texts_from_pairs(paths, MAX_TEXTS)
        tokenizer = train_tiny_tokenizer(texts, ctx.out / "tokenizer", vocab_size=settings.vocab_size)
        ctx.progress(1, 2, "initialising the model")
        parameters = _write_tiny_model(
            tokenizer, ctx.out, settings.layers, settings.hidden_size, settings.heads, None, 2048, self.seed
        )
        shutil.rmtree(tokenizer)  # the model folder holds its own copy
        meta = {"made_by": "tiny_model", **dataclasses.asdict(settings), "parameters": parameters}
        model = Artifact(f"model-{self.id}", "model", workspace_path(ctx.ws, ctx.folder), meta=meta)
        return StageOutput(
            outputs=[model],
            counts={"texts": len(texts), "parameters": parameters},
            summary={"parameters": parameters, "tokenizer_texts": len(texts)},
        )
