"""The model page's lineage graph: a ``LineageGraph`` as the geometry of an inline SVG.

Pure: the graph in, rows, dots and paths out; the template (``_lineage.html``) draws them,
so the page needs no script. One row per version, in the order of the CLI's tree: each
upload or import (oldest first) followed by the variants derived from it, indented one
lane per derivation. A derived edge is a solid elbow from parent to child; a succeeding
edge (a later upload, the model's latest version when it arrived) is dashed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry.lineage import LineageGraph, LineageNode

__all__ = ["LineageDrawing", "LineageEdgePath", "LineageRow", "draw_lineage"]

ROW_H = 30
LANE_W = 28
LEFT = 14
TOP = 16
DOT_R = 6
TEXT_GAP = 14
CHAR_W = 7.2  # a generous width per character of the 12px label, for the viewBox
MIN_WIDTH = 480


@dataclass(frozen=True)
class LineageRow:
    node: LineageNode
    x: float
    y: float
    label: str
    detail: str  # the source, for the tooltip and a muted second part of the label

    @property
    def text_x(self) -> float:
        return self.x + TEXT_GAP


@dataclass(frozen=True)
class LineageEdgePath:
    d: str
    kind: str
    tip: str


@dataclass(frozen=True)
class LineageDrawing:
    rows: list[LineageRow]
    edges: list[LineageEdgePath]
    width: float
    height: float

    @property
    def empty(self) -> bool:
        return not self.rows


def draw_lineage(graph: LineageGraph) -> LineageDrawing:
    nodes = {n.version: n for n in graph.nodes}
    derived: dict[int, list[int]] = {}
    for edge in graph.edges:
        if edge.kind == "derived" and edge.child in nodes:
            derived.setdefault(edge.parent, []).append(edge.child)
    children = {child for kids in derived.values() for child in kids}
    order: list[tuple[int, int]] = []  # (version, lane)
    placed: set[int] = set()

    def visit(version: int, lane: int) -> None:
        if version in placed:
            return
        placed.add(version)
        order.append((version, lane))
        for child in sorted(derived.get(version, [])):
            visit(child, lane + 1)

    for version in sorted(nodes):
        if version not in children:
            visit(version, 0)
    for version in sorted(set(nodes) - placed):  # a loop in the rows: still shown, once
        visit(version, 0)

    rows = [
        LineageRow(
            node=nodes[version],
            x=LEFT + lane * LANE_W,
            y=TOP + index * ROW_H,
            label=_label(nodes[version]),
            detail=_detail(nodes[version]),
        )
        for index, (version, lane) in enumerate(order)
    ]
    at = {row.node.version: row for row in rows}
    edges = []
    for edge in graph.edges:
        parent, child = at.get(edge.parent), at.get(edge.child)
        if parent is None or child is None:
            continue
        end_x = child.x - DOT_R if child.x > parent.x else child.x + DOT_R
        d = f"M{parent.x:g} {parent.y + DOT_R:g} V{child.y:g} H{end_x:g}"
        if child.x == parent.x:
            d = f"M{parent.x:g} {parent.y + DOT_R:g} V{child.y - DOT_R:g}"
        verb = "derived from" if edge.kind == "derived" else "uploaded after"
        tip = f"v{child.node.version} {verb} v{parent.node.version}"
        edges.append(LineageEdgePath(d=d, kind=edge.kind, tip=tip))
    longest = max((r.text_x + CHAR_W * len(f"{r.label}  {r.detail}") for r in rows), default=0)
    return LineageDrawing(
        rows=rows,
        edges=edges,
        width=max(MIN_WIDTH, longest + LEFT),
        height=TOP + len(rows) * ROW_H - ROW_H / 2 + DOT_R,
    )


def _label(node: LineageNode) -> str:
    what = f"{node.variant_mode} variant" if node.origin == "variant" else node.origin
    return f"v{node.version} · {what} · {node.status}" + (" · released" if node.released else "")


def _detail(node: LineageNode) -> str:
    if not node.source:
        return ""
    inherited = "" if node.lineage_version == node.version else f" (of v{node.lineage_version})"
    run = f" run {node.run_id[:12]}" if node.run_id else ""
    return f"{node.source}{run}{inherited}"
