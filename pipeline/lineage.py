"""Lineage over the catalog: the ancestry of any artefact down to its source files, and row-level tracing.

`ancestry(ws, id)` walks the catalog's edges from a model, run, dataset version, shard or pair table up
to the source files it came from, and annotates each node with its row count and the rows dropped at
that stage (ingest rejections on a pair table, curate/tokenize rejections on a dataset version), so a
model answers "which files, how many rows, and what was thrown away where".

Row level: `training_rows_sql(model_id)` is one SQL query over the `pipeline.sql` views that takes each
token-level training row of a model's dataset back to the `source_uri` and `source_row` it was read from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.catalog import Artifact, Catalog
from pipeline.workspace import Workspace


class LineageError(KeyError):
    """An id that is not in the catalog, or a prefix that matches several artefacts."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def resolve_id(ws: Workspace, id_or_prefix: str) -> Artifact:
    """The artefact with this id; else the one artefact whose id starts with it (also after `model-`)."""
    catalog = Catalog(ws)
    exact = catalog.get(id_or_prefix)
    if exact is not None:
        return exact
    matches = [
        a for a in catalog.find() if a.id.startswith(id_or_prefix) or a.id.startswith(f"model-{id_or_prefix}")
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LineageError(f"no artefact with id {id_or_prefix!r} in the catalog {catalog.path}")
    shown = ", ".join(a.id for a in matches[:5])
    raise LineageError(
        f"id prefix {id_or_prefix!r} matches {len(matches)} artefacts ({shown}...); give more of it"
    )


def ancestry(ws: Workspace, id_or_prefix: str) -> dict[str, Any]:
    """The ancestry tree of an artefact: {id, kind, uri, rows, relation, rejections, ..., parents: [...]}."""
    catalog = Catalog(ws)
    root = resolve_id(ws, id_or_prefix)
    return _node(ws, catalog, root, relation=None, path=())


def _node(
    ws: Workspace, catalog: Catalog, artifact: Artifact, relation: str | None, path: tuple[str, ...]
) -> dict:
    node: dict[str, Any] = {
        "id": artifact.id,
        "kind": artifact.kind,
        "uri": artifact.uri,
        "rows": artifact.rows,
        "relation": relation,
    }
    node.update(_stage_details(ws, artifact))
    parents = []
    for parent_id, parent_relation in catalog.parents(artifact.id):
        if parent_id in path:  # a cycle would be a catalog bug; never loop on it
            continue
        parent = catalog.get(parent_id)
        if parent is None:
            parents.append(
                {"id": parent_id, "kind": None, "relation": parent_relation, "missing": True, "parents": []}
            )
            continue
        parents.append(_node(ws, catalog, parent, parent_relation, (*path, artifact.id)))
    node["parents"] = parents
    return node


def _stage_details(ws: Workspace, artifact: Artifact) -> dict[str, Any]:
    """Row counts and rejections recorded on disk for the stage that made this artefact."""
    if artifact.kind == "pairs" and artifact.id.startswith("pairs-"):
        folder = ws.sources_dir / artifact.id.removeprefix("pairs-")
        details: dict[str, Any] = {"rejections": _rejection_counts(folder / "rejections.parquet")}
        ingest = _read_json(folder / "ingest.json")
        for key in ("source_uri", "rows_read", "rows_kept", "rows_rejected"):
            if key in ingest:
                details[key] = ingest[key]
        return details
    if artifact.kind == "dataset":
        folder = ws.dataset_dir(artifact.id)
        manifest = _read_json(folder / "manifest.json")
        details = {"rejections": _rejection_counts(folder / "rejections.parquet")}
        splits = manifest.get("splits") or {}
        for split in ("train", "eval"):
            if split in splits:
                details[f"{split}_rows"] = splits[split].get("rows")
        if manifest.get("funnel") is not None:
            details["funnel"] = manifest["funnel"]
        return details
    if artifact.kind == "source_file":
        return {key: artifact.meta[key] for key in ("format", "name", "size") if key in artifact.meta}
    return {}


def _rejection_counts(path: Path) -> dict[str, dict[str, int]]:
    """{stage: {reason: rows}} from a rejections.parquet (empty when there is none)."""
    if not path.is_file():
        return {}
    counts = (
        pl.scan_parquet(path)
        .group_by("stage", "reason")
        .agg(pl.len().alias("rows"))
        .sort("stage", "reason")
        .collect()
    )
    result: dict[str, dict[str, int]] = {}
    for stage, reason, rows in counts.iter_rows():
        result.setdefault(stage, {})[reason] = int(rows)
    return result


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def source_files(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """The `source_file` nodes reached from a tree (each once, in the order met)."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any]) -> None:
        if node.get("kind") == "source_file":
            found.setdefault(node["id"], node)
        for parent in node.get("parents", []):
            walk(parent)

    walk(tree)
    return list(found.values())


def training_rows_sql(model_id: str) -> str:
    """SQL (over pipeline.sql views) from each training row of a model back to its source file and row.

    The run's dataset may be a reference-log-prob version of the tokenised one, so the pairs are looked
    up in every dataset version the run's dataset descends from."""
    quoted = model_id.replace("'", "''")
    return f"""
WITH RECURSIVE trained AS (
    SELECT r.dataset_id FROM models m JOIN runs r ON r.run_id = m.run_id WHERE m.model_id = '{quoted}'
),
ancestors(dataset_id) AS (
    SELECT dataset_id FROM trained
    UNION
    SELECT l.parent_id FROM lineage l JOIN ancestors a ON l.child_id = a.dataset_id
    WHERE l.parent_kind = 'dataset'
),
provenance AS (
    SELECT pair_id, any_value(source_uri) AS source_uri, any_value(source_row) AS source_row,
           any_value(source_sha256) AS source_sha256
    FROM pairs_history WHERE dataset_id IN (SELECT dataset_id FROM ancestors) GROUP BY pair_id
)
SELECT s.dataset_id, s.split, s.shard, s.pair_id, p.source_uri, p.source_row, p.source_sha256
FROM shards s JOIN trained t ON s.dataset_id = t.dataset_id JOIN provenance p USING (pair_id)
ORDER BY s.split, p.source_uri, p.source_row
""".strip()


def training_rows(ws: Workspace, model_id: str) -> pl.DataFrame:
    """The rows behind a model, each with `source_uri` and `source_row` (see `training_rows_sql`)."""
    from pipeline.sql import query

    return query(ws, training_rows_sql(resolve_id(ws, model_id).id))
