"""The reconciler renews deployments devices have not taken yet, and only those."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from sqlmodel import Session, select

from controller.db import session_scope
from controller.devices.desired import sign_deployment, sign_removal
from controller.devices.reconciler import renew_expiring_deployments
from controller.devices.tables import DeviceModelRecord
from controller.registry.tables import ReleaseRecord
from tests.controller.conftest import ctx
from tests.controller.fleet_fixtures import add_devices, add_release, fleet_of

NOW = datetime(2030, 3, 1, tzinfo=UTC)


def desired(app: FastAPI, device_id: str, model: str = "digits") -> DeviceModelRecord:
    with Session(ctx(app).engine) as session:
        row = session.get(DeviceModelRecord, (device_id, model))
        assert row is not None
        return row


def report(app: FastAPI, device_id: str, model: str, **fields: object) -> None:
    """What ingest stores from the device's state entry for ``model``."""
    with session_scope(ctx(app).engine) as session:
        row = session.exec(
            select(DeviceModelRecord).where(
                DeviceModelRecord.device_id == device_id, DeviceModelRecord.model_name == model
            )
        ).one()
        for name, value in fields.items():
            setattr(row, name, value)
        session.add(row)


def sign(app: FastAPI, device_id: str, release: ReleaseRecord, *, at: datetime) -> int:
    context = ctx(app)
    with session_scope(context.engine) as session:
        return sign_deployment(
            session,
            device_id=device_id,
            release=release,
            signer=context.signer,
            now=at,
            ttl_s=context.settings.deployment_ttl_s,
            rollout_id=None,
        )


def test_a_deployment_not_taken_is_signed_again_before_it_expires(app: FastAPI) -> None:
    context = ctx(app)
    release = add_release(context, "digits", 1)
    [device_id] = add_devices(context.engine, 1)
    ttl = timedelta(seconds=context.settings.deployment_ttl_s)
    sign(app, device_id, release, at=NOW - ttl * 0.6)

    renewed = renew_expiring_deployments(fleet_of(context), now=NOW)

    device = desired(app, device_id)
    assert renewed == 1
    assert device.desired_sequence == 2
    assert device.desired_expires_at is not None
    # SQLite hands back naive datetimes; every stored time is UTC.
    assert device.desired_expires_at.replace(tzinfo=UTC) == NOW + ttl
    assert device.desired_release_id == release.id


def test_a_deployment_with_time_left_is_left_alone(app: FastAPI) -> None:
    context = ctx(app)
    release = add_release(context, "digits", 1)
    [device_id] = add_devices(context.engine, 1)
    sign(app, device_id, release, at=NOW - timedelta(hours=1))

    assert renew_expiring_deployments(fleet_of(context), now=NOW) == 0
    assert desired(app, device_id).desired_sequence == 1


def test_a_deployment_the_device_accepted_is_never_renewed(app: FastAPI) -> None:
    """A fresh sequence would make the device install the release again."""
    context = ctx(app)
    release = add_release(context, "digits", 1)
    [device_id] = add_devices(context.engine, 1)
    ttl = timedelta(seconds=context.settings.deployment_ttl_s)
    sequence = sign(app, device_id, release, at=NOW - ttl * 0.9)
    report(app, device_id, "digits", phase="idle", reported_sequence=sequence)

    assert renew_expiring_deployments(fleet_of(context), now=NOW) == 0
    assert desired(app, device_id).desired_sequence == sequence


def test_only_the_model_the_device_has_not_taken_is_renewed(app: FastAPI) -> None:
    context = ctx(app)
    digits = add_release(context, "digits", 1)
    cats = add_release(context, "cats", 1)
    [device_id] = add_devices(context.engine, 1)
    ttl = timedelta(seconds=context.settings.deployment_ttl_s)
    taken = sign(app, device_id, digits, at=NOW - ttl * 0.9)
    sign(app, device_id, cats, at=NOW - ttl * 0.9)
    report(app, device_id, "digits", phase="idle", reported_sequence=taken)

    assert renew_expiring_deployments(fleet_of(context), now=NOW) == 1
    assert desired(app, device_id, "digits").desired_sequence == taken
    assert desired(app, device_id, "cats").desired_sequence == 3
    assert desired(app, device_id, "cats").desired_release_id == cats.id


def test_a_removal_is_renewed_only_while_the_device_still_lists_the_model(
    app: FastAPI,
) -> None:
    context = ctx(app)
    [device_id] = add_devices(context.engine, 1)
    ttl = timedelta(seconds=context.settings.deployment_ttl_s)
    with session_scope(context.engine) as session:
        sign_removal(
            session,
            device_id=device_id,
            model="digits",
            signer=context.signer,
            now=NOW - ttl * 0.9,
            ttl_s=context.settings.deployment_ttl_s,
        )
    assert renew_expiring_deployments(fleet_of(context), now=NOW) == 0  # not listed

    report(app, device_id, "digits", phase="idle", active_version=1)
    assert renew_expiring_deployments(fleet_of(context), now=NOW) == 1
    row = desired(app, device_id)
    assert (row.desired_remove, row.desired_sequence, row.desired_release_id) == (True, 2, None)
