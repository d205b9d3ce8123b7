"""`dpop serve`: serve the data-to-model deployment on a cron schedule against a Prefect server.

Start a server once (`prefect server start`, then `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`),
then `dpop serve --cron "0 3 * * *" --input data/ --model models/base`: the deployment's parameters are
the `ChainSpec` of the same options `dpop run` takes, so every night the flow re-reads the sources,
recomputes only what changed and retrains (SFT included) when a new dataset version appears.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import typer

from cli.commands import run as r
from cli.commands._common import WorkspaceOption, clean_errors, console

DEFAULT_NAME = "nightly"


def deployment(name: str, cron: str, parameters: dict[str, Any], timezone: str | None = None) -> Any:
    """The data-to-model deployment with its cron schedule (a RunnerDeployment: `.apply()` registers it,
    `prefect.serve(it)` runs it)."""
    from prefect.schedules import Cron

    from flows.data_to_model import data_to_model_flow

    try:
        schedule = Cron(cron, timezone=timezone) if timezone else Cron(cron)
    except ValueError as error:
        raise ValueError(
            f'--cron {cron!r} is not a valid cron expression (e.g. "0 3 * * *"): {error}'
        ) from None
    return data_to_model_flow.to_deployment(
        name=name,
        schedule=schedule,
        parameters=parameters,
        description="Refresh preference data and retrain when a new dataset version appears.",
        tags=["dpop"],
    )


def serve(
    cron: r.option(str, "--cron", help='Cron schedule, e.g. "0 3 * * *"; a 6th field counts seconds.'),
    input: r.Inputs = None,
    model: r.Model = None,
    config: r.Config = None,
    workspace: WorkspaceOption = None,
    n: r.N = None,
    steps: r.Steps = None,
    sft_steps: r.SftSteps = None,
    seed: r.Seed = None,
    losses: r.Losses = None,
    warm_start: r.WarmStart = False,
    task_runner: r.TaskRunner = "default",
    dask_address: r.DaskAddress = None,
    name: r.option(str, "--name", help="Deployment name.") = DEFAULT_NAME,
    timezone: r.option(str | None, "--timezone", help="Time zone of the cron, e.g. Europe/Paris.") = None,
) -> None:
    """Serve `data-to-model` on a schedule (blocks; stop with Ctrl-C): the chain `dpop run` runs with the
    same options, so a scheduled run reproduces it. Needs a running Prefect server."""
    with clean_errors():
        from pipeline.workspace import Workspace

        flags = {"n": n, "steps": steps, "sft_steps": sft_steps, "seed": seed}
        spec = r.chain_spec(input, model, config, flags, losses, warm_start)
        r.validate(config, flags, spec.training)  # now, not at 03:00
        parameters = {
            "workspace": str(Workspace.open(workspace).root),
            "spec": spec.to_json(),
            "task_runner": task_runner,
            "dask_address": dask_address,
            "lock_timeout": 3600,  # a scheduled run waits up to an hour for a manual run's lock
        }
        target = deployment(name, cron, parameters, timezone)
        api_url = _require_server()
        runner = _runner()
        runner.add_deployment(target)  # registers it (and its schedule) with the server
        console.print(
            f"serving data-to-model/{name} on cron {cron!r} for workspace {parameters['workspace']} (server {api_url})\n"
            f"run it now: prefect deployment run 'data-to-model/{name}'; stop with Ctrl-C",
            highlight=False,
        )
    _run_until_stopped(runner)
    console.print(f"stopped: the schedule of data-to-model/{name} is paused until `dpop serve` runs again")


def _require_server() -> str:
    """The URL of the Prefect server to serve against; a clear error when none is set or it is down.

    Without PREFECT_API_URL, Prefect would start a temporary in-process server, and that server runs
    no scheduler service: the deployment would register and never fire."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        raise RuntimeError(
            "PREFECT_API_URL is not set: schedules need a running Prefect server. Start one with "
            "`prefect server start`, then `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise RuntimeError(
            f"cannot reach the Prefect server at {api_url} ({type(error).__name__}): "
            "is `prefect server start` running?"
        )
    return api_url


def _runner() -> Any:
    """Prefect's Runner (what `prefect.serve` uses), with a SIGTERM handler that actually stops it.

    Prefect 3.8's handler calls `Runner.stop()`, which dispatches to its async twin when called inside
    an event loop, as a signal handler always is here: it only creates a coroutine that is never
    awaited ("RuntimeWarning: coroutine 'Runner.astop' was never awaited") and then exits mid-loop."""
    from prefect.runner import Runner

    class StoppableRunner(Runner):
        def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
            self._logger.info("SIGTERM received, shutting down...")
            if not self.started:
                raise SystemExit(0)  # not serving yet (or already stopping): nothing to wind down
            # Signal handlers run on the main thread, which runs the runner's loop: hand the stop to
            # that loop (this also wakes it). `astop` cancels in-flight runs and ends `start()`, whose
            # exit pauses the schedule, as Ctrl-C does.
            self.execute_in_background(self.astop)

    # limit=None: as `prefect.serve`; overlapping runs queue on the workspace lock instead.
    return StoppableRunner(pause_on_shutdown=True, limit=None)


def _run_until_stopped(runner: Any) -> None:
    """Poll for and execute the deployment's runs until Ctrl-C (SIGINT) or SIGTERM."""
    # On Ctrl-C asyncio cancels `start()`, which winds the runner down, then re-raises KeyboardInterrupt.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner.start())


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
