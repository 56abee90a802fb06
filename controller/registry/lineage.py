"""The lineage of a model's versions: which version came from which, and from where.

Every version but a model's first keeps a ``parent_id``. Two kinds of edge follow from the
child's origin: a variant was **derived** from its parent (a converter made it from the
parent's artifact); an upload or an import **succeeds** its parent (the model's latest
version when it arrived: a new model, not made from the old one). A version's source
(upload, MLflow run, ...) is its own ``lineage`` or, for a variant, its root's: the
nearest ancestor that is not a variant.

Invariants: the graph is built from the rows alone and never loops (a walk up the parents
stops at a version it has seen or after ``MAX_CHAIN`` steps); nodes come oldest first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from .models import list_versions
from .provenance import effective_lineage
from .tables import ModelVersion, ReleaseRecord

__all__ = [
    "MAX_CHAIN",
    "LineageEdge",
    "LineageGraph",
    "LineageNode",
    "derivation_chain",
    "lineage_graph",
    "lineage_graph_of",
]

# Variants of variants of …: deeper than this is a loop or a bug, not a lineage.
MAX_CHAIN = 64


@dataclass(frozen=True)
class LineageNode:
    version: int
    origin: str
    variant_mode: str | None
    status: str
    released: bool
    sha256: str
    created_by: str
    created_at: datetime
    # The version whose lineage this one carries (itself, or a variant's root), and from it:
    lineage_version: int
    source: str | None
    source_uri: str | None
    run_id: str | None
    experiment: str | None


@dataclass(frozen=True)
class LineageEdge:
    parent: int
    child: int
    kind: str  # "derived" (a variant of its parent) or "succeeds" (a later upload/import)


@dataclass(frozen=True)
class LineageGraph:
    model: str
    nodes: list[LineageNode]
    edges: list[LineageEdge]

    def children_of(self, version: int, kind: str | None = None) -> list[int]:
        return [e.child for e in self.edges if e.parent == version and kind in (None, e.kind)]


def derivation_chain(session: Session, row: ModelVersion) -> list[ModelVersion]:
    """``row``'s parent, grandparent, … up to its root (the first that is not a variant).

    Empty for an upload or an import: they were derived from nothing.
    """
    return _walk(row, lambda parent_id: session.get(ModelVersion, parent_id))


def lineage_graph(session: Session, name: str) -> LineageGraph:
    """The lineage graph of model ``name``; ``NotFoundError`` when there is no such model."""
    rows = list_versions(session, name)
    released = set(
        session.exec(
            select(ReleaseRecord.model_version_id).where(ReleaseRecord.model_name == name)
        ).all()
    )
    return lineage_graph_of(name, rows, released_ids=released)


def lineage_graph_of(
    name: str, rows: Sequence[ModelVersion], *, released_ids: set[int]
) -> LineageGraph:
    """The graph of ``rows`` (one model's versions); pure."""
    by_id: dict[int | None, ModelVersion] = {row.id: row for row in rows}
    nodes, edges = [], []
    for row in sorted(rows, key=lambda r: r.version):
        chain = _walk(row, by_id.get)
        root, lineage = effective_lineage(row, chain)
        lineage = lineage or {}
        nodes.append(
            LineageNode(
                version=row.version,
                origin=row.origin,
                variant_mode=row.variant_mode,
                status=row.status,
                released=row.id in released_ids,
                sha256=row.sha256,
                created_by=row.created_by,
                created_at=row.created_at,
                lineage_version=root.version,
                # A variant whose root is lost (its parent deleted) has no known source.
                source=_str(lineage.get("source"))
                or (root.origin if root.origin != "variant" else None),
                source_uri=_str(lineage.get("source_uri")),
                run_id=_str(lineage.get("run_id")),
                experiment=_str(lineage.get("experiment")),
            )
        )
        parent = by_id.get(row.parent_id)
        if parent is not None:
            kind = "derived" if row.origin == "variant" else "succeeds"
            edges.append(LineageEdge(parent=parent.version, child=row.version, kind=kind))
    return LineageGraph(model=name, nodes=nodes, edges=edges)


def _walk(row: ModelVersion, parent_of: Callable[[int], ModelVersion | None]) -> list[ModelVersion]:
    chain: list[ModelVersion] = []
    seen = {row.id}
    current = row
    while current.origin == "variant" and current.parent_id is not None:
        parent = parent_of(current.parent_id)
        if parent is None or parent.id in seen or len(chain) >= MAX_CHAIN:
            break
        chain.append(parent)
        seen.add(parent.id)
        current = parent
    return chain


def _str(value: Any) -> str | None:
    return None if value is None or isinstance(value, (dict, list)) else str(value)[:256]
