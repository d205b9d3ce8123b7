"""`dpop lineage`: the ancestry of a model, run, dataset version or shard down to its source files."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from cli.commands._common import WorkspaceOption, clean_errors, console
from cli.commands._workspace import existing_workspace


class LineageFormat(str, Enum):
    tree = "tree"
    json = "json"


def lineage(
    artefact_id: Annotated[
        str,
        typer.Argument(
            help="A catalog id (or a unique prefix): model-…, run-…, ds-…, a shard sha256, pairs-…."
        ),
    ],
    workspace: WorkspaceOption = None,
    output_format: Annotated[
        LineageFormat, typer.Option("--format", "-f", help="tree or json.")
    ] = LineageFormat.tree,
    rows: Annotated[
        bool,
        typer.Option(
            "--rows", help="Also list the training rows with their source_uri and source_row (models)."
        ),
    ] = False,
) -> None:
    """Print where an artefact came from: every stage with its row counts and rejections, down to the files."""
    with clean_errors():
        import json

        from pipeline.lineage import ancestry, source_files, training_rows, training_rows_sql

        ws = existing_workspace(workspace)
        tree = ancestry(ws, artefact_id)
        if output_format is LineageFormat.json:
            payload: dict[str, Any] = {
                "lineage": tree,
                "source_files": [s["uri"] for s in source_files(tree)],
            }
            if rows and tree["kind"] == "model":
                payload["training_rows"] = training_rows(ws, tree["id"]).to_dicts()
            typer.echo(json.dumps(payload, indent=2, default=str))
            return
        console.print(_rich_tree(tree))
        files = source_files(tree)
        console.print(f"{len(files)} source file(s): " + ", ".join(str(f["uri"]) for f in files))
        if tree["kind"] == "model":
            if rows:
                console.print(training_rows(ws, tree["id"]))
            else:
                console.print("row level: dpop lineage --rows, or dpop sql with:")
                console.print(training_rows_sql(tree["id"]), highlight=False, markup=False)


def _label(node: dict[str, Any]) -> str:
    parts = [f"[bold]{node.get('kind') or '?'}[/] {node['id']}"]
    if node.get("relation"):
        parts.insert(0, f"[dim]{node['relation']}[/]")
    if node.get("missing"):
        parts.append("[red](not in the catalog)[/]")
    if node.get("rows") is not None:
        parts.append(f"rows={node['rows']}")
    if node.get("rows_read") is not None:
        parts.append(f"read={node['rows_read']}")
    if node.get("train_rows") is not None:
        parts.append(f"train={node['train_rows']} eval={node.get('eval_rows')}")
    if node.get("uri") and node.get("kind") in ("source_file", "model"):
        parts.append(f"[cyan]{node['uri']}[/]")
    return "  ".join(parts)


def _rich_tree(node: dict[str, Any], branch: Any = None) -> Any:
    from rich.tree import Tree

    here = Tree(_label(node)) if branch is None else branch.add(_label(node))
    for stage, reasons in (node.get("rejections") or {}).items():
        total = sum(reasons.values())
        detail = ", ".join(f"{reason}={count}" for reason, count in sorted(reasons.items()))
        here.add(f"[yellow]rejected at {stage}: {total}[/] ({detail})")
    for parent in node.get("parents", []):
        _rich_tree(parent, here)
    return here


def register(app: typer.Typer) -> None:
    app.command("lineage")(lineage)
