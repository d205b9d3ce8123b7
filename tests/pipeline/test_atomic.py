"""Temporaries carry their writer (host, pid, start time), and a sweep removes only those whose writer is
gone: two commands may write to one workspace at once, and neither may delete the other's work."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.atomic import (
    TMP_PREFIX,
    atomic_dir,
    atomic_file,
    sweep_temporaries,
    temporary_path,
    writer_alive,
)

REPO = Path(__file__).resolve().parents[2]
# A writer that holds a temporary folder open until it is killed, and says where it is.
HOLDER = (
    "import sys, time\n"
    "from pipeline.atomic import atomic_dir\n"
    "with atomic_dir(sys.argv[1]) as tmp:\n"
    "    (tmp / 'part').write_text('half')\n"
    "    print(tmp, flush=True)\n"
    "    time.sleep(120)\n"
)


def start_holder(final: Path) -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(final)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, Path(process.stdout.readline().strip())


def test_a_live_writers_temporary_survives_and_a_dead_ones_goes(tmp_path: Path) -> None:
    process, held = start_holder(tmp_path / "datasets" / "ds-live")
    try:
        assert held.is_dir() and writer_alive(held) is True
        assert sweep_temporaries(tmp_path) == 0
        assert (held / "part").read_text() == "half"
    finally:
        process.send_signal(signal.SIGKILL)  # no clean-up runs: the temporary stays behind
        process.wait(10)
    assert held.is_dir() and writer_alive(held) is False
    assert sweep_temporaries(tmp_path) == 1
    assert not held.exists()
    assert not (tmp_path / "datasets" / "ds-live").exists()  # never published


def test_this_process_keeps_its_own_temporaries(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "runs" / "r1" / "report") as folder, atomic_file(tmp_path / "f.txt") as file:
        file.write_text("x")
        stage = folder / f"{TMP_PREFIX}stage1.parquet"  # as the build stages inside its folder
        stage.write_text("the writer's own scratch file")
        assert sweep_temporaries(tmp_path) == 0  # not even the untagged one inside a live temporary
        assert file.exists() and stage.exists()
        stage.unlink()
    assert (tmp_path / "f.txt").read_text() == "x"
    assert not [p for p in tmp_path.rglob(f"{TMP_PREFIX}*")]


def test_pid_reuse_other_hosts_and_untagged_names(tmp_path: Path) -> None:
    me = temporary_path(tmp_path / "final").name
    match = re.search(r"-(\w+)-(\d+)-(\d+)-[0-9a-f]{8}$", me)
    host, pid, started = match.groups()
    assert int(pid) == os.getpid()
    assert abs(int(started) - psutil.Process().create_time() * 1000) < 1000
    # this pid, but a process started an hour earlier: the pid was reused, that writer is gone
    reused = tmp_path / f"{TMP_PREFIX}a-{host}-{pid}-{int(started) - 3_600_000}-0123abcd"
    # another machine's writer (a shared disk): its processes cannot be seen from here
    foreign = tmp_path / f"{TMP_PREFIX}b-otherhost{host}-{pid}-{started}-0123abcd"
    # a name written before temporaries carried their writer (or by hand): no live writer makes one
    untagged = tmp_path / f"{TMP_PREFIX}killed-build"
    for path in (reused, foreign, untagged):
        path.mkdir()
    assert (writer_alive(reused), writer_alive(foreign), writer_alive(untagged)) == (False, None, False)
    assert sweep_temporaries(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == [foreign.name]


def test_the_sweep_looks_only_as_deep_as_workspaces_write(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c" / "d" / f"{TMP_PREFIX}x"
    shallow = tmp_path / "a" / "b" / "c" / f"{TMP_PREFIX}x"
    for path in (deep, shallow):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("left by a killed writer")
    assert sweep_temporaries(tmp_path, depth=4) == 1
    assert deep.exists() and not shallow.exists()


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1)
)
def test_every_final_name_gets_a_temporary_of_this_process(name: str) -> None:
    final = Path("/nowhere") / name
    if final.name != name:  # "." and ".." are not file names
        return
    temporary = temporary_path(final)
    assert temporary.parent == final.parent and temporary.name.startswith(TMP_PREFIX + name)
    assert writer_alive(temporary) is True
