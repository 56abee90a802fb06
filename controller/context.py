"""Everything a request handler needs, built once per app by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from .metrics import Metrics
from .registry.artifact_store import ArtifactStore
from .registry.jobs import JobLimits
from .settings import Settings
from .signing import Signer

__all__ = ["ControllerContext"]


@dataclass(frozen=True)
class ControllerContext:
    settings: Settings
    engine: Engine
    store: ArtifactStore
    signer: Signer
    metrics: Metrics
    # Reads that need no write lock: GET requests, /metrics, the dashboard, broker auth.
    read_engine: Engine

    @property
    def job_limits(self) -> JobLimits:
        return JobLimits(
            memory_bytes=self.settings.job_memory_bytes,
            cpu_s=self.settings.job_cpu_s,
            wall_s=self.settings.job_wall_s,
        )
