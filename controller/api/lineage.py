"""The lineage of a model's versions: which came from which, and from where."""

from __future__ import annotations

from fastapi import APIRouter

from ..registry.lineage import lineage_graph
from ..registry.schemas import LineagePublic
from .deps import DbSession, Viewer
from .models import ModelName

router = APIRouter(prefix="/api/v1", tags=["models"])


@router.get("/models/{name}/lineage")
def get_lineage(name: ModelName, session: DbSession, _caller: Viewer) -> LineagePublic:
    """The model's versions as a graph: nodes (version, origin, variant mode, status,
    released, source and run) and edges parent → child, ``derived`` for a variant made from
    its parent, ``succeeds`` for a later upload or import."""
    return LineagePublic.model_validate(lineage_graph(session, name))
