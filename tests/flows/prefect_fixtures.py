"""Prefect isolation for tests: a throw-away PREFECT_HOME and one temporary Prefect server per session.

Imported by tests/flows/conftest.py and by the end-to-end test, so all flow tests share one server
(starting it costs seconds) and nothing touches the user's ~/.prefect or an OpenLineage endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

_OPENLINEAGE_VARIABLES = (
    "OPENLINEAGE_URL",
    "OPENLINEAGE_CONFIG",
    "OPENLINEAGE_DISABLED",
    "OPENLINEAGE_NAMESPACE",
)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Yield the PREFECT_HOME of a session-wide temporary Prefect server (prefect_test_harness)."""
    import os

    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_HOME", str(home))  # also seen by Dask worker processes
        patch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(home / "storage"))
        patch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        patch.setenv("DO_NOT_TRACK", "1")
        for name in list(os.environ):
            if name in _OPENLINEAGE_VARIABLES or name.startswith("OPENLINEAGE__"):
                patch.delenv(name)
        # An explicit, empty OpenLineage config file shadows any openlineage.yml in the working directory
        # or ~/.openlineage, so events go to the workspace file (the default under test).
        empty_config = home / "openlineage.yml"
        empty_config.write_text("{}\n", encoding="utf-8")
        patch.setenv("OPENLINEAGE_CONFIG", str(empty_config))
        from prefect.settings import PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
        from prefect.testing.utilities import prefect_test_harness

        from pipeline.openlineage import reset_clients

        reset_clients()
        with (
            temporary_settings(updates={PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: home / "storage"}),
            prefect_test_harness(server_startup_timeout=180),
        ):
            yield home
        reset_clients()
