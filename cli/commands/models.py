"""`dpop models`: the workspace's models with their aliases and key eval metrics; `dpop models promote`
and `dpop models rollback` move an alias (`pipeline.registry`) with a recorded reason."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.commands._common import WorkspaceOption, clean_errors, console

app = typer.Typer(
    help="Models, their aliases (champion, candidate, …) and eval metrics.", no_args_is_help=False
)

# (metric, column title, format) shown per model: the mean over its evaluations' overall values
KEY_METRICS = (
    ("rewards/accuracies", "reward acc", "{:.2f}"),
    ("logps/chosen_delta", "Δ logp chosen", "{:+.2f}"),
    ("exact_match", "exact match", "{:.2f}"),
)
Alias = Annotated[str, typer.Option("--alias", "-a", help="The alias to move.")]
Reason = Annotated[str, typer.Option("--reason", help="Why (kept in the alias's history).")]


@app.callback(invoke_without_command=True)
def models(ctx: typer.Context, workspace: WorkspaceOption = None) -> None:
    """List the models of the workspace: aliases, folder, and key metrics of their evaluations."""
    if ctx.invoked_subcommand is not None:
        return
    with clean_errors():
        from rich.table import Table

        rows = model_rows(_workspace(workspace))
        table = Table(title="models (aliases from the registry; metrics: mean over each model's evaluations)")
        for name in (
            "model",
            "aliases",
            "made by",
            *(title for _, title, _ in KEY_METRICS),
            "evals",
            "folder",
        ):
            table.add_column(name, overflow="fold")
        for row in rows:
            cells = [_cell(row["metrics"].get(metric), spec) for metric, _, spec in KEY_METRICS]
            table.add_row(
                row["model_id"],
                ", ".join(row["aliases"]),
                row["made_by"] or "",
                *cells,
                str(row["evals"]),
                row["dir"] or "",
            )
        console.print(table)


def model_rows(ws: Any) -> list[dict[str, Any]]:
    """One dict per model of the catalog (and per alias holder it lacks): aliases, key metrics."""
    from pipeline.registry import Registry
    from pipeline.sql import query

    names = ", ".join(f"'{metric}'" for metric, _, _ in KEY_METRICS)
    models = query(
        ws, "SELECT model_id, model_dir, run_id, meta->>'made_by' AS made_by FROM models ORDER BY created_at"
    )
    metrics = query(
        ws,
        f"SELECT model_id, metric, avg(value) AS value, count(DISTINCT eval_id) AS evals FROM evals "
        f"WHERE group_kind = 'all' AND metric IN ({names}) GROUP BY ALL",
    )
    found: dict[str, dict[str, Any]] = {}
    for model_id, folder, run_id, made_by in models.iter_rows():
        found[model_id] = {
            "model_id": model_id,
            "dir": folder,
            "made_by": made_by or ("train" if run_id else None),
        }
    for alias, state in sorted(Registry(ws).states().items()):
        holder = state.current
        entry = found.setdefault(
            holder.model_id, {"model_id": holder.model_id, "dir": holder.model_dir, "made_by": None}
        )
        entry.setdefault("aliases", []).append(alias)
    for entry in found.values():
        entry.setdefault("aliases", [])
        entry["metrics"], entry["evals"] = {}, 0
    for model_id, metric, value, evals in metrics.iter_rows():
        if model_id in found:
            found[model_id]["metrics"][metric] = value
            found[model_id]["evals"] = max(found[model_id]["evals"], evals)
    return list(found.values())


@app.command("promote")
def promote(
    model: Annotated[str, typer.Argument(help="A model id (model-…) or a model folder.")],
    alias: Alias = "champion",
    reason: Reason = ...,
    workspace: WorkspaceOption = None,
) -> None:
    """Point ALIAS at MODEL, recording who, when and why (no gate: a person's decision)."""
    with clean_errors():
        from pipeline.registry import Registry

        ws = _workspace(workspace)
        model_id, folder = resolve_model(ws, model)
        registry = Registry(ws)
        current = registry.current(alias)
        event = registry.assign(alias, model_id, folder, reason)
        before = f" (was {current.model_id})" if current else ""
        console.print(f"{alias} -> {model_id}{before}: {event.reason}", highlight=False, markup=False)


@app.command("rollback")
def rollback(alias: Alias = "champion", reason: Reason = "", workspace: WorkspaceOption = None) -> None:
    """Point ALIAS back at the model it pointed at before its current one."""
    with clean_errors():
        from pipeline.registry import Registry

        event = Registry(_workspace(workspace)).rollback(alias, reason)
        console.print(
            f"{alias} -> {event.model_id} (was {event.previous_model_id}): {event.reason}",
            highlight=False,
            markup=False,
        )


def resolve_model(ws: Any, model: str) -> tuple[str, str | None]:
    """(model id, folder) of a model id the catalog or registry knows, or of a model folder."""
    path = Path(model).expanduser()
    if path.is_dir():
        from dpop.model_io import model_artifact

        return model_artifact(path).id, str(path.resolve())
    from pipeline.catalog import Catalog
    from pipeline.registry import Registry

    known = Catalog(ws).get(model)
    if known is not None and known.kind == "model":
        return model, known.uri
    for event in reversed(Registry(ws).events()):
        if event.model_id == model:
            return model, event.model_dir
    raise ValueError(
        f"{model}: neither a model folder nor a model id of workspace {ws.root} (see `dpop models`)"
    )


def _workspace(workspace: Path | None) -> Any:
    from cli.commands._workspace import writable_workspace

    return writable_workspace(workspace)


def _cell(value: float | None, spec: str) -> str:
    return "" if value is None else spec.format(value)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="models")
