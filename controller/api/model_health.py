"""Each release's fleet health over time (``controller.monitoring.series``).

``GET /api/v1/models/{name}/health?range=1h[&version=N]``: 60 buckets over the range,
per release: requests, error and non-finite rates, p95 latency, mean confidence, output
and input drift, labeled accuracy, pooled over the fleet like the rollout gates and the
alerts; and the model's alert episodes in the range. A range other than ``1h``, ``6h``,
``24h`` or ``7d`` is a 400, an unknown model a 404.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query

from ..context import ControllerContext
from ..errors import NotFoundError
from ..monitoring.series import HealthSeries, model_health_series
from ..registry.tables import ModelRecord
from ..rollouts.references import release_reference_profile
from .deps import Context, DbSession, Viewer

__all__ = ["model_health", "router"]

router = APIRouter(prefix="/api/v1", tags=["models"])

ModelName = Annotated[str, Path(max_length=128)]


def model_health(
    ctx: ControllerContext,
    *,
    model: str,
    range_name: str,
    version: int | None = None,
    now: datetime | None = None,
) -> HealthSeries:
    """The series for ``model`` read through the context's read engine, drift against
    each release's reference profile in the artifact store."""
    engine, artifacts_dir = ctx.read_engine, ctx.settings.artifacts_dir
    return model_health_series(
        engine,
        model=model,
        range_name=range_name,
        version=version,
        now=now or datetime.now(UTC),
        reference_of=lambda each: release_reference_profile(
            engine, artifacts_dir, model=model, version=each
        ),
    )


@router.get("/models/{name}/health")
def get_model_health(
    name: ModelName,
    session: DbSession,
    ctx: Context,
    _caller: Viewer,
    range_name: Annotated[str, Query(alias="range", max_length=16)] = "1h",
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> HealthSeries:
    """Each release's fleet health over ``range``, in 60 buckets, with the alert episodes."""
    if session.get(ModelRecord, name) is None:
        raise NotFoundError(f"no model {name!r}")
    return model_health(ctx, model=name, range_name=range_name, version=version)
