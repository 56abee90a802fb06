"""Rows for fleet tests: releases signed with the app's release key, enrolled devices."""

from __future__ import annotations

import hashlib

from sqlalchemy import Engine

from controller.context import ControllerContext
from controller.db import session_scope
from controller.devices.tables import DeviceRecord
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
    running: ReleaseRecord | None = None,
    online: bool = True,
    prefix: str = "dev",
) -> list[str]:
    ids = [f"{prefix}-{index:04d}" for index in range(count)]
    with session_scope(engine) as session:
        for device_id in ids:
            session.add(
                DeviceRecord(
                    id=device_id,
                    labels=dict(labels or {"site": "berlin"}),
                    mqtt_password_hash="-",
                    online=online,
                    active_model=None if running is None else running.model_name,
                    active_version=None if running is None else running.version,
                    active_sha256=None if running is None else running.sha256,
                )
            )
    return ids


def fleet_of(ctx: ControllerContext) -> FleetContext:
    return FleetContext(
        settings=ctx.settings, engine=ctx.engine, deployment_key=ctx.signer.deployment_key
    )
