"""One run at a time per workspace.

Two runs on one workspace would race on the same dataset and run folders (each write is atomic, but the
second run's work would be wasted or, for training, interleaved). A file lock in the workspace
serialises them: a second run waits up to `timeout` seconds, then exits naming the holder. The catalog
has its own short lock per write, so `dpop sql` and `dpop lineage` never wait for a run.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from filelock import FileLock, Timeout

from pipeline.workspace import Workspace

LOCK_NAME, HOLDER_NAME = ".run.lock", ".run.lock.holder"


class WorkspaceBusy(RuntimeError):
    """Another run holds the workspace lock."""


@contextmanager
def workspace_lock(ws: Workspace, timeout: float = 0, what: str = "run") -> Iterator[None]:
    """Hold the workspace's run lock; wait at most `timeout` seconds (0: fail at once, <0: wait forever)."""
    lock = FileLock(str(ws.root / LOCK_NAME), timeout=timeout)
    try:
        lock.acquire(poll_interval=0.2)
    except Timeout:
        raise WorkspaceBusy(
            f"workspace {ws.root} is busy: another run holds {ws.root / LOCK_NAME} ({_holder(ws)}); "
            f"waited {timeout:g} s. Wait for it to finish or pass a longer --lock-timeout."
        ) from None
    holder = ws.root / HOLDER_NAME
    since = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": since}
        holder.write_text(json.dumps(info), encoding="utf-8")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _holder(ws: Workspace) -> str:
    """Who holds the lock, as far as the holder file says (advisory: the lock file decides)."""
    for _ in range(5):  # the holder may be writing it right now
        try:
            info = json.loads((ws.root / HOLDER_NAME).read_text(encoding="utf-8"))
            return f"{info['what']} pid {info['pid']} on {info['host']} since {info['since']}"
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    return "holder unknown"
