"""`dpop serve`: serve the data-to-model deployment on a cron schedule against a Prefect server.

Start a server once (`prefect server start`, then `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`),
then `dpop serve --cron "0 3 * * *" --source data/ --base-model models/base`: every night the flow re-reads
the sources, recomputes only what changed and retrains when a new dataset version appears.
"""

from __future__ import annotations

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


def serve(
    cron: Annotated[str, typer.Option("--cron", help='Cron schedule, e.g. "0 3 * * *" (03:00 every day).')],
    sources: Annotated[
        list[Path], typer.Option("--source", "-s", help="Source file or folder (repeat for several).")
    ],
    base_model: Annotated[
        Path, typer.Option("--base-model", help="Model folder to train (with its tokenizer).")
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
        from prefect import serve as prefect_serve

        from pipeline.workspace import Workspace

        ws = Workspace.open(workspace)
        for path in [*sources, base_model, reference_model, curate_config, train_config]:
            if path is not None and not path.exists():
                raise FileNotFoundError(f"{path} not found")
        parameters = {
            "workspace": str(ws.root),
            "sources": [str(s.resolve()) for s in sources],
            "base_model": str(base_model.resolve()),
            "reference_model": str(reference_model.resolve()) if reference_model else None,
            "curate_config": str(curate_config.resolve()) if curate_config else None,
            "train_config": str(train_config.resolve()) if train_config else None,
            "warm_start": warm_start,
            "task_runner": task_runner,
            "dask_address": dask_address,
            "lock_timeout": 3600,  # a scheduled run waits for a manual one instead of failing
        }
        target = deployment(name, cron, parameters, timezone)
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            console.print(
                "[yellow]PREFECT_API_URL is not set: serving against a temporary server that lives only as long "
                "as this command (no UI, no run history). Start `prefect server start` and run "
                "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` first.[/]"
            )
        console.print(f"serving data-to-model/{name} on cron {cron!r} for workspace {ws.root}")
        prefect_serve(target)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
