"""The curation funnel: rows entering each build step, rows it dropped and the reason code it gives them.

A dataset manifest (and the build's stage record) stores the funnel in list form, one
`[step, rows_in, dropped, reason]` per step, in the order the steps ran; the first step is `input`
(every pair read, nothing dropped). `read_funnel` is the one reader of that form; it also accepts the
dict form `{step, rows_in, dropped, reason}` that older task results carried, so callers never
normalise it themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple


class FunnelStep(NamedTuple):
    """One step of the funnel. A tuple, so `for step, rows_in, dropped, reason in funnel` still works."""

    step: str
    rows_in: int
    dropped: int
    reason: str = ""

    @property
    def rows_out(self) -> int:
        return self.rows_in - self.dropped

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "rows_in": self.rows_in, "dropped": self.dropped, "reason": self.reason}


def read_funnel(value: Iterable[Any] | None) -> list[FunnelStep]:
    """The funnel from its stored form (a list of `[step, rows_in, dropped, reason]`, or of dicts).

    A malformed entry fails with one line naming its index and what is wrong."""
    steps = []
    for index, entry in enumerate(value or []):
        if isinstance(entry, Mapping):
            fields = (entry.get("step", entry.get("name")), entry.get("rows_in"), entry.get("dropped"))
            reason = entry.get("reason")
        elif isinstance(entry, list | tuple) and len(entry) in (3, 4):
            fields, reason = tuple(entry[:3]), entry[3] if len(entry) == 4 else ""
        else:
            raise ValueError(
                f"funnel entry {index}: expected [step, rows_in, dropped, reason], got {entry!r}"
            )
        steps.append(_step(index, *fields, reason))
    return steps


def _step(index: int, step: Any, rows_in: Any, dropped: Any, reason: Any) -> FunnelStep:
    if not isinstance(step, str) or not step:
        raise ValueError(f"funnel entry {index}: step must be a non-empty string, got {step!r}")
    for name, number in (("rows_in", rows_in), ("dropped", dropped)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ValueError(f"funnel entry {index} ({step}): {name} must be a count, got {number!r}")
    if dropped > rows_in:
        raise ValueError(f"funnel entry {index} ({step}): dropped {dropped} is above rows_in {rows_in}")
    return FunnelStep(step, rows_in, dropped, reason or "")


def funnel_json(steps: Iterable[FunnelStep]) -> list[list[Any]]:
    """The stored (list) form of a funnel."""
    return [[s.step, s.rows_in, s.dropped, s.reason] for s in steps]


def rejected_by_reason(steps: Iterable[FunnelStep]) -> dict[str, int]:
    """Rows dropped per reason code (several steps may share a code, e.g. `too_long`)."""
    counts: dict[str, int] = {}
    for step in steps:
        if step.dropped:
            counts[step.reason] = counts.get(step.reason, 0) + step.dropped
    return counts
