"""The curation config: a YAML file (see examples/curate.yaml and docs/curation.md) read into frozen
dataclasses by the one config loader (`pipeline.config`). Validation is strict and happens before any
data is read: an unknown key, a value of the wrong type or out of its range fails with one line naming
the file, the key's full path (e.g. `filters.edit_ratio.max`) and what is allowed."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, load, read_yaml, setting, validate_fields

__all__ = ["ConfigError", "CurationConfig", "load_curation_config"]

BIG = 10**9  # upper bound of counts and character lengths: far above any real pair, far below overflow
MAX_TOKENS = 1 << 20  # upper bound of token lengths (1M tokens: above every model's context)


class _Checked:
    """Validate every field's Spec when built in Python too (the loader checks YAML values itself)."""

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class Bounds(_Checked):
    """Inclusive bounds; `null` means unbounded on that side. The subclasses give each its range."""

    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"({self.min:g}) is above its max ({self.max:g})", key="min")


@dataclass(frozen=True)
class EditDistanceBounds(Bounds):
    min: float | None = setting(None, ge=0, le=BIG, help="fewest character edits kept")
    max: float | None = setting(None, ge=0, le=BIG, help="most character edits kept")


@dataclass(frozen=True)
class RatioBounds(Bounds):
    min: float | None = setting(None, ge=0, le=1, help="lowest edit ratio kept")
    max: float | None = setting(None, ge=0, le=1, help="highest edit ratio kept")


@dataclass(frozen=True)
class MarginBounds(Bounds):
    min: float | None = setting(None, ge=-BIG, le=BIG, help="lowest chosen - rejected score kept")
    max: float | None = setting(None, ge=-BIG, le=BIG, help="highest chosen - rejected score kept")


@dataclass(frozen=True)
class MaxChars(_Checked):
    prompt: int | None = setting(None, ge=1, le=BIG)
    response: int | None = setting(None, ge=1, le=BIG)


@dataclass(frozen=True)
class UserFilter(_Checked):
    """A DuckDB SQL predicate over the pair columns; exactly one of `drop_where` / `keep_where`."""

    name: str = setting(nonempty=True)
    drop_where: str | None = setting(None, nonempty=True)
    keep_where: str | None = setting(None, nonempty=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.drop_where is None) == (self.keep_where is None):
            raise ConfigError(f"filter {self.name!r} needs exactly one of drop_where / keep_where")


@dataclass(frozen=True)
class Decontaminate(_Checked):
    """Drop pairs sharing a word n-gram with an evaluation file (JSONL, e.g. GSM8K's test.jsonl)."""

    file: str = setting(nonempty=True)
    fields: tuple[str, ...] = setting(("question", "answer"), nonempty=True)
    n: int = setting(13, ge=1, le=1000, help="n-gram length in words (GPT-3 used 13)")
    check: tuple[str, ...] = setting(
        ("prompt", "chosen", "rejected"), choices=("prompt", "chosen", "rejected")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.fields:
            raise ConfigError("must name at least one field of the eval records", key="fields")
        if not self.check:
            raise ConfigError("must name at least one of prompt, chosen, rejected", key="check")


@dataclass(frozen=True)
class Filters(_Checked):
    empty_response: bool = True
    identical_responses: bool = True
    max_chars: MaxChars = field(default_factory=MaxChars)
    length_ratio: float | None = setting(None, ge=1, le=1e6, help="longer / shorter response, in chars")
    edit_distance: EditDistanceBounds = field(default_factory=EditDistanceBounds)
    edit_ratio: RatioBounds = field(default_factory=RatioBounds)
    score_margin: MarginBounds = field(default_factory=MarginBounds)
    duplicate_pair: bool = True
    max_pairs_per_prompt: int | None = setting(None, ge=1, le=BIG)
    decontaminate: Decontaminate | None = None
    user: tuple[UserFilter, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        seen = set()
        for index, user in enumerate(self.user):
            if user.name in seen:
                raise ConfigError(f"({user.name!r}) is used twice", key=f"user[{index}].name")
            seen.add(user.name)


@dataclass(frozen=True)
class Split(_Checked):
    eval_fraction: float = setting(0.05, ge=0, lt=1, help="share of prompts that go to eval")


@dataclass(frozen=True)
class Tokenize(_Checked):
    max_length: int = setting(1024, ge=2, le=MAX_TOKENS, help="prompt + response tokens")
    max_prompt_length: int = setting(512, ge=1, le=MAX_TOKENS - 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_prompt_length >= self.max_length:
            raise ConfigError(
                f"({self.max_prompt_length}) must be below max_length ({self.max_length}): "
                "a response needs room after the prompt",
                key="max_prompt_length",
            )


@dataclass(frozen=True)
class Shards(_Checked):
    rows_per_shard: int = setting(50_000, ge=1, le=10**8)


@dataclass(frozen=True)
class CurationConfig(_Checked):
    filters: Filters = field(default_factory=Filters)
    split: Split = field(default_factory=Split)
    tokenize: Tokenize = field(default_factory=Tokenize)
    shards: Shards = field(default_factory=Shards)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_curation_config(
    source: str | os.PathLike[str] | dict[str, Any] | CurationConfig | None,
    base: str | os.PathLike[str] | None = None,
    label: str = "curation config",
) -> CurationConfig:
    """Read and validate a curation config from a YAML path, a dict, or return a config as is.

    A relative `filters.decontaminate.file` is resolved against the YAML file's folder (a dict's:
    `base`, default the working directory). `label` names a dict's origin in messages."""
    if isinstance(source, CurationConfig):
        return source
    folder = Path(base) if base is not None else Path.cwd()
    if source is None:
        config = CurationConfig()
    elif isinstance(source, str | os.PathLike):
        config = load(CurationConfig, read_yaml(source, "curation config"), source=str(source))
        folder = Path(source).resolve().parent
    else:
        config = load(CurationConfig, source, source=label)  # a non-mapping is refused there
    return resolve_eval_file(config, folder)


def resolve_eval_file(config: CurationConfig, folder: str | os.PathLike[str]) -> CurationConfig:
    """`filters.decontaminate.file`, when relative, read from `folder` (the config file's)."""
    folder = Path(folder)
    decontaminate = config.filters.decontaminate
    if decontaminate is None or Path(decontaminate.file).is_absolute():
        return config
    resolved = dataclasses.replace(decontaminate, file=str((folder / decontaminate.file).resolve()))
    return dataclasses.replace(config, filters=dataclasses.replace(config.filters, decontaminate=resolved))
