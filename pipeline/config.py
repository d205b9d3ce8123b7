"""The one loader of every YAML config (curation, training, SFT, `dpop.yaml`).

Two halves:

- `read_yaml(path)`: a bounded, safe read. The file may be at most `MAX_CONFIG_BYTES`; the YAML
  loader (a `yaml.SafeLoader` subclass) refuses anchors and aliases (so an alias bomb, "billion
  laughs", stops at its first `&`), duplicate keys and nesting deeper than `MAX_DEPTH`, and reads
  `1e-5` as a float the way YAML 1.2 and every user does (PyYAML's YAML 1.1 reads it as a string).
- `load(cls, data, source=...)`: typed validation of a (possibly nested) dataclass from its type
  hints and its fields' metadata, a `Spec` made with `setting(...)`: range (inclusive or exclusive
  bounds), choices, old spellings. An unknown key gets a "did you mean …" (difflib) and the known
  keys. Every message is one line naming the source (the file), the key's full path
  (`training.penalty_lambda`, `filters.user[0].name`) and what is allowed.

Every numeric setting of every config has a lower and an upper bound (tests check it), so an absurd
value (`max_length: 1e18`) stops here, not deep inside a tokenizer. Cross-field rules live in each
config's `__post_init__` and raise `ConfigError(predicate, key=<field>)` (or no key, for the whole
section); the loader adds the path.

No torch, no prefect: `pipeline` layer.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: a config is a page of settings, never data
MAX_DEPTH = 32  # nesting levels of YAML collections
_SPEC = "dpop_config"  # the field-metadata key of a Spec
_MAX_SHOWN = 60  # characters of a bad value quoted in a message


class ConfigError(ValueError):
    """A bad config file, key or value. `str()` is one line naming the source (the file) and the key's
    full path: `train.yaml: config key 'beta' must be float in (0, 100], got -1`,
    `dpop.yaml: unknown key 'training.lerning_rate'; did you mean learning_rate? (known keys: …)`,
    or, for a rule over a whole section, `dpop.yaml: in 'training': bf16 and fp16 are both true …`."""

    def __init__(
        self,
        message: str,
        key: str | None = None,
        source: str | None = None,
        section: str | None = None,
        subject: str = "config key",
    ):
        self.message = " ".join(str(message).split())  # one line, whatever the cause wrote
        self.key = key
        self.source = source
        self.section = section
        self.subject = subject
        super().__init__(self._text())

    def _text(self) -> str:
        if self.key:
            gap = "" if self.message[:1] in (";", ":", ",") else " "
            body = f"{self.subject} '{self.key}'{gap}{self.message}"
        elif self.section:
            body = f"in '{self.section}': {self.message}"
        else:
            body = self.message
        return ": ".join(part for part in (self.source, body) if part)

    def __str__(self) -> str:
        return self._text()

    def _with(self, **changes: Any) -> ConfigError:
        fields = dict(key=self.key, source=self.source, section=self.section, subject=self.subject)
        return ConfigError(self.message, **{**fields, **changes})

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key (or section) read relative to `prefix` (`filters.` + `max`)."""
        if not prefix:
            return self
        if self.key:
            return self._with(key=prefix + self.key)
        section = prefix.rstrip(".") + (f".{self.section}" if self.section else "")
        return self._with(section=section)

    def located(self, source: str | None) -> ConfigError:
        if self.source or not source:
            return self
        return self._with(source=source)


