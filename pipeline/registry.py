"""The model registry: aliases (`champion`, `candidate`, any name a user gives) that point at models, with
their history: who moved an alias, when, and why; and the gate's decisions.

Where it lives. An alias is a user's (or the gate's) decision, not something the stage records can
derive, so `dpop catalog rebuild` could not recreate it from them. The registry's history is therefore
kept twice:

- `<ws>/registry.jsonl`, append-only, one event per line, written first (under a file lock, flushed
  and fsynced): the source of truth, and what `dpop catalog rebuild` replays;
- the catalog's `registry_events` table, written right after (the SQL views `model_aliases` and
  `gate_decisions` read it). A crash between the two leaves the catalog one event behind; a rebuild
  (or the next event: `sync_catalog`) fills it in.

Events (`event`):

- `assign`: `alias` now points at `model_id` (`dpop models promote`, or the gate promoting);
- `rollback`: `alias` goes back to the model it pointed at before its current assignment (the history
  is a stack per alias: assign pushes, rollback pops; a second rollback goes one further back);
- `gate`: a gate decision (`details`: outcome, candidates, checks, `key`), whether or not it moved
  an alias: a refused promotion is recorded and queryable like a promotion.

Every event has `seq` (1, 2, … in file order), `at` (UTC), `actor` (the user, or `gate`) and `reason`.
No torch, no prefect.
"""

from __future__ import annotations

import getpass
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from pipeline.catalog import Catalog, CatalogBatch
from pipeline.workspace import Workspace

REGISTRY_FILE = "registry.jsonl"
EVENTS = ("assign", "rollback", "gate")
ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
GATE_ACTOR = "gate"
_INSERT = "INSERT INTO registry_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (seq) DO NOTHING"


class RegistryError(ValueError):
    """A bad alias, an impossible move, or an unreadable registry file: one line naming what."""


@dataclass(frozen=True)
class Event:
    seq: int
    at: str
    event: str
    alias: str | None
    model_id: str | None
    model_dir: str | None
    previous_model_id: str | None
    reason: str
    actor: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "details": dict(self.details)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Event:
        if not isinstance(data, dict):
            raise RegistryError(f"{where}: expected a JSON object")
        for name in ("seq", "at", "event", "reason", "actor"):
            if name not in data:
                raise RegistryError(f"{where}: field {name!r} is missing")
        if data["event"] not in EVENTS:
            raise RegistryError(
                f"{where}: field 'event' is {data['event']!r}, not one of {', '.join(EVENTS)}"
            )
        if not isinstance(data["seq"], int) or isinstance(data["seq"], bool):
            raise RegistryError(f"{where}: field 'seq' is not an integer")
        try:
            datetime.fromisoformat(str(data["at"]))
        except ValueError:
            raise RegistryError(f"{where}: field 'at' is not an ISO time: {data['at']!r}") from None
        known = {k: data.get(k) for k in cls.__dataclass_fields__}
        known["details"] = data.get("details") if isinstance(data.get("details"), dict) else {}
        return cls(**known)


@dataclass(frozen=True)
class AliasState:
    """Who holds an alias now, and the stack of earlier holders (oldest first)."""

    alias: str
    current: Event
    earlier: tuple[Event, ...]


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS.match(alias):
        raise RegistryError(
            f"alias {alias!r}: use 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)"
        )
    return alias


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in a container without one
        return f"uid-{os.getuid()}" if hasattr(os, "getuid") else "unknown"


