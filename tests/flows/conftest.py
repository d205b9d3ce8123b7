"""Flow tests request `prefect_server` (tests/flows/prefect_fixtures.py, loaded as a plugin by
tests/conftest.py): one temporary Prefect server per session, with PREFECT_HOME in a tmp folder."""
