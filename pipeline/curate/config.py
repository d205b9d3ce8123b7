"""The curation config: a YAML file (see examples/curate.yaml and docs/curation.md) read into frozen
dataclasses. Validation is strict: an unknown key or a value of the wrong type or range fails with a
message naming the key's full path (e.g. `filters.edit_ratio.max`), before any data is read."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """The curation config is invalid; the message names the key."""


@dataclass(frozen=True)
class Bounds:
    """Inclusive bounds; `null` means unbounded on that side."""

    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class MaxChars:
    prompt: int | None = None
    response: int | None = None


@dataclass(frozen=True)
class UserFilter:
    """A DuckDB SQL predicate over the pair columns; exactly one of `drop_where` / `keep_where`."""

    name: str
    drop_where: str | None = None
    keep_where: str | None = None


@dataclass(frozen=True)
class Decontaminate:
    """Drop pairs sharing a word n-gram with an evaluation file (JSONL, e.g. GSM8K's test.jsonl)."""

    file: str
    fields: tuple[str, ...] = ("question", "answer")
    n: int = 13
    check: tuple[str, ...] = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Filters:
    empty_response: bool = True
    identical_responses: bool = True
    max_chars: MaxChars = field(default_factory=MaxChars)
    length_ratio: float | None = None
    edit_distance: Bounds = field(default_factory=Bounds)
    edit_ratio: Bounds = field(default_factory=Bounds)
    score_margin: Bounds = field(default_factory=Bounds)
    duplicate_pair: bool = True
    max_pairs_per_prompt: int | None = None
    decontaminate: Decontaminate | None = None
    user: tuple[UserFilter, ...] = ()


@dataclass(frozen=True)
class Split:
    eval_fraction: float = 0.05


@dataclass(frozen=True)
class Tokenize:
    max_length: int = 1024
    max_prompt_length: int = 512


@dataclass(frozen=True)
class Shards:
    rows_per_shard: int = 50_000


@dataclass(frozen=True)
class CurationConfig:
    filters: Filters = field(default_factory=Filters)
    split: Split = field(default_factory=Split)
    tokenize: Tokenize = field(default_factory=Tokenize)
    shards: Shards = field(default_factory=Shards)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_curation_config(
    source: str | os.PathLike[str] | dict[str, Any] | CurationConfig | None,
) -> CurationConfig:
    """Read and validate a curation config from a YAML path, a dict, or return a config as is.

    A relative `filters.decontaminate.file` is resolved against the YAML file's folder."""
    if isinstance(source, CurationConfig):
        return source
    base = Path.cwd()
    if source is None:
        data: Any = {}
    elif isinstance(source, dict):
        data = source
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"curation config {path} not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"curation config {path} is not valid YAML: {error}") from error
        base = path.resolve().parent
    else:
        data = source  # reported below as "must be a mapping"
    config = _build(CurationConfig, data, "")
    _check_ranges(config)
    decontaminate = config.filters.decontaminate
    if decontaminate is not None and not Path(decontaminate.file).is_absolute():
        resolved = dataclasses.replace(decontaminate, file=str((base / decontaminate.file).resolve()))
        config = dataclasses.replace(
            config, filters=dataclasses.replace(config.filters, decontaminate=resolved)
        )
    return config


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"curation config: {where or 'the top level'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(
                f"curation config: unknown key {where + str(key)!r} (allowed: {', '.join(names)})"
            )
    values = {}
    for name in names:
        if name in data:
            values[name] = _convert(hints[name], data[name], f"{where}{name}")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for name in required:
        if name not in data:
            raise ConfigError(f"curation config: missing key {where + name!r}")
    return cls(**values)


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"curation config: {key!r} must be a list, got {value!r}")
        return tuple(_convert(args[0], item, f"{key}[{index}]") for index, item in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"curation config: {key!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"curation config: {key!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"curation config: {key!r} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"curation config: {key!r} must be a non-empty string, got {value!r}")
        return value
    raise ConfigError(f"curation config: {key!r} has an unsupported type {hint}")  # pragma: no cover


def _check_ranges(config: CurationConfig) -> None:
    filters = config.filters

    def positive(key: str, value: float | None) -> None:
        if value is not None and value <= 0:
            raise ConfigError(f"curation config: {key!r} must be positive, got {value!r}")

    positive("filters.max_chars.prompt", filters.max_chars.prompt)
    positive("filters.max_chars.response", filters.max_chars.response)
    positive("filters.max_pairs_per_prompt", filters.max_pairs_per_prompt)
    if filters.length_ratio is not None and filters.length_ratio < 1:
        raise ConfigError(
            f"curation config: 'filters.length_ratio' must be >= 1, got {filters.length_ratio!r}"
        )
    for name in ("edit_distance", "edit_ratio", "score_margin"):
        bounds = getattr(filters, name)
        if bounds.min is not None and bounds.max is not None and bounds.min > bounds.max:
            raise ConfigError(
                f"curation config: 'filters.{name}.min' ({bounds.min}) is above its max ({bounds.max})"
            )
    if filters.decontaminate is not None:
        positive("filters.decontaminate.n", filters.decontaminate.n)
        bad = [c for c in filters.decontaminate.check if c not in ("prompt", "chosen", "rejected")]
        if bad:
            raise ConfigError(
                f"curation config: 'filters.decontaminate.check' has {bad}; use prompt/chosen/rejected"
            )
        if not filters.decontaminate.fields:
            raise ConfigError("curation config: 'filters.decontaminate.fields' must name at least one field")
    seen = set()
    for index, user in enumerate(filters.user):
        if (user.drop_where is None) == (user.keep_where is None):
            raise ConfigError(
                f"curation config: 'filters.user[{index}]' ({user.name}) needs exactly one of drop_where / keep_where"
            )
        if user.name in seen:
            raise ConfigError(f"curation config: 'filters.user[{index}].name' {user.name!r} is used twice")
        seen.add(user.name)
    if not 0 <= config.split.eval_fraction < 1:
        raise ConfigError(
            f"curation config: 'split.eval_fraction' must be in [0, 1), got {config.split.eval_fraction}"
        )
    positive("tokenize.max_length", config.tokenize.max_length)
    positive("tokenize.max_prompt_length", config.tokenize.max_prompt_length)
    if config.tokenize.max_prompt_length >= config.tokenize.max_length:
        raise ConfigError(
            "curation config: 'tokenize.max_prompt_length' must be below 'tokenize.max_length' "
            "(a response needs room after the prompt)"
        )
    positive("shards.rows_per_shard", config.shards.rows_per_shard)
