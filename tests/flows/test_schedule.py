"""`dpop serve`'s deployment: registered against a (temporary) Prefect server with its cron schedule and
the chain spec `dpop run` builds from the same options as its parameters."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from cli.commands.serve import deployment
from cli.main import app
from flows.chain import ChainSpec


def test_deployment_registers_with_cron_schedule(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client

    spec = ChainSpec(sources=(str(tmp_path / "data"),), base_model=str(tmp_path / "base"), warm_start=True)
    parameters = {"workspace": str(tmp_path / "ws"), "spec": spec.to_json()}
    deployment_id = deployment("nightly-test", "0 3 * * *", parameters, timezone="Europe/Paris").apply()
    with get_client(sync_client=True) as client:
        registered = client.read_deployment(deployment_id)
        flow = client.read_flow(registered.flow_id)
    assert (flow.name, registered.name) == ("data-to-model", "nightly-test")
    assert [(s.schedule.cron, s.schedule.timezone) for s in registered.schedules] == [
        ("0 3 * * *", "Europe/Paris")
    ]
    assert ChainSpec.from_json(registered.parameters["spec"]) == spec


def test_bad_cron_is_a_clear_error():
    with pytest.raises(ValueError, match="not a valid cron expression"):
        deployment("x", "every night", {})


def _serve_args(tmp_path) -> list[str]:
    (tmp_path / "data").mkdir()
    (tmp_path / "base").mkdir()  # passes the checks of a model folder (no run starts here)
    (tmp_path / "base" / "config.json").write_text("{}")
    (tmp_path / "base" / "model.safetensors").write_bytes(b"")
    return [
        "serve",
        "--cron",
        "0 3 * * *",
        "-s",
        str(tmp_path / "data"),
        "--base-model",
        str(tmp_path / "base"),
    ]


def test_serve_without_a_server_is_a_clear_error(tmp_path):
    """Prefect's fallback, a temporary in-process server, runs no scheduler: the schedule would never fire."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(app, [*_serve_args(tmp_path), "-w", str(tmp_path / "ws")])
    assert result.exit_code == 1
    assert result.output.startswith(
        "error: PREFECT_API_URL is not set: schedules need a running Prefect server"
    )


def test_serve_with_a_server_down_is_a_clear_error(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
    with temporary_settings(updates={PREFECT_API_URL: url}):
        result = CliRunner().invoke(app, [*_serve_args(tmp_path), "-w", str(tmp_path / "ws")])
    assert result.exit_code == 1
    assert f"error: cannot reach the Prefect server at {url}" in result.output
    assert "Traceback" not in result.output


def test_serve_names_a_missing_path(tmp_path):
    args = _serve_args(tmp_path)
    args[args.index("--base-model") + 1] = str(tmp_path / "missing")
    result = CliRunner().invoke(app, [*args, "-w", str(tmp_path / "ws")])
    assert (
        result.exit_code == 1
        and f"--model: model path {tmp_path / 'missing'} does not exist" in result.output
    )
