"""Shared fixtures: a fresh workspace per test and the real data in ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.workspace import Workspace

# `prefect_server`: one temporary Prefect server per session, shared by every test that runs a flow.
pytest_plugins = ["tests.flows.prefect_fixtures"]

SHARED_DATA = Path(
    os.environ.get("DPOP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture
def shared_data() -> Path:
    """The folder of real public preference data; the test is skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace.open(tmp_path / "ws")
