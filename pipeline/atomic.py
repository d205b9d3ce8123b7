"""Write-then-rename, so a crash never leaves a half-written file or folder that a reader could take
for a whole one.

Temporary names start with `.tmp-` (readers skip them) and carry their writer:
`.tmp-<final name>-<host>-<pid>-<start ms>-<random>`. Two commands may write to one workspace at the
same time, so `sweep_temporaries` removes only the temporaries whose writer is gone: same host, and that
pid no longer runs or now belongs to a process started at another time (pid reuse). A temporary of a
live writer, or of a writer on another host (whose processes we cannot see), is left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil

TMP_PREFIX = ".tmp-"
# Temporaries sit beside their final path, and final paths are at most this deep in a workspace
# (<ws>/datasets/<id>/<shard>); the sweep looks no deeper, so it stays cheap in a large workspace.
SWEEP_DEPTH = 4
# A process's start time as psutil reads it can move by a second between calls (the kernel's boot time
# is derived from the wall clock); a pid reused within this window by another process is not a concern.
START_TOLERANCE_MS = 2_000
_TAG = re.compile(r"-(?P<host>[A-Za-z0-9]{1,32})-(?P<pid>\d+)-(?P<started>\d+)-[0-9a-f]{8}$")
_writer_tags: dict[int, str] = {}


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "localhost"


def _writer_tag() -> str:
    """`<host>-<pid>-<start ms>` of this process (per pid: a forked child gets its own)."""
    pid = os.getpid()
    if pid not in _writer_tags:
        started = round(psutil.Process(pid).create_time() * 1000)
        _writer_tags[pid] = f"{_host()}-{pid}-{started}"
    return _writer_tags[pid]


def temporary_path(final: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside `final`, tagged with this process as its writer."""
    final = Path(final)
    return final.with_name(f"{TMP_PREFIX}{final.name}-{_writer_tag()}-{uuid.uuid4().hex[:8]}")


def writer_alive(path: str | os.PathLike[str]) -> bool | None:
    """Whether the process that created temporary `path` still runs: True, False, or None when it ran
    on another host. A name without a writer tag predates the tags (no current writer makes one): False."""
    match = _TAG.search(Path(path).name)
    if match is None:
        return False
    if match["host"] != _host():
        return None
    try:
        process = psutil.Process(int(match["pid"]))
        started = process.create_time() * 1000
        zombie = process.status() == psutil.STATUS_ZOMBIE  # killed, not yet reaped: gone
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists and we may not look: keep its files
    return not zombie and abs(started - int(match["started"])) <= START_TOLERANCE_MS


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success fsync and rename it to `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(final)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success rename it to `final` (replacing an old one)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(final)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = temporary_path(final)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(final: str | os.PathLike[str], text: str) -> Path:
    with atomic_file(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(final)


def _temporaries(folder: str | os.PathLike[str], depth: int) -> Iterator[Path]:
    """`.tmp-*` entries under `folder`, `depth` levels deep at most, never looking inside one (what a
    temporary holds belongs to its writer, and goes with it)."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return  # removed meanwhile by its writer, or not ours to read
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX):
            yield Path(entry.path)
        elif depth > 1 and entry.is_dir(follow_symlinks=False):
            yield from _temporaries(entry.path, depth - 1)


def sweep_temporaries(root: str | os.PathLike[str], depth: int = SWEEP_DEPTH) -> int:
    """Remove the `.tmp-*` leftovers of dead writers under `root`; returns how many were removed."""
    removed = 0
    for path in _temporaries(root, depth):
        if writer_alive(path) is not False:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed
