"""Models on disk: their catalog id, safe loading, the check that a model's tokenizer is the one the
shards were made with, and the numeric precision a forward pass runs in.

Loading never unpickles: every model load in dpop goes through `load_causal_lm`, which reads
safetensors only (`use_safetensors=True`) and refuses a folder that has only pickled weights
(`pytorch_model.bin` & co: unpickling a file can run any code in it). Remote code is refused unless
the caller opts in (`trust_remote_code=True`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.catalog import Catalog, CatalogBatch
from pipeline.identity import file_sha256, tree_sha256

TOKENIZER_FILE = "tokenizer.json"
DTYPES = ("float32", "bfloat16", "float16")
# Weight files that are pickles (torch.save, TF/Flax checkpoints aside): named in the refusal.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class PickledWeightsError(ValueError):
    """A model folder offers only pickled weights, which dpop does not load."""


def model_id(model_path: str | os.PathLike[str]) -> str:
    """Catalog id of a model folder: `model-<tree_sha256[:16]>` (same files, same id)."""
    return f"model-{tree_sha256(model_path)[:16]}"


def require_model_dir(model_path: str | os.PathLike[str]) -> Path:
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model path {path} does not exist or is not a folder")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model path {path} has no config.json (expected a save_pretrained folder)")
    return path.resolve()


def tokenizer_sha256(model_path: str | os.PathLike[str]) -> str:
    """sha256 of the folder's `tokenizer.json`, the rule the shard manifest's `tokenizer.sha256` uses."""
    path = Path(model_path) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{model_path} has no {TOKENIZER_FILE}: cannot check it against the shards' tokenizer"
        )
    return file_sha256(path)


def check_tokenizer(manifest: dict[str, Any], model_path: str | os.PathLike[str]) -> None:
    """Fail clearly when the model's tokenizer is not the one the shards were tokenised with:
    token ids from one vocabulary mean nothing to a model trained on another."""
    expected = (manifest.get("tokenizer") or {}).get("sha256")
    if not expected:
        raise ValueError(f"dataset {manifest.get('dataset_id')} manifest records no tokenizer.sha256")
    actual = tokenizer_sha256(model_path)
    if actual != expected:
        raise ValueError(
            f"tokenizer mismatch: {Path(model_path) / TOKENIZER_FILE} has sha256 {actual[:12]}…, but dataset "
            f"{manifest.get('dataset_id')} was tokenised with {expected[:12]}… "
            f"({(manifest.get('tokenizer') or {}).get('path')})"
        )


def require_safetensors(model_path: str | os.PathLike[str]) -> Path:
    """The model folder, if it holds safetensors weights; otherwise one line naming the folder and
    the pickled files it holds instead (they are never opened)."""
    path = require_model_dir(model_path)
    if any(path.glob("*.safetensors")):
        return path
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickled:
        raise FileNotFoundError(f"model folder {path} has no *.safetensors weights")
    raise PickledWeightsError(
        f"model folder {path} has only pickled weights ({', '.join(pickled)}); dpop loads safetensors "
        "only, since unpickling can run code: convert it where you trust the file "
        "(from_pretrained, then save_pretrained(..., safe_serialization=True))"
    )


def load_causal_lm(
    model_path: str | os.PathLike[str], dtype: Any = None, trust_remote_code: bool = False
) -> Any:
    """`AutoModelForCausalLM.from_pretrained` from safetensors only (no pickle), no remote code by default."""
    path = require_safetensors(model_path)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
    )


@dataclass(frozen=True)
class Precision:
    """What a forward pass computes in: the dtype the weights are loaded in, and the dtype of mixed
    precision (`torch.autocast`, as accelerate applies it for `bf16: true` / `fp16: true`), if any.

    Log-probs computed in one precision differ from another's by far more than the trainer's float
    tolerance (bf16 keeps 8 bits of mantissa), so reference log-probs are stored with the precision
    they were computed in, and the policy must train in that same one. `label` is its one-string form:
    `float32`, `bfloat16`, or `float32+autocast-bfloat16` (float32 weights under bf16 autocast)."""

    weights: str = "float32"
    autocast: str | None = None

    def __post_init__(self) -> None:
        if self.weights not in DTYPES:
            raise ValueError(f"dtype {self.weights!r} is not one of {', '.join(DTYPES)}")
        if self.autocast not in (None, *DTYPES[1:]):
            raise ValueError(f"autocast dtype {self.autocast!r} is not one of {', '.join(DTYPES[1:])}")

    @property
    def label(self) -> str:
        return self.weights if self.autocast is None else f"{self.weights}+autocast-{self.autocast}"

    @classmethod
    def parse(cls, value: Precision | str) -> Precision:
        if isinstance(value, Precision):
            return value
        weights, _, autocast = str(value).partition("+autocast-")
        return cls(weights, autocast or None)

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.weights)

    @contextlib.contextmanager
    def autocast_context(self, device_type: str) -> Iterator[None]:
        import torch

        if self.autocast is None:
            yield
        else:
            with torch.autocast(device_type=device_type, dtype=getattr(torch, self.autocast)):
                yield

    def forward_of(self, model: Any, device_type: str) -> Callable[..., Any]:
        """`model` called under this precision's autocast, as accelerate wraps the policy's forward
        (only the forward: what follows it, log-softmax included, runs outside autocast in both)."""
        if self.autocast is None:
            return model

        def forward(**inputs: Any) -> Any:
            with self.autocast_context(device_type):
                return model(**inputs)

        return forward


def precision_for_training(config: Any) -> Precision:
    """The precision a policy trains in under a training config (a TrainConfig or its dict form):
    its `model_dtype` weights, under bf16/fp16 autocast when `bf16`/`fp16` is set."""
    get = (
        config.get if isinstance(config, Mapping) else lambda key, default=None: getattr(config, key, default)
    )
    autocast = "bfloat16" if get("bf16", False) else "float16" if get("fp16", False) else None
    if autocast and get("deepspeed"):
        return Precision(autocast)  # DeepSpeed casts the weights themselves instead of autocasting
    return Precision(get("model_dtype", "float32") or "float32", autocast)


def record_model(
    catalog: Catalog | CatalogBatch,
    model_path: str | os.PathLike[str],
    role: str,
    identifier: str | None = None,
) -> str:
    """Record a model folder in the catalog (kind `model`) and return its id; pass `identifier` when
    the caller already hashed the folder (hashing a large model's weights takes a while)."""
    path = Path(model_path).resolve()
    identifier = identifier or model_id(path)
    catalog.record_artifact(identifier, "model", uri=str(path), meta={"role": role, "path": str(path)})
    return identifier
