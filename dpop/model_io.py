"""Models on disk: their identity, safe loading, the check that a model's tokenizer is the one the
shards were made with, and the numeric precision a forward pass runs in.

Identity (`model_artifact`), the one rule every stage uses for a model it reads:

- a folder a stage made (it, or its run folder, holds a `stage.json` naming it as an output) has that
  stage's model id (`model-<stage id>`), wherever it lies;
- any other folder is `model-<content hash>`: the hash of its files' names and bytes, so the same weights
  at two paths (or in two workspaces) are the same model. Hashing a multi-GB model takes a while, so
  each file's sha256 is remembered by (path, size, mtime_ns, ctime_ns, inode) in a small JSON cache
  (`$DPOP_CACHE_DIR`, else the user cache folder): a file rewritten or touched since is hashed again.

Loading never unpickles: every model load in dpop goes through `load_causal_lm`, which reads
safetensors only (`use_safetensors=True`) and refuses a folder that has only pickled weights
(`pytorch_model.bin` & co: unpickling a file can run any code in it). Remote code is refused unless
the caller opts in (`trust_remote_code=True`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.atomic import TMP_PREFIX, write_text_atomic
from pipeline.identity import file_sha256, tree_sha256
from pipeline.stage import Artifact, read_record

TOKENIZER_FILE = "tokenizer.json"
DTYPES = ("float32", "bfloat16", "float16")
# Weight files that are pickles (torch.save, TF/Flax checkpoints aside): named in the refusal.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class PickledWeightsError(ValueError):
    """A model folder offers only pickled weights, which dpop does not load."""


DIGEST_CACHE_FILE = "model-file-sha256.json"
DIGEST_CACHE_ENTRIES = 20_000  # a bound on the cache file: the most recently used entries are kept


def model_artifact(model_path: str | os.PathLike[str]) -> Artifact:
    """The model folder as an artefact (kind `model`, absolute path): its maker's model id when a stage
    made it, else `model-<content hash>` (see the module docstring)."""
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model path {path} does not exist or is not a folder")
    path = path.resolve()
    made = _made_by_stage(path)
    if made is not None:
        return made
    return Artifact(f"model-{model_content_hash(path)[:16]}", "model", str(path), meta={"name": path.name})


def model_id(model_path: str | os.PathLike[str]) -> str:
    """`model_artifact(model_path).id`."""
    return model_artifact(model_path).id


def _made_by_stage(path: Path) -> Artifact | None:
    """The model output naming `path` in the record of the folder itself or of its parent (a run)."""
    for folder in (path, path.parent):
        record = read_record(folder)
        if record is None:
            continue
        for output in record.outputs:
            if (
                output.kind == "model"
                and output.path is not None
                and _names(folder, record.folder, output.path, path)
            ):
                return Artifact(output.id, "model", str(path), meta={**output.meta, "made_by": record.stage})
    return None


def _names(folder: Path, record_folder: str, output_path: str, path: Path) -> bool:
    """Whether a record found in `folder` (which it calls `record_folder`) names `path` by `output_path`.
    Records name outputs relative to their workspace, so a moved workspace still matches."""
    output = Path(output_path)
    if output.is_absolute():
        return output.resolve() == path
    try:
        inside = output.relative_to(record_folder)
    except ValueError:
        return False
    return (folder / inside).resolve() == path


def model_content_hash(folder: Path) -> str:
    """`tree_sha256` of the folder, each file's digest taken from the cache when its version is known."""
    cache = _DigestCache(_digest_cache_path())
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(TMP_PREFIX))
    known = {path: cache.digest(path) for path in files}
    cache.save()
    return tree_sha256(folder, known)


def _digest_cache_path() -> Path:
    root = (
        os.environ.get("DPOP_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dpop"
    )
    return Path(root) / DIGEST_CACHE_FILE


class _DigestCache:
    """sha256 of files by version. A cache only: unreadable means empty, an unwritable folder or a write
    lost to a concurrent process (every rank of a launch hashes the same model) means one more hash."""

    def __init__(self, path: Path):
        self.path = path
        self.changed = False
        try:
            self.entries: dict[str, list[Any]] = json.loads(path.read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError):
            self.entries = {}

    def digest(self, path: Path) -> str:
        stat = path.stat()
        version = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        key = str(path)
        known = self.entries.pop(key, None)
        if isinstance(known, list) and known[:-1] == version:
            self.entries[key] = known  # re-inserted: the dict's order is least recently used first
            return known[-1]
        digest = file_sha256(path)
        stat = path.stat()
        if [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino] == version:  # unchanged meanwhile
            self.entries[key] = [*version, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if not self.changed:
            return
        kept = dict(list(self.entries.items())[-DIGEST_CACHE_ENTRIES:])
        with contextlib.suppress(OSError):
            write_text_atomic(self.path, json.dumps({"files": kept}) + "\n")


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
