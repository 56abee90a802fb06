"""Everything a request handler needs, built once per app by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from .metrics import Metrics
from .registry.artifact_store import ArtifactStore
from .registry.jobs import JobLimits
from .settings import Settings
from .signing import Signer

__all__ = ["ControllerContext", "FleetStatus"]


@dataclass
class FleetStatus:
    """What the fleet service tells the readiness probe. Written by the service only."""

    # Set when the fleet loops stopped for a reason retrying cannot fix (the broker
    # refused the controller's credentials); /readyz then answers 503 with it.
    not_ready_reason: str | None = None


@dataclass(frozen=True)
class ControllerContext:
    settings: Settings
    engine: Engine
    store: ArtifactStore
    signer: Signer
    metrics: Metrics
    # Reads that need no write lock: GET requests, /metrics, the dashboard, broker auth.
    read_engine: Engine
    fleet_status: FleetStatus = field(default_factory=FleetStatus)

    @property
    def job_limits(self) -> JobLimits:
        return JobLimits(
            memory_bytes=self.settings.job_memory_bytes,
            cpu_s=self.settings.job_cpu_s,
            wall_s=self.settings.job_wall_s,
        )
