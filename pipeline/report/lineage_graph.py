"""The lineage of the report's runs as one drawn graph: each artefact once, an arrow per catalog edge.

`pipeline.lineage.ancestry` returns a tree per run, in which an artefact reached along two paths (the
SFT model is both base and reference; the pair table feeds the tokenizer and the build) appears as
often as it is reached. Here the trees are merged into a DAG (nodes by id, edges by (parent, child,
relation)) and drawn as inline SVG: columns by longest path from the sources, rows ordered by the
mean row of their parents (a barycentre pass), edges as curves labelled with their relation.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 236, 50, 74, 22, 16
KIND_COLOURS = {
    "source_file": "#64748b",
    "pairs": "#0f766e",
    "dataset": "#1d4ed8",
    "model": "#7c3aed",
    "run": "#b45309",
    "eval": "#be123c",
}


@dataclass
class Node:
    id: str
    kind: str
    title: str
    detail: str
    parents: list[tuple[str, str]] = field(default_factory=list)  # (parent id, relation)


def _short(text: str, limit: int = 34) -> str:
    return text if len(text) <= limit else f"{text[: limit // 2 - 1]}…{text[-(limit // 2 - 1) :]}"


def _describe(tree: dict[str, Any]) -> tuple[str, str]:
    """(title, detail line) of a node: a source file by its name, others by id; rows and drops."""
    uri = tree.get("source_uri") or tree.get("uri") or ""
    title = PurePosixPath(str(uri)).name if tree.get("kind") == "source_file" and uri else tree["id"]
    details = []
    if tree.get("rows") is not None:
        details.append(f"{tree['rows']:,} rows")
    dropped = sum(n for reasons in (tree.get("rejections") or {}).values() for n in reasons.values())
    if dropped:
        details.append(f"{dropped:,} rejected")
    for key in ("train_rows", "eval_rows"):
        if tree.get(key) is not None:
            details.append(f"{key.split('_')[0]} {tree[key]:,}")
    if tree.get("missing"):
        details.append("not in catalog")
    return title, " · ".join(details)


def merge(trees: Sequence[dict[str, Any]]) -> dict[str, Node]:
    """Every artefact of the trees once, with its distinct parent edges."""
    nodes: dict[str, Node] = {}

    def visit(tree: dict[str, Any]) -> None:
        node = nodes.get(tree["id"])
        if node is None:
            title, detail = _describe(tree)
            node = nodes[tree["id"]] = Node(tree["id"], tree.get("kind") or "?", title, detail)
        for parent in tree.get("parents") or []:
            edge = (parent["id"], parent.get("relation") or "")
            if edge not in node.parents:
                node.parents.append(edge)
            visit(parent)

    for tree in trees:
        visit(tree)
    return nodes


def layers(nodes: dict[str, Node]) -> list[list[str]]:
    """Columns: a node sits one column right of its furthest parent (sources in column 0)."""
    depth: dict[str, int] = {}

    def level(node_id: str, trail: frozenset[str] = frozenset()) -> int:
        if node_id not in depth:
            parents = [p for p, _ in nodes[node_id].parents if p in nodes and p not in trail]
            depth[node_id] = 1 + max((level(p, trail | {node_id}) for p in parents), default=-1)
        return depth[node_id]

    for node_id in nodes:
        level(node_id)
    columns: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node_id in sorted(nodes):
        columns[depth[node_id]].append(node_id)
    # Barycentre ordering: each column sorted by the mean row of its parents, fewer crossings.
    row: dict[str, float] = {n: i for i, n in enumerate(columns[0])} if columns else {}
    for column in columns[1:]:

        def key(node_id: str) -> tuple[float, str]:
            rows = [row[p] for p, _ in nodes[node_id].parents if p in row]
            return (sum(rows) / len(rows) if rows else 0.0, node_id)

        column.sort(key=key)
        row.update({n: i for i, n in enumerate(column)})
    return columns


def svg(trees: Sequence[dict[str, Any]]) -> str:
    """The merged lineage as an inline <svg> element ("" when there is none)."""
    nodes = merge(trees)
    if not nodes:
        return ""
    columns = layers(nodes)
    tallest = max(len(c) for c in columns)
    width = PAD * 2 + len(columns) * NODE_W + (len(columns) - 1) * GAP_X
    height = PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y
    where: dict[str, tuple[float, float]] = {}
    for x_index, column in enumerate(columns):
        offset = (tallest - len(column)) * (NODE_H + GAP_Y) / 2  # centre short columns
        for y_index, node_id in enumerate(column):
            where[node_id] = (PAD + x_index * (NODE_W + GAP_X), PAD + offset + y_index * (NODE_H + GAP_Y))
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' class='lineage' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' role='img' aria-label='lineage graph'>",
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='7' markerHeight='7' "
        "orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z' fill='#94a3b8'/></marker></defs>",
    ]
    # Two relations between the same pair of artefacts (the SFT model is base and reference) are one
    # arrow with both names.
    edges: dict[tuple[str, str], list[str]] = {}
    for node in nodes.values():
        for parent, relation in node.parents:
            if parent in where:
                edges.setdefault((parent, node.id), []).append(relation)
    parts += [_edge(where[p], where[c], ", ".join(names)) for (p, c), names in edges.items()]
    parts += [_node(node, *where[node.id]) for node in nodes.values()]
    parts.append("</svg>")
    return "\n".join(parts)


def _edge(start: tuple[float, float], end: tuple[float, float], relation: str) -> str:
    x1, y1 = start[0] + NODE_W, start[1] + NODE_H / 2
    x2, y2 = end[0], end[1] + NODE_H / 2
    bend = max(30.0, (x2 - x1) / 2)
    label_x, label_y = (x1 + x2) / 2, (y1 + y2) / 2 - 3
    return (
        f"<path d='M {x1:.0f} {y1:.0f} C {x1 + bend:.0f} {y1:.0f}, {x2 - bend:.0f} {y2:.0f}, {x2:.0f} {y2:.0f}' "
        "fill='none' stroke='#94a3b8' stroke-width='1.3' marker-end='url(#arrow)'/>"
        f"<text x='{label_x:.0f}' y='{label_y:.0f}' font-size='9' fill='#64748b' text-anchor='middle'>"
        f"{html.escape(relation)}</text>"
    )


def _node(node: Node, x: float, y: float) -> str:
    colour = KIND_COLOURS.get(node.kind, "#334155")
    e = html.escape
    return (
        f"<g class='node' data-id='{e(node.id, quote=True)}'><title>{e(node.kind)} {e(node.id)}</title>"
        f"<rect x='{x:.0f}' y='{y:.0f}' width='{NODE_W}' height='{NODE_H}' rx='7' fill='#fff' "
        f"stroke='{colour}' stroke-width='1.6'/>"
        f"<rect x='{x:.0f}' y='{y:.0f}' width='6' height='{NODE_H}' rx='3' fill='{colour}'/>"
        f"<text x='{x + 14:.0f}' y='{y + 15:.0f}' font-size='10' font-weight='600' fill='{colour}'>{e(node.kind)}</text>"
        f"<text x='{x + 14:.0f}' y='{y + 29:.0f}' font-size='10.5' font-family='monospace' fill='#111'>"
        f"{e(_short(node.title))}</text>"
        f"<text x='{x + 14:.0f}' y='{y + 43:.0f}' font-size='9.5' fill='#475569'>{e(_short(node.detail, 44))}</text></g>"
    )
