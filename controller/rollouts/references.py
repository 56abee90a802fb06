"""The reference profile of a release, for the drift a group of devices reports.

Devices count their live values in the bins of the release's reference profile (in its
check bundle) and send the counts; the controller adds the counts of a group up and reads
one PSI against the same profile (``health.fleet_health``). The profile is read from the
check bundle in the artifact store, once per bundle: bundles are content-addressed, so a
cached profile never goes stale.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, select

from protocol import Envelope, ProtocolError, ReferenceProfile
from tensors import CheckBundleError, read_reference_profile

from ..registry.artifact_store import ArtifactStore
from ..registry.tables import ReleaseRecord

__all__ = ["release_reference_profile"]

logger = logging.getLogger(__name__)

MAX_CACHED_PROFILES = 64


def release_reference_profile(
    engine: Engine, artifacts_dir: Path, *, model: str, version: int
) -> ReferenceProfile | None:
    """The reference profile of release ``model:version``; None when the release, its
    check bundle or the profile in it cannot be read (drift then falls back to what the
    devices judged themselves)."""
    with Session(engine) as session:
        envelope = session.exec(
            select(ReleaseRecord.envelope).where(
                ReleaseRecord.model_name == model, ReleaseRecord.version == version
            )
        ).first()
    if envelope is None:
        return None
    try:
        payload = json.loads(Envelope.from_bytes(envelope.encode("utf-8")).payload)
        bundle_sha256 = payload["check_bundle"]["sha256"]
    except (ProtocolError, ValueError, KeyError, TypeError) as exc:
        logger.warning("release %s:%s names no readable check bundle: %s", model, version, exc)
        return None
    if not isinstance(bundle_sha256, str):
        return None
    return _profile_in_bundle(str(ArtifactStore(artifacts_dir).path_for(bundle_sha256)))


@functools.lru_cache(maxsize=MAX_CACHED_PROFILES)
def _cached_profile(path: str) -> ReferenceProfile | None:
    return read_reference_profile(Path(path))


def _profile_in_bundle(path: str) -> ReferenceProfile | None:
    # A failure is not cached: a bundle that is not on this replica's disk yet may be later.
    try:
        return _cached_profile(path)
    except (CheckBundleError, OSError) as exc:
        logger.warning("no reference profile in %s: %s", path, exc)
        return None
