"""One run per workspace: a second run exits with a message naming the holder, or waits for the lock."""

from __future__ import annotations

import threading
import time

import pytest

from flows.lock import WorkspaceBusy, workspace_lock


def test_second_run_exits_with_clear_message(workspace):
    with (
        workspace_lock(workspace, what="first run"),
        pytest.raises(
            WorkspaceBusy, match=r"is busy: another run holds .*\(first run pid \d+ on .* since .*\)"
        ),
        workspace_lock(workspace, timeout=0.3),
    ):
        pass
    with workspace_lock(workspace, timeout=0):  # released: free again
        pass


def test_second_run_waits_for_the_first(workspace):
    held = threading.Event()

    def first() -> None:
        with workspace_lock(workspace):
            held.set()
            time.sleep(0.6)

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(5)
    started = time.monotonic()
    with workspace_lock(workspace, timeout=20):
        waited = time.monotonic() - started
    thread.join()
    assert waited >= 0.4


def test_flow_refuses_a_busy_workspace(prefect_server, workspace, tmp_path):
    from flows.chain import ChainSpec
    from tests.flows.real_slice import run_flow

    base = tmp_path / "base"
    base.mkdir()
    with workspace_lock(workspace, what="another flow"), pytest.raises(WorkspaceBusy, match="another flow"):
        run_flow(workspace, ChainSpec(sources=(str(tmp_path),), base_model=str(base)))
    assert not workspace.sources_dir.exists()  # nothing ran
