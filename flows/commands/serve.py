"""`dpop serve`: serve the data-to-model deployment on a cron schedule against a Prefect server.

Start a server once (`prefect server start`, then `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`),
then `dpop serve --cron "0 3 * * *" --source data/ --base-model models/base`: every night the flow re-reads
the sources, recomputes only what changed and retrains when a new dataset version appears.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.commands._common import WorkspaceOption, clean_errors, console

DEFAULT_NAME = "nightly"


def deployment(
    name: str,
    cron: str,
    parameters: dict[str, Any],
    timezone: str | None = None,
) -> Any:
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


def flow_parameters(workspace: Path, paths: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The deployment's flow parameters: absolute paths (a served run starts in the runner's working
    directory, not the user's), each checked to exist now rather than at 03:00."""
    parameters: dict[str, Any] = {"workspace": str(workspace)}
    for key, value in paths.items():
        for path in value if isinstance(value, list) else [value]:
            if path is not None and not Path(path).exists():
                raise FileNotFoundError(f"{key}: {path} not found")
        if isinstance(value, list):
            parameters[key] = [str(Path(v).resolve()) for v in value]
        else:
            parameters[key] = str(Path(value).resolve()) if value is not None else None
    # A scheduled run waits up to an hour for a manual run holding the workspace lock instead of failing.
    return {**parameters, **options, "lock_timeout": 3600}


def serve(
    cron: Annotated[
        str,
        typer.Option(
            "--cron", help='Cron schedule, e.g. "0 3 * * *" (03:00 every day); a 6th field counts seconds.'
        ),
    ],
    sources: Annotated[
        list[Path], typer.Option("--source", "-s", help="Source file or folder (repeat for several).")
    ],
    base_model: Annotated[
        Path,
        typer.Option(
            "--base-model",
            help="Model folder to train: a save_pretrained folder (safetensors) with its tokenizer.",
        ),
    ],
    workspace: WorkspaceOption = None,
    reference_model: Annotated[
        Path | None,
        typer.Option("--reference-model", help="Reference model folder (default: the base model)."),
    ] = None,
    curate_config: Annotated[
        Path | None, typer.Option("--curate-config", help="Curation YAML (filters, split, tokenize, shards).")
    ] = None,
    train_config: Annotated[
        Path | None, typer.Option("--train-config", help="Training YAML (TrainConfig keys).")
    ] = None,
    warm_start: Annotated[
        bool,
        typer.Option("--warm-start", help="Train new dataset versions from the last model, not the base."),
    ] = False,
    task_runner: Annotated[str, typer.Option("--task-runner", help="default or dask.")] = "default",
    dask_address: Annotated[
        str | None, typer.Option("--dask-address", help="Dask scheduler, e.g. tcp://10.0.0.5:8786.")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Deployment name.")] = DEFAULT_NAME,
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="Time zone of the cron, e.g. Europe/Paris.")
    ] = None,
) -> None:
    """Serve `data-to-model` on a schedule (blocks; stop with Ctrl-C). Needs a running Prefect server."""
    with clean_errors():
        from pipeline.workspace import Workspace

        ws = Workspace.open(workspace)
        paths = {
            "sources": sources,
            "base_model": base_model,
            "reference_model": reference_model,
            "curate_config": curate_config,
            "train_config": train_config,
        }
        options = {"warm_start": warm_start, "task_runner": task_runner, "dask_address": dask_address}
        target = deployment(name, cron, flow_parameters(ws.root, paths, options), timezone)
        api_url = _require_server()
        runner = _runner()
        runner.add_deployment(target)  # registers it (and its schedule) with the server
        console.print(
            f"serving data-to-model/{name} on cron {cron!r} for workspace {ws.root} (server {api_url})\n"
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