class Registry:
    """The registry of one workspace (module doc)."""

    def __init__(self, workspace: Workspace):
        self.ws = workspace
        self.path = workspace.root / REGISTRY_FILE
        self._lock = FileLock(str(self.path) + ".lock", timeout=600)

    # --- reading ---------------------------------------------------------------------------------

    def events(self) -> list[Event]:
        """Every event in file order; a damaged line fails in one line naming the file and line."""
        return list(read_events(self.path))

    def states(self) -> dict[str, AliasState]:
        """alias -> its holder and earlier holders, replaying assign (push) and rollback (pop)."""
        return alias_states(self.events())

    def current(self, alias: str) -> Event | None:
        state = self.states().get(alias)
        return state.current if state else None

    def find_gate(self, key: str) -> Event | None:
        """The latest gate decision recorded under `key` (see flows.chain), else None."""
        found = [e for e in self.events() if e.event == "gate" and e.details.get("key") == key]
        return found[-1] if found else None

    # --- writing ---------------------------------------------------------------------------------

    def assign(
        self,
        alias: str,
        model_id: str,
        model_dir: str | None,
        reason: str,
        actor: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Event:
        """Point `alias` at `model_id` (recorded even when it already points there: a decision)."""
        check_alias(alias)
        if not reason or not reason.strip():
            raise RegistryError('a reason is required (--reason "…"): the history says why an alias moved')
        with self._lock:
            current = self.current(alias)
            previous = current.model_id if current else None
            return self._append("assign", alias, model_id, model_dir, previous, reason, actor, details)

    def rollback(self, alias: str, reason: str, actor: str | None = None) -> Event:
        """Point `alias` back at the model it pointed at before its current assignment."""
        check_alias(alias)
        with self._lock:
            state = self.states().get(alias)
            if state is None:
                raise RegistryError(f"alias {alias!r} points at no model: nothing to roll back")
            if not state.earlier:
                raise RegistryError(
                    f"alias {alias!r} has had one holder ({state.current.model_id}): nothing to roll back to"
                )
            back = state.earlier[-1]
            why = reason or f"rollback of {state.current.model_id}"
            return self._append(
                "rollback", alias, back.model_id, back.model_dir, state.current.model_id, why, actor, None
            )

    def record_gate(self, alias: str, reason: str, details: Mapping[str, Any]) -> Event:
        """A gate decision (its outcome, candidates and checks in `details`)."""
        with self._lock:
            current = self.current(alias)
            previous = current.model_id if current else None
            promoted = details.get("promoted")
            return self._append("gate", alias, promoted, None, previous, reason, GATE_ACTOR, details)

    def _append(
        self,
        event: str,
        alias: str | None,
        model_id: str | None,
        model_dir: str | None,
        previous: str | None,
        reason: str,
        actor: str | None,
        details: Mapping[str, Any] | None,
    ) -> Event:
        """Append under the lock (held by the caller): the file first, then the catalog."""
        seq = len(self.events()) + 1
        record = Event(
            seq, _now(), event, alias, model_id, model_dir, previous, " ".join(reason.split()),
            actor or _user(), dict(details or {}),
        )  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record.to_json(), sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.sync_catalog()
        return record

    def sync_catalog(self) -> None:
        """Insert the events the catalog lacks (rows are keyed by seq: present ones are left alone)."""
        events = self.events()
        with Catalog(self.ws).batch() as batch:
            for event in events:
                insert_event(batch, event)


def insert_event(batch: CatalogBatch, event: Event) -> None:
    """One event as a `registry_events` row (also what `dpop catalog rebuild` replays)."""
    batch.execute(
        _INSERT,
        [
            event.seq,
            datetime.fromisoformat(event.at),
            event.event,
            event.alias,
            event.model_id,
            event.model_dir,
            event.previous_model_id,
            event.reason,
            event.actor,
            json.dumps(dict(event.details), sort_keys=True, default=str),
        ],
    )


def read_events(path: Path) -> Iterator[Event]:
    """The events of a registry file (none when it does not exist). A line that is not an event fails
    with the file, the line number and the field; a half-written last line (a crash while appending)
    is skipped, since the writer fsyncs each whole line."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # no newline after it: the append was cut short
                continue
            raise RegistryError(f"{where}: not JSON ({error.msg})") from None
        yield Event.from_json(data, where)


def alias_states(events: list[Event]) -> dict[str, AliasState]:
    """Replay assign/rollback events into each alias's stack of holders."""
    stacks: dict[str, list[Event]] = {}
    for event in events:
        if event.alias is None:
            continue
        if event.event == "assign":
            stacks.setdefault(event.alias, []).append(event)
        elif event.event == "rollback":
            stack = stacks.get(event.alias, [])
            if stack:
                stack.pop()
            # the model restored is the one below; if it is not (a file edited by hand), trust the event
            if not stack or stack[-1].model_id != event.model_id:
                stack.append(event)
    return {alias: AliasState(alias, s[-1], tuple(s[:-1])) for alias, s in stacks.items() if s}
