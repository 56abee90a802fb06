"""Desired state in bulk: a wave's deployments signed at once, acknowledgements marked at
once, on SQLite and PostgreSQL; the same rows and sequences as one device at a time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi import FastAPI
from sqlmodel import Session

from controller.db import session_scope
from controller.devices.desired import (
    mark_published,
    sign_deployment,
    sign_deployments,
    unpublished_messages,
)
from controller.devices.tables import DeviceModelRecord, DeviceRecord
from controller.errors import NotFoundError
from controller.registry.tables import ReleaseRecord
from protocol import Deployment, Envelope, verify_document
from tests.controller.conftest import ctx
from tests.controller.fleet_fixtures import add_devices, add_release

NOW = datetime(2030, 1, 1, tzinfo=UTC)
PREFIX = "edgefleet/v1"


def sign_one(app: FastAPI, device_id: str, release: ReleaseRecord) -> int:
    context = ctx(app)
    with session_scope(context.engine) as session:
        return sign_deployment(
            session,
            device_id=device_id,
            release=release,
            signer=context.signer,
            now=NOW,
            ttl_s=3600,
            rollout_id=None,
        )


def sign_all(app: FastAPI, device_ids: list[str], release: ReleaseRecord) -> dict[str, int]:
    context = ctx(app)
    with session_scope(context.engine) as session:
        return sign_deployments(
            session,
            device_ids=device_ids,
            release=release,
            signer=context.signer,
            now=NOW,
            ttl_s=3600,
            rollout_id="ro-1",
        )


def test_batch_signing_gives_each_device_its_own_next_sequence(app: FastAPI) -> None:
    context = ctx(app)
    release = add_release(context, "digits", 1)
    devices = add_devices(context.engine, 3)
    first = sign_one(app, devices[1], release)

    sequences = sign_all(app, devices, release)

    assert sequences == {devices[0]: 1, devices[1]: first + 1, devices[2]: 1}
    with Session(context.engine) as session:
        for device_id, sequence in sequences.items():
            device = session.get(DeviceRecord, device_id)
            row = session.get(DeviceModelRecord, (device_id, "digits"))
            assert device is not None
            assert row is not None
            assert row.desired_envelope is not None
            assert (device.desired_sequence, device.next_deployment_sequence) == (
                sequence,
                sequence + 1,
            )
            assert (row.desired_sequence, row.desired_release_id) == (sequence, release.id)
            deployment = verify_document(
                Envelope.from_bytes(row.desired_envelope.encode()),
                Deployment,
                context.signer.trust_root,
            )
            assert (deployment.device_id, deployment.sequence) == (device_id, sequence)
            assert deployment.rollout_id == "ro-1"


def test_batch_signing_refuses_an_unknown_device_and_signs_nothing(app: FastAPI) -> None:
    context = ctx(app)
    release = add_release(context, "digits", 1)
    devices = add_devices(context.engine, 2)

    with pytest.raises(NotFoundError, match="ghost"):
        sign_all(app, [*devices, "ghost"], release)

    with Session(context.engine) as session:
        assert all(session.get(DeviceModelRecord, (d, "digits")) is None for d in devices)


def test_mark_published_marks_every_acknowledged_state_but_not_a_newer_one(
    app: FastAPI,
) -> None:
    context = ctx(app)
    release = add_release(context, "digits", 1)
    devices = add_devices(context.engine, 3)
    sign_all(app, devices, release)
    with session_scope(context.engine) as session:
        acknowledged = unpublished_messages(session, PREFIX, limit=10)
    assert [m.device_id for m in acknowledged] == devices
    newer = sign_one(app, devices[0], release)  # signed while the broker was acknowledging

    with session_scope(context.engine) as session:
        mark_published(session, acknowledged)

    with session_scope(context.engine) as session:
        due = unpublished_messages(session, PREFIX, limit=10)
    assert [(m.device_id, m.sequence) for m in due] == [(devices[0], newer)]


def test_mark_published_refreshes_rows_the_session_holds(app: FastAPI) -> None:
    context = ctx(app)
    release = add_release(context, "digits", 1)
    [device_id] = add_devices(context.engine, 1)
    sign_all(app, [device_id], release)
    with session_scope(context.engine) as session:
        held = session.get(DeviceRecord, device_id)
        assert held is not None
        assert held.published_sequence is None
        mark_published(session, unpublished_messages(session, PREFIX, limit=10))
        assert held.published_sequence == held.desired_sequence