@dataclass(frozen=True)
class Spec:
    """What a setting allows beyond its type: bounds, choices, old spellings (refused with a pointer)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    nonempty: bool = False  # strings: refuse "" and whitespace
    old_names: tuple[str, ...] = ()  # earlier spellings: refused with "did you mean <name>"
    settable: bool = True  # False: the program sets it (e.g. output_dir); a file may not
    note: str = ""  # why it is not settable, or what it means

    def bounds_text(self) -> str:
        """`in [1, 65536]`, `in (0, 10]`, `>= 0` …; empty when unbounded."""
        low = high = None
        if self.ge is not None or self.gt is not None:
            low = ("[", _number(self.ge)) if self.ge is not None else ("(", _number(self.gt))
        if self.le is not None or self.lt is not None:
            high = ("]", _number(self.le)) if self.le is not None else (")", _number(self.lt))
        if low and high:
            return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
        if high:
            return f"{'<=' if high[0] == ']' else '<'} {high[1]}"
        return ""

    @property
    def bounded(self) -> bool:
        return (self.ge is not None or self.gt is not None) and (self.le is not None or self.lt is not None)

    def within(self, number: float) -> bool:
        return not (
            (self.ge is not None and number < self.ge)
            or (self.gt is not None and number <= self.gt)
            or (self.le is not None and number > self.le)
            or (self.lt is not None and number >= self.lt)
        )


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    help: str = "",
    metadata: Mapping[str, Any] | None = None,
    **spec: Any,
) -> Any:
    """A dataclass field with a `Spec` in its metadata: `beta: float = setting(0.1, gt=0, le=100)`."""
    meta = {**(metadata or {}), _SPEC: Spec(**spec)}
    if help:
        meta["help"] = help
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def spec_of(field: dataclasses.Field) -> Spec | None:
    return field.metadata.get(_SPEC)


# ----- reading YAML ---------------------------------------------------------------------------------

# YAML 1.2 floats without a dot (`1e-5`, `5E+3`), which YAML 1.1 (PyYAML) reads as strings.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class RefusedYAML(yaml.MarkedYAMLError):
    """Valid YAML that a config may not use (anchors, aliases, deep nesting)."""


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses anchors and aliases, duplicate keys and deep nesting."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            # Refused before the composer resolves anything: an alias bomb costs one event.
            raise RefusedYAML(
                None, None, "anchors and aliases (&name, *name) are not allowed in a config", event.start_mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise RefusedYAML(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def parse_yaml(text: str, source: str) -> Any:
    """Parse config text with `StrictLoader`; a YAML error becomes one ConfigError line with its position."""
    loader = StrictLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = error.problem or error.context or "syntax error"
        verdict = "refused" if isinstance(error, RefusedYAML) else "not valid YAML"
        raise ConfigError(f"{verdict}{where}: {problem}", source=source) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"not valid YAML: {error}", source=source) from None
    except (ValueError, OverflowError) as error:  # a scalar its constructor cannot build (2020-13-45, …)
        raise ConfigError(f"not valid YAML: {error}", source=source) from None
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike[str], what: str = "config file") -> Any:
    """The YAML document of the file at `path`, read with a size bound; an empty file is `{}`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else "")
        )
    source = str(path)
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{size:,} bytes; a config file may be at most {MAX_CONFIG_BYTES:,}", source=source)
    with path.open("rb") as handle:
        raw = handle.read(MAX_CONFIG_BYTES + 1)  # the file may grow after stat()
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"a config file may be at most {MAX_CONFIG_BYTES:,} bytes", source=source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"not UTF-8 text (byte {error.start})", source=source) from None
    data = parse_yaml(text, source)
    return {} if data is None else data


# ----- validating --------------------------------------------------------------------------------


class _Mismatch(Exception):
    """This value does not fit this type/spec (the caller knows the key and writes the message)."""


def load(cls: type, data: Any, source: str | None = None, prefix: str = "") -> Any:
    """Build `cls` (a dataclass) from `data` (a mapping from YAML or code), validating every key.

    `source` names the file (or what the dict is) in messages; `prefix` is the path of `data` inside
    a larger document (`"training."`)."""
    try:
        return _build(cls, data, prefix)
    except ConfigError as error:
        raise error.located(source) from None


def load_file(cls: type, path: str | os.PathLike[str], what: str = "config file") -> Any:
    return load(cls, read_yaml(path, what), source=str(path))


