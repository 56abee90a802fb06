"""Rows for fleet tests: releases signed with the app's release key, enrolled devices."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sqlalchemy import Engine
from sqlmodel import Session

from controller.context import ControllerContext
from controller.db import session_scope
from controller.devices.tables import DeviceModelRecord, DeviceRecord
from controller.registry.tables import ModelRecord, ModelVersion, ReleaseRecord
from controller.rollouts.engine import FleetContext
from tests.factories import make_release


def add_release(ctx: ControllerContext, model: str, version: int) -> ReleaseRecord:
    """A model version and its signed release, as ``model release`` would store them."""
    artifact = f"{model}:{version}".encode()
    release = make_release(model=model, version=version)
    release = release.model_copy(
        update={
            "artifact": release.artifact.model_copy(
                update={"sha256": hashlib.sha256(artifact).hexdigest(), "length": len(artifact)}
            )
        }
    )
    envelope = release.sign([ctx.signer.release_key])
    with session_scope(ctx.engine) as session:
        if session.get(ModelRecord, model) is None:
            session.add(ModelRecord(name=model, next_version=version + 1))
            session.flush()
        row = ModelVersion(
            model_name=model,
            version=version,
            origin="upload",
            status="registered",
            format="onnx",
            sha256=release.artifact.sha256,
            size_bytes=len(artifact),
            inputs=[],
            outputs=[],
            created_by="test",
        )
        session.add(row)
        session.flush()
        record = ReleaseRecord(
            model_version_id=row.id or 0,
            model_name=model,
            version=version,
            sha256=release.artifact.sha256,
            envelope=envelope.to_bytes().decode(),
            created_by="test",
        )
        session.add(record)
    return record


def add_devices(
    engine: Engine,
    count: int,
    *,
    labels: dict[str, str] | None = None,
    running: ReleaseRecord | Sequence[ReleaseRecord] | None = None,
    online: bool = True,
    prefix: str = "dev",
) -> list[str]:
    """Enrolled devices, each running ``running`` (one release or one per model)."""
    ids = [f"{prefix}-{index:04d}" for index in range(count)]
    releases = [running] if isinstance(running, ReleaseRecord) else list(running or [])
    with session_scope(engine) as session:
        for device_id in ids:
            session.add(
                DeviceRecord(
                    id=device_id,
                    labels=dict(labels or {"site": "berlin"}),
                    mqtt_password_hash="-",
                    online=online,
                )
            )
        session.flush()
        for device_id in ids:
            for release in releases:
                set_running(session, device_id, release)
    return ids


def set_running(session: Session, device_id: str, release: ReleaseRecord) -> None:
    """What ingest stores when the device reports ``release`` committed and serving."""
    row = session.get(DeviceModelRecord, (device_id, release.model_name))
    if row is None:
        row = DeviceModelRecord(device_id=device_id, model_name=release.model_name)
    row.phase = "idle"
    row.active_version = release.version
    row.active_sha256 = release.sha256
    row.last_good_version = release.version
    session.add(row)


def fleet_of(ctx: ControllerContext) -> FleetContext:
    return FleetContext(settings=ctx.settings, engine=ctx.engine, signer=ctx.signer)
