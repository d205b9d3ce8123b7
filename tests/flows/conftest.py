"""Flow tests run against one temporary Prefect server per session, with PREFECT_HOME in a tmp folder."""

from tests.flows.prefect_fixtures import prefect_server  # noqa: F401  (a fixture, used by name)