def validate_fields(obj: Any) -> None:
    """Check each field that has a Spec against its type, bounds and choices, for configs built in
    Python (whose values do not pass through `load`), and store the value as the loader would (an
    int given for a float as a float …), so a config has one form however it was made. Raises
    ConfigError naming the field."""
    hints = _hints(type(obj))
    for field in dataclasses.fields(obj):
        spec = spec_of(field)
        if spec is None:
            continue
        value = getattr(obj, field.name)
        try:
            converted = _convert(hints[field.name], value, spec, field.name)
        except _Mismatch:
            raise ConfigError(_expected(hints[field.name], spec, value), key=field.name) from None
        if type(converted) is not type(value):
            object.__setattr__(obj, field.name, converted)  # frozen dataclasses too: still in __init__


def numeric_fields(cls: type) -> dict[str, tuple[Any, Spec | None]]:
    """Every field of `cls` whose type admits a number: name -> (type hint, Spec or None)."""
    hints = _hints(cls)
    return {
        field.name: (hints[field.name], spec_of(field))
        for field in dataclasses.fields(cls)
        if field.init and _admits_number(hints[field.name])
    }


def nested_configs(cls: type) -> dict[str, type]:
    """The dataclass-typed fields of `cls` (sections), name -> class."""
    found = {}
    for name, hint in _hints(cls).items():
        for member in _members(hint):
            if dataclasses.is_dataclass(member):
                found[name] = member
    return found


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or None
    if not isinstance(data, Mapping):
        if where:
            raise ConfigError(f"must be a mapping of keys to values, got {_kind(data)}", key=where)
        raise ConfigError(f"expected a mapping of keys to values at the top level, got {_kind(data)}")
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    hints = _hints(cls)
    renamed = {old: name for name, f in fields.items() for old in (spec_of(f) or Spec()).old_names}
    values = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str):
            raise (
                ConfigError(f"has a key that is not a string: {_show(key)}", key=where)
                if where
                else ConfigError(f"a key is not a string: {_show(key)}")
            )
        _check_key(cls, key, value, fields, renamed, prefix)
        spec = spec_of(fields[key]) or Spec()
        try:
            values[key] = _convert(hints[key], value, spec, path)
        except _Mismatch:
            raise ConfigError(_expected(hints[key], spec, value), key=path) from None
    for name, field in fields.items():
        if name not in values and _required(field):
            raise ConfigError("is missing (required)", key=f"{prefix}{name}")
    try:
        return cls(**values)
    except ConfigError as error:
        raise error.under(prefix) from None
    except (ValueError, TypeError) as error:  # a library's own check (e.g. TrainingArguments)
        raise ConfigError(str(error)).under(prefix) from None


def _check_key(cls: type, key: str, value: Any, fields: dict, renamed: dict, prefix: str) -> None:
    path = f"{prefix}{key}"
    if key in renamed:
        raise ConfigError(f"is an old spelling; did you mean {renamed[key]}? (its one spelling)", key=path)
    removed = getattr(cls, "__config_removed__", {})
    if key in removed:
        _refuse_removed(cls, key, value, removed[key], fields, prefix)
    if key not in fields:
        raise ConfigError(_unknown(key, cls, fields), key=path, subject="unknown key")
    spec = spec_of(fields[key])
    if spec is not None and not spec.settable:
        raise ConfigError(f"is not settable in a config: {spec.note}", key=path)


def _refuse_removed(cls: type, key: str, value: Any, reason: str, fields: dict, prefix: str) -> None:
    """A retired section (e.g. `training_args`): point at where each of its keys goes now."""
    if isinstance(value, Mapping):
        for inner in value:
            path = f"{prefix}{key}.{inner}"
            if isinstance(inner, str) and inner in fields:
                raise ConfigError(
                    f"is in {key}, a retired section ({reason}): write it as {prefix}{inner}", key=path
                )
            raise ConfigError(_unknown(str(inner), cls, fields), key=path, subject="unknown key")
    raise ConfigError(f"is a retired section ({reason})", key=f"{prefix}{key}")


