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

NODE_W, NODE_H, GAP_X, GAP_Y, PAD, WAYPOINT_H = 212, 50, 76, 18, 12, 8
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


def _short(text: str, limit: int = 30) -> str:
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


def _depths(nodes: dict[str, Node]) -> dict[str, int]:
    """A node's column: one right of its furthest parent (sources in column 0)."""
    depth: dict[str, int] = {}

    def level(node_id: str, trail: frozenset[str] = frozenset()) -> int:
        if node_id not in depth:
            parents = [p for p, _ in nodes[node_id].parents if p in nodes and p not in trail]
            depth[node_id] = 1 + max((level(p, trail | {node_id}) for p in parents), default=-1)
        return depth[node_id]

    for node_id in nodes:
        level(node_id)
    return depth


@dataclass
class Edge:
    """One arrow: parent to child through the columns between them (`via`: a waypoint per column)."""

    parent: str
    child: str
    label: str
    via: list[str] = field(default_factory=list)


def edges(nodes: dict[str, Node]) -> list[Edge]:
    """One edge per (parent, child): two relations between the same artefacts (the SFT model is base
    and reference) are one arrow with both names."""
    joined: dict[tuple[str, str], list[str]] = {}
    for node in nodes.values():
        for parent, relation in node.parents:
            if parent in nodes:
                joined.setdefault((parent, node.id), []).append(relation)
    return [Edge(p, c, ", ".join(names)) for (p, c), names in joined.items()]


def layers(nodes: dict[str, Node], arrows: list[Edge] | None = None) -> list[list[str]]:
    """Columns of node ids. An edge that spans several columns gets a waypoint ("~<n>") in each column
    it crosses, which takes a place there (Sugiyama's dummy nodes), so no arrow runs through a box.
    Each column is ordered by the mean row of what leads into it (a barycentre pass)."""
    depth = _depths(nodes)
    columns: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node_id in sorted(nodes):
        columns[depth[node_id]].append(node_id)
    before: dict[str, list[str]] = {n: [p for p, _ in nodes[n].parents if p in nodes] for n in nodes}
    for index, edge in enumerate(arrows or []):
        previous = edge.parent
        for column in range(depth[edge.parent] + 1, depth[edge.child]):
            waypoint = f"~{index}-{column}"
            columns[column].append(waypoint)
            before[waypoint] = [previous]
            edge.via.append(waypoint)
            previous = waypoint
        before[edge.child] = [previous if p == edge.parent else p for p in before[edge.child]]
    row: dict[str, float] = {n: i for i, n in enumerate(columns[0])} if columns else {}
    for column in columns[1:]:

        def key(item: str) -> tuple[float, str]:
            rows = [row[p] for p in before[item] if p in row]
            return (sum(rows) / len(rows) if rows else 0.0, item)

        column.sort(key=key)
        row.update({n: i for i, n in enumerate(column)})
    return columns


def _positions(columns: list[list[str]]) -> tuple[dict[str, tuple[float, float, float]], float, float]:
    """(x, y, height) of every box and waypoint, the columns centred on the tallest; and the size."""

    def height(item: str) -> float:
        return WAYPOINT_H if item.startswith("~") else NODE_H

    sizes = [sum(height(i) for i in c) + GAP_Y * (len(c) - 1) for c in columns]
    tallest = max(sizes, default=0.0)
    where = {}
    for x_index, (column, size) in enumerate(zip(columns, sizes, strict=True)):
        y = PAD + (tallest - size) / 2
        for item in column:
            where[item] = (PAD + x_index * (NODE_W + GAP_X), y, height(item))
            y += height(item) + GAP_Y
    width = PAD * 2 + len(columns) * NODE_W + (len(columns) - 1) * GAP_X
    return where, width, PAD * 2 + tallest


def svg(trees: Sequence[dict[str, Any]]) -> str:
    """The merged lineage as an inline <svg> element ("" when there is none); it scales down to the
    page's width."""
    nodes = merge(trees)
    if not nodes:
        return ""
    arrows = edges(nodes)
    where, width, height = _positions(layers(nodes, arrows))
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' class='lineage' width='100%' style='max-width:{width:.0f}px' "
        f"viewBox='0 0 {width:.0f} {height:.0f}' role='img' aria-label='lineage graph'>",
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='7' markerHeight='7' "
        "orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z' fill='#94a3b8'/></marker></defs>",
    ]
    parts += [_edge(edge, where) for edge in arrows]
    parts += [_node(node, *where[node.id][:2]) for node in nodes.values()]
    parts.append("</svg>")
    return "\n".join(parts)


def _middle(box: tuple[float, float, float], side: str) -> tuple[float, float]:
    x, y, h = box
    return (x + NODE_W if side == "right" else x), y + h / 2


def _edge(edge: Edge, where: dict[str, tuple[float, float, float]]) -> str:
    """A curve from the parent's right side to the child's left, straight through each waypoint."""
    x, y = _middle(where[edge.parent], "right")
    path = [f"M {x:.0f} {y:.0f}"]
    label = None
    for item in [*edge.via, edge.child]:
        x2, y2 = _middle(where[item], "left")
        bend = max(30.0, (x2 - x) / 2)
        path.append(f"C {x + bend:.0f} {y:.0f}, {x2 - bend:.0f} {y2:.0f}, {x2:.0f} {y2:.0f}")
        label = label or ((x + x2) / 2, (y + y2) / 2 - 3)
        x, y = _middle(where[item], "right")
        if item != edge.child:
            path.append(f"L {x:.0f} {y:.0f}")
    return (
        f"<path d='{' '.join(path)}' fill='none' stroke='#94a3b8' stroke-width='1.3' marker-end='url(#arrow)'/>"
        f"<text x='{label[0]:.0f}' y='{label[1]:.0f}' font-size='9' fill='#64748b' text-anchor='middle'>"
        f"{html.escape(edge.label)}</text>"
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
        f"<text x='{x + 14:.0f}' y='{y + 43:.0f}' font-size='9.5' fill='#475569'>{e(_short(node.detail, 38))}</text></g>"
    )
