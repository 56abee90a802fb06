"""Per-device MQTT logins on real brokers: each device only on its own topics.

Messages a broker drops are proven absent by order, not by waiting: the forbidden action
comes first, an allowed one after it, and the allowed one must be the first (and only)
thing that arrives.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest
from amqtt.contexts import Action
from fastapi import FastAPI

from controller.db import session_scope
from controller.devices.broker_auth import (
    controller_mqtt_credentials,
    device_may,
    embedded_broker_config,
    mosquitto_acl,
    write_mosquitto_files,
)
from controller.devices.enrollment import (
    Enrollment,
    create_enrollment_token,
    decommission_device,
    enroll_device,
)
from controller.settings import Settings
from tests.brokers import (
    BrokerEndpoint,
    MosquittoServer,
    free_port,
    run_amqtt,
)
from tests.conftest import mosquitto_binary
from tests.controller.conftest import ctx
from tests.mqtt_client import TestClient

PREFIX = "edgefleet/v1"


class LoginClient(TestClient):
    """The tests' MQTT client, logging in as someone, optionally with a will."""

    __test__ = False

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        username: str | None,
        password: str | None,
        *,
        client_id: str | None = None,
        will_topic: str | None = None,
    ) -> None:
        super().__init__(endpoint, client_id=client_id or username)
        if username is not None:
            self._client.username_pw_set(username, password)
        if will_topic is not None:
            self._client.will_set(will_topic, b"offline", qos=1, retain=True)

    def __enter__(self) -> LoginClient:
        try:
            super().__enter__()
        except BaseException:
            # A refused client would otherwise keep reconnecting in paho's thread.
            self._client.disconnect()
            self._client.loop_stop()
            raise
        return self


def device_client(endpoint: BrokerEndpoint, enrollment: Enrollment) -> LoginClient:
    return LoginClient(endpoint, enrollment.mqtt_username, enrollment.mqtt_password)


def topic(device_id: str, channel: str) -> str:
    return f"{PREFIX}/{device_id}/{channel}"


def enroll(app: FastAPI, device_id: str) -> Enrollment:
    with session_scope(ctx(app).engine) as session:
        token, _row = create_enrollment_token(
            session, labels={}, device_id=device_id, ttl_s=60, actor="test"
        )
    with session_scope(ctx(app).engine) as session:
        return enroll_device(
            session,
            token=token,
            device_id=None,
            settings=ctx(app).settings,
            trust_root_envelope=ctx(app).signer.trust_root_envelope,
        )


def assert_confined(
    controller: TestClient, device_a: TestClient, enrolled_b: Enrollment, a_id: str
) -> None:
    """Device A cannot read B's desired state nor publish as B; its own topics work."""
    b_id = enrolled_b.device_id
    controller.subscribe(f"{PREFIX}/+/state")
    controller.publish(topic(b_id, "desired"), b"for b", retain=True)
    controller.publish(topic(a_id, "desired"), b"for a", retain=True)
    # Mosquitto may grant a wildcard subscription and filter each message by the ACL;
    # amqtt refuses it. Either way only A's own topics may ever arrive.
    for forbidden in (topic(b_id, "desired"), f"{PREFIX}/+/desired", "#"):
        device_a.subscribe(forbidden)
    device_a.subscribe(topic(a_id, "desired"))
    controller.publish(topic(a_id, "desired"), b"last")
    received = [device_a.receive()]
    while received[-1].payload != b"last":
        received.append(device_a.receive())
    assert {message.topic for message in received} == {topic(a_id, "desired")}
    assert b"for a" in [message.payload for message in received]
    assert device_a.messages.empty()

    device_a.publish(topic(b_id, "state"), b"a pretends to be b")
    device_a.publish(topic(a_id, "state"), b"a is online")
    received = controller.receive()
    assert (received.topic, received.payload) == (topic(a_id, "state"), b"a is online")
    assert controller.messages.empty()


