"""Field checks shared by the format parsers: text fields and message lists, each failure a `Reject`
with a stable reason code from `data_contracts/rejection.yaml`."""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
# Names other tools use for the same roles (sharegpt, Gemini, chat UIs).
ROLE_ALIASES = {
    "human": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "observation": "tool",
    "function": "tool",
}


class Reject(Exception):
    """A record that does not become a pair: `reason` is a contract reason code, `detail` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    max_field_chars: int


def check_text(value: Any, field: str, limits: Limits) -> str:
    """A text value that is a string, valid Unicode and within the size limit."""
    if value is None:
        raise Reject("null_field", f"{field} is null")
    if not isinstance(value, str):
        raise Reject("wrong_type", f"{field} is {type(value).__name__} {short(value)}, not text")
    if len(value) > limits.max_field_chars:
        raise Reject(
            "field_too_large",
            f"{field} has {len(value):,} characters, over the limit of {limits.max_field_chars:,}",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Reject("invalid_utf8", f"{field} holds a lone surrogate (not encodable as UTF-8)") from None
    return value


def text_field(record: dict, field: str, limits: Limits) -> str:
    if field not in record:
        raise Reject("missing_field", f"no field {field!r} (fields: {sorted(map(str, record))[:12]})")
    return check_text(record[field], field, limits)


def response(record: dict, field: str, limits: Limits) -> str:
    """A chosen/rejected text: also not empty or whitespace-only."""
    return nonempty(text_field(record, field, limits), field)


def nonempty(text: str, field: str) -> str:
    if not text.strip():
        raise Reject("empty_response", f"{field} is {'empty' if not text else 'whitespace only'}")
    return text


class _Short(reprlib.Repr):
    """repr with bounded work: nesting cut at 3 levels, long integers shown by size (a plain repr
    raises past 4,300 digits)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 60, 60

    def repr_int(self, x: int, level: int) -> str:
        return f"<integer of {x.bit_length():,} bits>" if x.bit_length() > 128 else repr(x)


_SHORT = _Short()


def short(value: Any, limit: int = 40) -> str:
    text = repr(value) if isinstance(value, (str, float)) else _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def role_of(message: dict, where: str) -> str:
    role = message.get("role", message.get("from"))
    if role is None:
        raise Reject("bad_messages", f"{where} has no role (keys: {sorted(map(str, message))})")
    if not isinstance(role, str):
        raise Reject("wrong_type", f"{where} role is {type(role).__name__}, not text")
    role = ROLE_ALIASES.get(role.lower(), role.lower())
    if role not in ROLES:
        raise Reject("unknown_role", f"{where} role {short(message.get('role', message.get('from')))}")
    return role


def content_of(message: dict, where: str, limits: Limits) -> str:
    """Message content: a string, or a list of typed parts whose text parts are joined."""
    key = "content" if "content" in message else "value" if "value" in message else None
    if key is None:
        raise Reject("bad_messages", f"{where} has no content (keys: {sorted(map(str, message))})")
    content = message[key]
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, dict):
                raise Reject("bad_messages", f"{where} content part {index} is {type(part).__name__}")
            if part.get("type", "text") != "text":
                raise Reject(
                    "bad_messages",
                    f"{where} content part {index} has type {short(part.get('type'))}, not text",
                )
            text = part.get("text", part.get("value"))
            texts.append(check_text(text, f"{where} content part {index}", limits))
        content = "".join(texts)
    return check_text(content, f"{where} content", limits)


def messages(value: Any, field: str, limits: Limits) -> list[dict[str, str]]:
    """A message list as [{role, content}] with known roles (aliases mapped)."""
    if value is None:
        raise Reject("null_field", f"{field} is null")
    if not isinstance(value, list):
        raise Reject("wrong_type", f"{field} is {type(value).__name__}, not a list of messages")
    result = []
    for index, message in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(message, dict):
            raise Reject("bad_messages", f"{where} is {type(message).__name__}, not a message object")
        result.append({"role": role_of(message, where), "content": content_of(message, where, limits)})
    return result


def messages_field(record: dict, field: str, limits: Limits) -> list[dict[str, str]]:
    if field not in record:
        raise Reject("missing_field", f"no field {field!r} (fields: {sorted(map(str, record))[:12]})")
    return messages(record[field], field, limits)


def split_last_assistant(conversation: list[dict[str, str]], field: str) -> tuple[list[dict[str, str]], str]:
    """(prompt, response) of a whole conversation ending in an assistant turn."""
    if not conversation or conversation[-1]["role"] != "assistant":
        raise Reject("no_assistant_turn", f"{field} does not end with an assistant message")
    if len(conversation) == 1:
        raise Reject("bad_messages", f"{field} has no prompt before the assistant message")
    return conversation[:-1], nonempty(conversation[-1]["content"], field)


# A number written as text (every CSV cell is text): decimal notation, or a spelling of NaN/Infinity
# that float() accepts, so that it is caught as bad_number rather than read.
NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def score(value: Any, field: str) -> float | None:
    """A score or rating as a finite float (None when absent). NaN, ±Infinity and integers beyond
    float range are `bad_number`: they cannot be ranked, and a NaN compares false with everything."""
    if value is None or isinstance(value, str) and not value.strip():
        return None  # absent, or an empty CSV cell
    if isinstance(value, str) and NUMBER_TEXT.fullmatch(value.strip()):
        number = float(value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Reject("wrong_type", f"{field} is {type(value).__name__} {short(value)}, not a number")
    else:
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            raise Reject("bad_number", f"{field} is {short(value)}, beyond float range") from None
    if not math.isfinite(number):
        raise Reject("bad_number", f"{field} is {short(value)}, not a finite number")
    return number
