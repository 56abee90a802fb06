"""Signed desired state through a real broker (Mosquitto and the embedded amqtt).

The broker is transport, not trust: a retained deployment reaches a device that connects
later and verifies there, and a copy forged by any other client fails verification.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from protocol import (
    BadSignatureError,
    Channel,
    Deployment,
    Envelope,
    KeyNotInRoleError,
    ProtocolError,
    Release,
    Role,
    SigningKey,
    device_topic,
    verify_document,
)
from tests.brokers import BrokerEndpoint
from tests.factories import Keyring, make_deployment, make_release
from tests.mqtt_client import TestClient

DEVICE = "cam-berlin-0001"


def signed_deployment(keyring: Keyring) -> Envelope:
    release = keyring.sign(make_release(), Role.RELEASE)
    return keyring.sign(make_deployment(release, device_id=DEVICE), Role.DEPLOYMENT)


def receive_desired(broker: BrokerEndpoint, topic: str) -> bytes:
    """Connect as the device after the fact and take the retained desired state."""
    with TestClient(broker, client_id=DEVICE) as device:
        device.subscribe(topic)
        message = device.receive()
        assert message.retain, "desired state must arrive as a retained message"
        return bytes(message.payload)


def verify_desired(payload: bytes, keyring: Keyring) -> Deployment:
    deployment = verify_document(Envelope.from_bytes(payload), Deployment, keyring.trust_root())
    verify_document(deployment.release_envelope(), Release, keyring.trust_root())
    return deployment


def test_retained_deployment_reaches_a_late_subscriber_and_verifies(
    broker: BrokerEndpoint, topic_prefix: str, keyring: Keyring
) -> None:
    topic = device_topic(topic_prefix, DEVICE, Channel.DESIRED)
    envelope = signed_deployment(keyring)
    with TestClient(broker, client_id="controller") as controller:
        controller.publish(topic, envelope.to_bytes(), retain=True)

    deployment = verify_desired(receive_desired(broker, topic), keyring)

    assert deployment.device_id == DEVICE
    assert deployment.sequence == 7


@pytest.mark.parametrize("forgery", ["tampered", "attacker_key", "release_key_only"])
def test_forged_desired_state_from_another_client_fails_verification(
    broker: BrokerEndpoint, topic_prefix: str, keyring: Keyring, forgery: str
) -> None:
    topic = device_topic(topic_prefix, DEVICE, Channel.DESIRED)
    genuine = signed_deployment(keyring)
    with TestClient(broker, client_id="controller") as controller:
        controller.publish(topic, genuine.to_bytes(), retain=True)

    forged = forge(genuine, keyring, forgery)
    with TestClient(broker, client_id="intruder") as intruder:
        intruder.publish(topic, forged.to_bytes(), retain=True)

    received = receive_desired(broker, topic)
    assert received == forged.to_bytes()  # the broker delivered the forgery...
    with pytest.raises(ProtocolError) as refused:  # ...and the device refuses it
        verify_desired(received, keyring)
    expected = BadSignatureError if forgery == "tampered" else KeyNotInRoleError
    assert isinstance(refused.value, expected)


def forge(genuine: Envelope, keyring: Keyring, forgery: str) -> Envelope:
    deployment = json.loads(genuine.payload)
    deployment["sequence"] = 1000
    if forgery == "tampered":
        return dataclasses.replace(genuine, payload=json.dumps(deployment).encode())
    document = Deployment.from_json_obj(deployment)
    if forgery == "attacker_key":
        return document.sign([SigningKey.generate()])
    # The release key may sign releases, never deployments.
    return document.sign(keyring.keys[Role.RELEASE])