# --- the rules, as a table ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_or_filter", "action", "allowed"),
    [
        (topic("a", "desired"), Action.SUBSCRIBE, True),
        (topic("a", "cmd"), Action.RECEIVE, True),
        (topic("a", "state"), Action.PUBLISH, True),
        (topic("a", "events"), Action.PUBLISH, True),
        (topic("a", "telemetry"), Action.PUBLISH, True),
        (topic("a", "state"), Action.SUBSCRIBE, False),
        (topic("a", "desired"), Action.PUBLISH, False),
        (topic("b", "desired"), Action.SUBSCRIBE, False),
        (topic("b", "state"), Action.PUBLISH, False),
        (f"{PREFIX}/a/#", Action.SUBSCRIBE, False),
        (f"{PREFIX}/+/desired", Action.SUBSCRIBE, False),
        ("#", Action.SUBSCRIBE, False),
        ("$SYS/#", Action.SUBSCRIBE, False),
        ("other/a/desired", Action.SUBSCRIBE, False),
    ],
)
def test_device_may_only_use_its_own_topics(
    topic_or_filter: str, action: Action, allowed: bool
) -> None:
    assert device_may(PREFIX, "a", topic_or_filter, action) is allowed


def test_acl_file_confines_devices_with_patterns() -> None:
    assert mosquitto_acl(PREFIX, "ctl").splitlines()[2:] == [
        f"pattern read {PREFIX}/%u/desired",
        f"pattern read {PREFIX}/%u/cmd",
        f"pattern write {PREFIX}/%u/state",
        f"pattern write {PREFIX}/%u/events",
        f"pattern write {PREFIX}/%u/telemetry",
        "",
        "# The controller.",
        "user ctl",
        f"topic readwrite {PREFIX}/#",
    ]


# --- Mosquitto with exported files -------------------------------------------------------


@pytest.fixture
def mosquitto_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"mqtt_username": "ctl", "mqtt_password": "ctl-secret"})


@pytest.fixture
def exported_mosquitto(
    app: FastAPI, mosquitto_settings: Settings, tmp_path: Path
) -> Iterator[tuple[BrokerEndpoint, Enrollment, Enrollment]]:
    device_a, device_b = enroll(app, "dev-a"), enroll(app, "dev-b")
    enroll(app, "dev-gone")
    with session_scope(ctx(app).engine) as session:
        decommission_device(session, device_id="dev-gone")
    passwords, acl = tmp_path / "passwd", tmp_path / "acl"
    export = write_mosquitto_files(mosquitto_settings, passwords=passwords, acl=acl)
    assert (export.devices, export.controller_user) == (2, "ctl")
    assert passwords.stat().st_mode & 0o777 == 0o600
    me = pwd.getpwuid(os.geteuid()).pw_name
    server = MosquittoServer(
        mosquitto_binary(),
        tmp_path,
        extra_config=(
            f"user {me}\nallow_anonymous false\npassword_file {passwords}\nacl_file {acl}\n"
        ),
    )
    server.start()
    try:
        yield server.endpoint, device_a, device_b
    finally:
        server.stop()


def test_mosquitto_confines_each_device_to_its_own_topics(
    exported_mosquitto: tuple[BrokerEndpoint, Enrollment, Enrollment],
) -> None:
    endpoint, device_a, device_b = exported_mosquitto
    with (
        LoginClient(endpoint, "ctl", "ctl-secret") as controller,
        device_client(endpoint, device_a) as client_a,
    ):
        assert_confined(controller, client_a, device_b, device_a.device_id)


def test_mosquitto_refuses_wrong_passwords_and_decommissioned_devices(
    exported_mosquitto: tuple[BrokerEndpoint, Enrollment, Enrollment],
) -> None:
    endpoint, device_a, _device_b = exported_mosquitto
    for username, password in [("dev-a", "wrong"), ("dev-gone", "anything"), (None, None)]:
        with pytest.raises(ConnectionError), LoginClient(endpoint, username, password):
            pass
    with device_client(endpoint, device_a):
        pass


# --- the embedded amqtt broker -----------------------------------------------------------


@pytest.fixture
def embedded(
    app: FastAPI, settings: Settings
) -> Iterator[tuple[BrokerEndpoint, Settings, Enrollment, Enrollment]]:
    device_a, device_b = enroll(app, "dev-a"), enroll(app, "dev-b")
    port = free_port()
    broker_settings = settings.model_copy(update={"mqtt_host": "127.0.0.1", "mqtt_port": port})
    config = embedded_broker_config(broker_settings, ctx(app).engine)
    with run_amqtt(config, port) as endpoint:
        yield endpoint, broker_settings, device_a, device_b


