"""Everything a request handler needs, built once per app by ``create_app``.

Invariant: the data directory is private to the controller's user (0700) once a context
exists: it holds the database, the signing keys (and, in development, their passphrase)
and every uploaded model and validation set. ``prepare_data_dir`` creates it (and the key
directory in it) so, and tightens one that others may enter, with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import Engine

from .ca import CertificateAuthority
from .db import make_private
from .metrics import Metrics
from .registry.artifact_store import ArtifactStore
from .registry.jobs import JobLimits
from .registry.released_artifacts import ReleasedArtifacts
from .settings import Settings
from .signing import Signer

__all__ = ["DATA_DIR_MODE", "ControllerContext", "FleetStatus", "prepare_data_dir"]

logger = logging.getLogger(__name__)

DATA_DIR_MODE = 0o700


def prepare_data_dir(settings: Settings) -> None:
    """Create the data directory and its parts, private; make existing ones private."""
    for directory in (settings.data_dir, settings.keys_dir):
        directory.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
        make_private(directory)
    for directory in (settings.artifacts_dir, settings.work_dir):
        directory.mkdir(mode=DATA_DIR_MODE, exist_ok=True)


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
    # What device tokens may download; filled lazily from the releases table.
    released_artifacts: ReleasedArtifacts = field(default_factory=ReleasedArtifacts)
    # The CA that issues device certificates at enrollment; None with TLS off.
    authority: CertificateAuthority | None = None

    def __post_init__(self) -> None:
        # The app factory may have created the directories with the umask's mode.
        prepare_data_dir(self.settings)

    @property
    def job_limits(self) -> JobLimits:
        return JobLimits(
            memory_bytes=self.settings.job_memory_bytes,
            cpu_s=self.settings.job_cpu_s,
            wall_s=self.settings.job_wall_s,
        )
