"""`dpop serve`'s deployment: registered against a (temporary) Prefect server with its cron schedule."""

from __future__ import annotations

import pytest

from flows.commands.serve import deployment


def test_deployment_registers_with_cron_schedule(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client

    parameters = {
        "workspace": str(tmp_path / "ws"),
        "sources": [str(tmp_path / "data")],
        "base_model": str(tmp_path / "base"),
        "warm_start": True,
    }
    deployment_id = deployment("nightly-test", "0 3 * * *", parameters, timezone="Europe/Paris").apply()
    with get_client(sync_client=True) as client:
        registered = client.read_deployment(deployment_id)
        flow = client.read_flow(registered.flow_id)
    assert (flow.name, registered.name) == ("data-to-model", "nightly-test")
    assert [(s.schedule.cron, s.schedule.timezone) for s in registered.schedules] == [
        ("0 3 * * *", "Europe/Paris")
    ]
    assert registered.parameters["sources"] == [str(tmp_path / "data")]
    assert registered.parameters["warm_start"] is True


def test_bad_cron_is_a_clear_error():
    with pytest.raises(ValueError, match="not a valid cron expression"):
        deployment("x", "every night", {})
