"""The schedule fires (issue 9): a real `prefect server start`, with its scheduler service, and the real
`dpop serve` in subprocesses; the scheduler, not a person, creates a run of data-to-model, which trains the
tiny model of a tiny workspace. And `dpop serve` stops cleanly on Ctrl-C (SIGINT) and SIGTERM.

The session's `prefect_server` (prefect_test_harness) cannot show the first: it is an ephemeral server, and
Prefect runs no scheduler service in those."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from demo.synth_math import write_math_pairs
from pipeline.sql import query
from pipeline.workspace import Workspace
from tests.flows.real_slice import tiny_base_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EVERY_5_SECONDS = "* * * * * */5"  # croniter (Prefect's cron) reads a sixth field as seconds

# The scheduler's defaults (a pass over recently updated deployments every 5 s, then 3 to 100 runs up to
# 100 days ahead) make a 5-second cron a storm of runs; one run ahead, found within a second, is enough.
SCHEDULER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "true",
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "1",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "1",
    "PREFECT_UI_ENABLED": "false",
}
TRAINING = {
    "max_steps": 1,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 8,
    "logging_steps": 1,
    "disable_tqdm": True,
}


def _isolated_env(home: Path, **settings: str) -> dict[str, str]:
    """This environment without any Prefect or OpenLineage setting of the caller (or of the session's test
    server), plus a throw-away PREFECT_HOME and an empty OpenLineage config (events go to the workspace)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "OPENLINEAGE"))}
    empty_config = home / "openlineage.yml"
    empty_config.write_text("{}\n", encoding="utf-8")
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        OPENLINEAGE_CONFIG=str(empty_config),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **settings,
    )
    return env


def _default_sigint() -> None:
    # A job started in the background of a non-interactive shell ignores SIGINT, and exec keeps that:
    # give the child Python's normal Ctrl-C, whatever the test runner inherited.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def _process(command: list[str], env: dict[str, str], cwd: Path, logs: Path) -> Iterator[subprocess.Popen]:
    """A subprocess in its own process group (with the flow runs it starts), output in `logs`.out/.err;
    the whole group is stopped on the way out, whether the test passed or not."""
    with open(f"{logs}.out", "wb") as out, open(f"{logs}.err", "wb") as err:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
        try:
            yield process
        finally:
            _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    # SIGKILL: the graceful stop has its own test; this is only clean-up, of every process in the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


def _tail(path: str | Path, chars: int = 3000) -> str:
    path = Path(path)
    return path.read_text(encoding="utf-8", errors="replace")[-chars:] if path.exists() else ""


def _wait_for(
    check: Callable[[], Any], seconds: float, what: str, process: subprocess.Popen, logs: Path, more: str = ""
) -> Any:
    """Poll `check` until it returns something truthy; fail early, with the process's output (and the
    server log at `more`), if the process ends first or the time runs out."""
    deadline = time.monotonic() + seconds
    while not (result := check()):
        explain = f"{_tail(f'{logs}.err')}\n{_errors(more) if more else ''}"
        assert process.poll() is None, f"{what}: the process exited ({process.returncode}):\n{explain}"
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s:\n{explain}"
        time.sleep(0.5)
    return result


