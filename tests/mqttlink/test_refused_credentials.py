"""A refused password is a credentials error at once, and nobody retries it: not mqttlink,
not the agent's link, not the controller's bridge. On Mosquitto and on amqtt."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import BrokerAuthError as AgentBrokerAuthError
from agent.link.mqtt import MqttLink
from agent.link.outbox import Outbox
from controller.db import make_engine
from controller.errors import BrokerAuthError as ControllerBrokerAuthError
from controller.migrate import upgrade_database
from controller.mqtt.bridge import MqttBridge
from controller.settings import load_settings
from mqttlink import CredentialsRefusedError, MqttConnection
from tests.agent.link.conftest import LinkRunner, fast_settings
from tests.agent.link.device_topics import DeviceTopics
from tests.brokers import BrokerEndpoint
from tests.mqttlink.conftest import PASSWORD, USER, WAIT_S, settings_for
from tests.mqttlink.test_connection import run
from tests.tcp_proxy import TcpProxy

ProxyTo = Callable[[BrokerEndpoint], TcpProxy]


def test_a_wrong_password_is_a_credentials_error(password_broker: BrokerEndpoint) -> None:
    settings = settings_for(password_broker, "device", username=USER, password="wrong")

    with pytest.raises(CredentialsRefusedError, match="refused the credentials") as refused:
        run(MqttConnection(settings).connect())
    assert refused.value.code in (4, 5, 134, 135)


def test_the_right_password_connects(password_broker: BrokerEndpoint) -> None:
    settings = settings_for(password_broker, "device", username=USER, password=PASSWORD)

    async def scenario() -> bool:
        connection = MqttConnection(settings)
        await connection.connect()
        connected = connection.is_open
        await connection.disconnect()
        return connected

    assert run(scenario())


def test_the_link_raises_broker_auth_error_after_one_attempt(
    password_broker: BrokerEndpoint, proxy_to: ProxyTo, topic_prefix: str, tmp_path: Path
) -> None:
    proxy = proxy_to(password_broker)
    device = DeviceTopics(topic_prefix)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    link = MqttLink(
        fast_settings(proxy.endpoint, username=USER, password="wrong"),
        outbox=outbox,
        will=device.will,
        birth=device.birth,
        subscriptions=[],
    )
    runner = LinkRunner(link).start()
    try:
        assert runner.done.wait(WAIT_S), "run() kept going after the broker refused the login"
        assert isinstance(runner.error, AgentBrokerAuthError)
        assert proxy.connections == 1
    finally:
        if not runner.done.is_set():
            runner.stop()
        outbox.close()


def test_the_bridge_raises_broker_auth_error_after_one_attempt(
    password_broker: BrokerEndpoint, proxy_to: ProxyTo, topic_prefix: str, tmp_path: Path
) -> None:
    proxy = proxy_to(password_broker)
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": tmp_path / "data",
            "broker": proxy.endpoint.url,
            "topic_prefix": topic_prefix,
            "controller_id": f"test-{uuid.uuid4().hex[:8]}",
            "mqtt_username": USER,
            "mqtt_password": "wrong",
        },
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'controller.db'}")
    upgrade_database(engine)
    bridge = MqttBridge(settings=settings, engine=engine)

    try:
        with pytest.raises(ControllerBrokerAuthError, match="refused the controller's credentials"):
            run(bridge.run())
        assert proxy.connections == 1
    finally:
        engine.dispose()