def _unknown(key: str, cls: type, fields: Mapping[str, Any]) -> str:
    """ "unknown key; did you mean …? (known keys: …)". A class with many inherited fields (TrainConfig)
    lists its own and names the rest with `__config_keys_note__`."""
    known = [name for name, f in fields.items() if (spec_of(f) or Spec()).settable]
    renamed = {old for f in fields.values() for old in (spec_of(f) or Spec()).old_names}
    known = sorted(name for name in known if name not in renamed)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    listed = known
    note = getattr(cls, "__config_keys_note__", "")
    if note:
        inherited = {
            f.name
            for base in cls.__mro__[1:]
            if dataclasses.is_dataclass(base)
            for f in dataclasses.fields(base)
        }
        own = set(cls.__dict__.get("__annotations__", {})) - inherited
        listed = [name for name in known if name in own] + [note]
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{hint} (known keys: {', '.join(listed)})"


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _convert(hint: Any, value: Any, spec: Spec, path: str) -> Any:
    """`value` checked against `hint` and `spec`, converted (int -> float, list -> tuple …).

    Raises _Mismatch when the value itself does not fit, ConfigError when a nested key does."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _convert_union(typing.get_args(hint), value, spec, path)
    if hint is Any:
        return value
    if value is None:
        if hint is type(None):
            return None
        raise _Mismatch
    fixed = _fixed_choices(hint)
    if fixed is not None:  # a Literal or an Enum: its values, as text
        return _choose(value.value if isinstance(value, enum.Enum) else value, fixed)
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _build(hint, value, path + ".")
    container = typing.get_origin(hint) or hint
    if container in (list, tuple):
        return _convert_sequence(hint, value, spec, path)
    if container is dict:
        return _convert_mapping(hint, value, spec, path)
    return _convert_scalar(hint, value, spec)


def _fixed_choices(hint: Any) -> tuple | None:
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    if _is_enum(hint):
        return tuple(m.value for m in hint)
    return None


def _convert_union(members: tuple, value: Any, spec: Spec, path: str) -> Any:
    if value is None:
        if type(None) in members:
            return None
        raise _Mismatch
    enums = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
    if enums:  # `SchedulerType | str`: the str only means "the enum's value as text"
        members = tuple(m for m in members if m is not str)
    for member in members:
        if member is type(None):
            continue
        try:
            return _convert(member, value, spec, path)
        except _Mismatch:
            continue
    raise _Mismatch


def _convert_sequence(hint: Any, value: Any, spec: Spec, path: str) -> Any:
    if not isinstance(value, list | tuple):
        raise _Mismatch
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    item_hint = args[0] if args else Any
    # A bad scalar item makes the whole list a mismatch (the message shows the list and what each
    # item may be); a bad key inside an item that is a section raises its own ConfigError.
    items = [_convert(item_hint, item, spec, f"{path}[{index}]") for index, item in enumerate(value)]
    is_tuple = typing.get_origin(hint) is tuple or hint is tuple
    return tuple(items) if is_tuple else items


def _convert_mapping(hint: Any, value: Any, spec: Spec, path: str) -> Any:
    if not isinstance(value, Mapping):
        raise _Mismatch
    args = typing.get_args(hint)
    value_hint = args[1] if len(args) == 2 else Any
    result = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ConfigError(f"has a key that is not a string: {_show(key)}", key=path)
        try:
            result[key] = _convert(value_hint, item, Spec(), f"{path}.{key}")
        except _Mismatch:
            raise ConfigError(_expected(value_hint, Spec(), item), key=f"{path}.{key}") from None
    return result


def _convert_scalar(hint: Any, value: Any, spec: Spec) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise _Mismatch
        return value
    if hint is int:
        number = _as_int(value)
    elif hint is float:
        number = _as_float(value)
    elif hint is str:
        if not isinstance(value, str) or (spec.nonempty and not value.strip()):
            raise _Mismatch
        return _choose(value, spec.choices) if spec.choices else value
    else:  # a type a YAML value cannot be (e.g. accelerate's ParallelismConfig): code-only
        if isinstance(hint, type) and isinstance(value, hint):
            return value
        raise _Mismatch
    if not spec.within(number):
        raise _Mismatch
    if spec.choices and number not in spec.choices:
        raise _Mismatch
    return number


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)  # `5e4` or `2.0`: a whole number written as a float
    raise _Mismatch


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Mismatch
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        raise _Mismatch from None
    if not math.isfinite(number):
        raise _Mismatch
    return number


def _choose(value: Any, choices: tuple | None) -> Any:
    if choices is not None and value not in choices:
        raise _Mismatch
    return value


def _expected(hint: Any, spec: Spec, value: Any) -> str:
    text = f"must be {_describe(hint, spec)}, got {_show(value)}"
    choices = _choices_of(hint, spec)
    if choices and isinstance(value, str):
        close = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=0.6)
        if close:
            text += f" (did you mean {close[0]}?)"
    return text


def _describe(hint: Any, spec: Spec) -> str:
    """What `hint` + `spec` allow, in words: `int in [1, 65536]`, `one of dpop, dpo`, `a mapping` …"""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _describe_union(typing.get_args(hint), spec)
    choices = _choices_of(hint, spec)
    if choices and (hint is str or _fixed_choices(hint) is not None):
        return "one of " + ", ".join(str(c) for c in choices)
    container = origin or hint
    if dataclasses.is_dataclass(hint) or container is dict:
        return "a mapping"
    if container in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis and a is not Any]
        return _describe_list(args[0] if args else Any, spec)
    return _describe_scalar(hint, spec)


def _describe_list(item: Any, spec: Spec) -> str:
    if item is Any:
        return "a list"
    if item is str and not spec.choices:
        return "a list of non-empty strings" if spec.nonempty else "a list of strings"
    return f"a list, each {_describe(item, spec)}"


def _describe_union(members: tuple, spec: Spec) -> str:
    if any(_is_enum(m) for m in members):
        members = tuple(m for m in members if m is not str)
    parts = [_describe(m, spec) for m in members if m is not type(None)]
    if type(None) in members:
        parts.append("null")
    return " or ".join(dict.fromkeys(parts))


def _describe_scalar(hint: Any, spec: Spec) -> str:
    if hint in (int, float):
        text = f"{hint.__name__} {spec.bounds_text()}".rstrip()
        if spec.choices:
            text += " from " + ", ".join(_number(c) for c in spec.choices)
        return text
    if hint is str:
        return "a non-empty string" if spec.nonempty else "a string"
    names = {Any: "any value", bool: "true or false", type(None): "null"}
    if hint in names:
        return names[hint]
    return f"a {getattr(hint, '__name__', hint)} (set it in Python, not in a file)"


def _choices_of(hint: Any, spec: Spec) -> tuple | None:
    if spec.choices:
        return spec.choices
    for member in _members(hint):
        fixed = _fixed_choices(member)
        if fixed is not None:
            return fixed
    return None


def _is_enum(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, enum.Enum)


def _members(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _admits_number(hint: Any) -> bool:
    for member in _members(hint):
        if member in (int, float):
            return True
        if typing.get_origin(member) in (list, tuple) and _admits_number_items(member):
            return True
    return False


def _admits_number_items(hint: Any) -> bool:
    return any(a in (int, float) for a in typing.get_args(hint))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _kind(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {_show(value)}"


def _show(value: Any) -> str:
    """A value as the user wrote it (YAML spelling), cut to a readable length."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = _number(value)
    elif isinstance(value, int) and value.bit_length() > 256:  # repr() of a huge int is slow or refused
        text = f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    else:
        text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def _number(value: float | int | None) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return repr(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 256 else _show(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:.6g}"