def controller_client(endpoint: BrokerEndpoint, settings: Settings) -> LoginClient:
    username, password = controller_mqtt_credentials(settings)
    return LoginClient(endpoint, username, password, client_id="edgefleet-controller-test")


def test_embedded_broker_confines_each_device_to_its_own_topics(
    embedded: tuple[BrokerEndpoint, Settings, Enrollment, Enrollment],
) -> None:
    endpoint, settings, device_a, device_b = embedded
    with (
        controller_client(endpoint, settings) as controller,
        device_client(endpoint, device_a) as client_a,
    ):
        assert_confined(controller, client_a, device_b, device_a.device_id)


def test_embedded_broker_accepts_a_device_with_its_will_on_its_own_state(
    embedded: tuple[BrokerEndpoint, Settings, Enrollment, Enrollment],
) -> None:
    endpoint, _settings, device_a, _device_b = embedded
    will = topic(device_a.device_id, "state")
    with LoginClient(endpoint, device_a.mqtt_username, device_a.mqtt_password, will_topic=will):
        pass


@pytest.mark.parametrize(
    "attempt",
    [
        "wrong password",
        "another device's password",
        "unknown user",
        "anonymous",
        "another device's client id",
        "will on another device's topic",
        "the controller's name with a device password",
    ],
)
def test_embedded_broker_refuses_bad_logins(
    embedded: tuple[BrokerEndpoint, Settings, Enrollment, Enrollment], attempt: str
) -> None:
    endpoint, _settings, device_a, device_b = embedded
    a_id, a_password = device_a.device_id, device_a.mqtt_password
    client = {
        "wrong password": lambda: LoginClient(endpoint, a_id, "wrong"),
        "another device's password": lambda: LoginClient(endpoint, a_id, device_b.mqtt_password),
        "unknown user": lambda: LoginClient(endpoint, "dev-x", a_password),
        "anonymous": lambda: LoginClient(endpoint, None, None, client_id="anon"),
        "another device's client id": lambda: LoginClient(
            endpoint, a_id, a_password, client_id=device_b.device_id
        ),
        "will on another device's topic": lambda: LoginClient(
            endpoint, a_id, a_password, will_topic=topic(device_b.device_id, "desired")
        ),
        "the controller's name with a device password": lambda: LoginClient(
            endpoint, "edgefleet-controller", a_password
        ),
    }[attempt]()
    with pytest.raises(ConnectionError), client:
        pass


def test_embedded_broker_refuses_a_decommissioned_device(
    app: FastAPI, embedded: tuple[BrokerEndpoint, Settings, Enrollment, Enrollment]
) -> None:
    endpoint, _settings, device_a, _device_b = embedded
    with device_client(endpoint, device_a):
        pass
    with session_scope(ctx(app).engine) as session:
        decommission_device(session, device_id=device_a.device_id)
    with pytest.raises(ConnectionError), device_client(endpoint, device_a):
        pass


def test_configured_controller_login_replaces_the_process_secret(settings: Settings) -> None:
    configured = settings.model_copy(update={"mqtt_username": "ctl", "mqtt_password": "pw"})
    assert controller_mqtt_credentials(configured) == ("ctl", "pw")
    username, secret = controller_mqtt_credentials(settings)
    assert username == "edgefleet-controller"
    assert controller_mqtt_credentials(settings) == (username, secret)
    assert len(secret) >= 32


def test_export_keeps_the_owner_of_the_files_it_replaces(
    app: FastAPI, mosquitto_settings: Settings, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    nobody = pwd.getpwnam("nobody")
    passwords, acl = tmp_path / "passwd", tmp_path / "acl"
    for path in (passwords, acl):
        path.write_text("old\n")
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    enroll(app, "dev-a")
    write_mosquitto_files(mosquitto_settings, passwords=passwords, acl=acl)
    for path in (passwords, acl):
        assert (path.stat().st_uid, path.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert passwords.read_text().startswith("dev-a:$7$101$")