def _errors(logs: str | Path) -> str:
    """The server's error lines: scheduler failures show only there (SQLAlchemy 2.1 was one)."""
    text = _tail(f"{logs}.err", 10**6) + _tail(f"{logs}.out", 10**6)
    lines = [line for line in text.splitlines() if "Error" in line or "ERROR" in line]
    return "server log errors:\n" + "\n".join(lines[-10:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclasses.dataclass
class Server:
    """A real `prefect server start` (scheduler service included) booting in the background; its log is
    `<home>/server.out` and `.err`."""

    api_url: str
    home: Path
    process: subprocess.Popen

    def ready(self) -> Server:
        _wait_for(lambda: _healthy(self.api_url), 120, "prefect server start", self.process, self.log)
        return self

    @property
    def log(self) -> Path:
        return self.home / "server"


@pytest.fixture(scope="module")
def scheduler_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The server, started but not waited for: a test prepares its workspace while it boots (seconds
    of database migrations), then calls `ready()`."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _process(command, _isolated_env(home, **SCHEDULER_SETTINGS), home, home / "server") as process:
        yield Server(f"http://127.0.0.1:{port}/api", home, process)


def _serve_command(ws: Workspace, base: Path, name: str, cron: str) -> list[str]:
    """`dpop serve` as a user runs it, with a one-step training config."""
    config = ws.root.parent / "dpop.yaml"
    config.write_text(yaml.safe_dump({"training": TRAINING, "losses": ["dpop:50"]}), encoding="utf-8")
    return [
        sys.executable, "-m", "cli.main", "serve", "--cron", cron, "--name", name, "-w", str(ws.root),
        "--input", str(ws.root.parent / "data"), "--model", str(base), "--config", str(config),
    ]  # fmt: skip


def _tiny_workspace(tmp_path: Path) -> tuple[Workspace, Path]:
    """40 synthetic maths pairs and a 1-layer Llama with a tokenizer trained on them."""
    pairs = write_math_pairs(tmp_path / "data" / "math.jsonl", 40, seed=0)
    ws = Workspace.open(tmp_path / "ws")
    return ws, tiny_base_model(ws, [pairs])


def _scheduled_runs(client: Any, deployment_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )
    return [run for run in runs if run.auto_scheduled]


def _finished_scheduled_run(client: Any, deployment_id: Any) -> Any:
    """The first scheduled run that reached a final state, else None."""
    return next((r for r in _scheduled_runs(client, deployment_id) if r.state and r.state.is_final()), None)


def test_scheduled_run_is_created_and_trains(scheduler_server, tmp_path):
    from prefect.client.orchestration import SyncPrefectClient

    started = time.monotonic()
    ws, base = _tiny_workspace(tmp_path)
    built = time.monotonic()
    server = scheduler_server.ready()
    command = _serve_command(ws, base, "schedule-test", EVERY_5_SECONDS)
    # The runner polls for due runs every PREFECT_RUNNER_POLL_FREQUENCY seconds (10 by default).
    env = _isolated_env(server.home, PREFECT_API_URL=server.api_url, PREFECT_RUNNER_POLL_FREQUENCY="1")
    logs = tmp_path / "serve"
    ready = time.monotonic()
    with _process(command, env, tmp_path, logs) as serving, SyncPrefectClient(server.api_url) as client:
        deployment = _wait_for(
            lambda: _deployment(client, "data-to-model/schedule-test"), 60, "deployment", serving, logs
        )
        registered = time.monotonic()
        run = _wait_for(
            lambda: _finished_scheduled_run(client, deployment.id),
            100,
            "a scheduled run",
            serving,
            logs,
            more=server.log,
        )
        finished = time.monotonic()
    assert run.state.is_completed(), f"scheduled run ended {run.state.name}:\n{_tail(f'{logs}.err')}"
    assert run.auto_scheduled and run.created_by.type == "SCHEDULE"  # made by the scheduler, not by hand
    models = query(ws, "SELECT model_dir FROM models WHERE run_id IS NOT NULL")["model_dir"].to_list()
    assert len(models) == 1 and (Path(models[0]) / "config.json").is_file()
    print(
        f"\nworkspace {built - started:.1f} s, server ready +{ready - built:.1f} s, deployment registered "
        f"+{registered - ready:.1f} s, scheduled run completed +{finished - registered:.1f} s "
        f"(run: {(run.end_time - run.start_time).total_seconds():.1f} s), serve stopped "
        f"+{time.monotonic() - finished:.1f} s"
    )


def _deployment(client: Any, name: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_stops_cleanly(scheduler_server, tmp_path, stop_signal):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import DeploymentStatus

    write_math_pairs(tmp_path / "data" / "math.jsonl", 4)
    ws, base = Workspace.open(tmp_path / "ws"), tmp_path / "base"  # no run starts: a folder that passes
    base.mkdir()  # the checks of a model folder will do
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"")
    name = f"stop-{stop_signal.name.lower()}"
    server = scheduler_server.ready()
    api_url, home = server.api_url, server.home
    command = _serve_command(ws, base, name, "0 3 * * *")
    env = _isolated_env(home, PREFECT_API_URL=api_url, PREFECT_RUNNER_POLL_FREQUENCY="1")
    logs = tmp_path / "serve"
    with _process(command, env, tmp_path, logs) as serving, SyncPrefectClient(api_url) as client:
        # READY once the runner has polled for runs: it is inside Runner.start(), signal handlers installed.
        _wait_for(
            lambda: (
                getattr(_deployment(client, f"data-to-model/{name}"), "status", None)
                == DeploymentStatus.READY
            ),
            60,
            "runner polling",
            serving,
            logs,
        )
        serving.send_signal(stop_signal)
        serving.wait(30)
        stopped = client.read_deployment_by_name(f"data-to-model/{name}")
    stderr = _tail(f"{logs}.err", 10**6)
    assert serving.returncode == 0, stderr
    assert "never awaited" not in stderr and "Traceback" not in stderr, stderr
    assert "stopped: the schedule" in _tail(f"{logs}.out")
    assert stopped.paused  # the runner paused the schedule on its way out
