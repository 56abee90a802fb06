"""Keys that live through years: rotations on the controller reach devices, live.

Found in the security review (the "key lifecycle time bomb"): trust roots expire after 365
days, the controller never put a newer trust root into deployments and loaded its keys
only at start, so a rotation never reached devices and, a year after provisioning, every
device refused every update.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from agent.errors import BadSignatureError, TrustRootExpiredError
from agent.update.trust import verify_deployment
from agent.update.trust_state import TrustState
from controller.db import session_scope
from controller.devices.desired import sign_removal
from controller.devices.tables import DeviceModelRecord, DeviceRecord
from controller.keystore import KeyStore
from controller.mqtt.ingest import apply_states
from controller.tokens import Role as TokenRole
from protocol import Deployment, Envelope, Role
from tests.controller import conftest as controller_fixtures
from tests.controller.conftest import bearer
from tests.controller.devices.test_broker_auth import enroll
from tests.controller.mqtt.test_ingest import state
from tests.controller.ui.conftest import log_in

app, settings, ctx = controller_fixtures.app, controller_fixtures.settings, controller_fixtures.ctx
client, tokens = controller_fixtures.client, controller_fixtures.tokens
PASSPHRASE = controller_fixtures.TEST_PASSPHRASE.encode()
YEAR = timedelta(days=365)


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'controller.db'}"


def rotate_deployment_key(app: FastAPI, *, at: datetime) -> None:
    """``edgefleet keys rotate --role deployment`` on the running controller's keys."""
    KeyStore(ctx(app).settings.keys_dir).rotate(
        Role.DEPLOYMENT, root_passphrase=PASSPHRASE, key_passphrase=PASSPHRASE, now=at
    )


def removal_for(app: FastAPI, device_id: str, *, at: datetime) -> bytes:
    """What the controller signs for the device now, as the device receives it."""
    with session_scope(ctx(app).engine) as session:
        sign_removal(
            session, device_id=device_id, model="digits", signer=ctx(app).signer, now=at, ttl_s=600
        )
    with session_scope(ctx(app).engine) as session:
        row = session.get(DeviceModelRecord, (device_id, "digits"))
        assert row is not None
        assert row.desired_envelope is not None
        return row.desired_envelope.encode()


def test_the_fleet_still_updates_two_years_later_across_two_rotations(app: FastAPI) -> None:
    start = datetime.now(UTC)
    device = enroll(app, "dev-a")
    # The device holds the trust root it was enrolled with (v1, expires in a year).
    state = TrustState.initial(ctx(app).signer.trust_root_envelope.to_bytes())
    assert state.trust_root_version == 1

    rotate_deployment_key(app, at=start + timedelta(days=300))
    rotate_deployment_key(app, at=start + timedelta(days=600))
    assert ctx(app).signer.trust_root.version == 3  # live: no restart

    two_years_on = start + 2 * YEAR
    envelope = removal_for(app, device.device_id, at=two_years_on)
    carried = Deployment.from_payload(Envelope.from_bytes(envelope).payload).trust_roots
    assert len(carried) == 2  # v2 and v3: everything the device has to walk

    verified = verify_deployment(envelope, state, device_id="dev-a", now=two_years_on)
    assert verified.trust_root.version == 3


def test_without_the_carried_chain_the_device_refuses_once_its_root_expired(
    app: FastAPI,
) -> None:
    # What happened before: the same order, stripped of its trust roots, re-signed.
    start = datetime.now(UTC)
    enroll(app, "dev-a")
    state = TrustState.initial(ctx(app).signer.trust_root_envelope.to_bytes())
    rotate_deployment_key(app, at=start + timedelta(days=300))
    two_years_on = start + 2 * YEAR
    envelope = removal_for(app, "dev-a", at=two_years_on)
    deployment = Deployment.from_payload(Envelope.from_bytes(envelope).payload)
    bare = deployment.model_copy(update={"trust_roots": []}).sign([ctx(app).signer.deployment_key])

    # v1 lists neither the new deployment key nor a date after its own expiry.
    with pytest.raises((BadSignatureError, TrustRootExpiredError)):
        verify_deployment(bare.to_bytes(), state, device_id="dev-a", now=two_years_on)


def test_a_device_that_reported_the_newest_root_gets_no_chain(app: FastAPI) -> None:
    start = datetime.now(UTC)
    enroll(app, "dev-a")
    rotate_deployment_key(app, at=start + timedelta(days=300))
    with session_scope(ctx(app).engine) as session:
        record = session.get(DeviceRecord, "dev-a")
        assert record is not None
        record.reported_state = {"trust_root_version": 2}
        session.add(record)
    envelope = removal_for(app, "dev-a", at=start + timedelta(days=301))
    assert Deployment.from_payload(Envelope.from_bytes(envelope).payload).trust_roots == []


def test_a_trust_root_near_expiry_is_shown_on_the_device_and_flagged_on_its_page(
    app: FastAPI, client: TestClient, tokens: dict[TokenRole, str]
) -> None:
    now = datetime.now(UTC)
    enroll(app, "dev-a")
    expires = now + timedelta(days=10, hours=1)
    reported = state("dev-a", now, trust_root_version=1, trust_root_expires_at=expires)
    assert apply_states(ctx(app).engine, [("dev-a", reported)], now=now) == 1

    device = client.get("/api/v1/devices/dev-a", headers=bearer(tokens[TokenRole.VIEWER])).json()
    assert device["trust_root_version"] == 1
    assert datetime.fromisoformat(device["trust_root_expires_at"]) == expires
    log_in(client, tokens[TokenRole.VIEWER])
    assert "expires in 10 days" in client.get("/ui/devices/dev-a").text
