"""The MQTT link against real brokers: Mosquitto (a subprocess) and the embedded amqtt.

The other side of every exchange is ``TestClient``, a plain paho client: what it sees is
what the controller would see.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

import mqttlink
from agent.errors import BrokerAuthError
from agent.link.outbox import Outbox
from tests.agent.link.conftest import WAIT_S, LinkRunner
from tests.agent.link.device_topics import DEVICE, DeviceTopics
from tests.brokers import BrokerEndpoint, MosquittoServer, free_port
from tests.conftest import mosquitto_binary
from tests.mqtt_client import TestClient
from tests.tcp_proxy import TcpProxy

REPO_ROOT = Path(__file__).resolve().parents[3]
# "Prompt": a stop that hung until a timeout ran out would take WAIT_S; the bound is loose
# so that scheduling delays on a loaded machine (tests run two at a time) do not fail it.
PROMPT_S = 10.0

RunLink = Callable[..., LinkRunner]
ProxyTo = Callable[[BrokerEndpoint], TcpProxy]


def wait_for(observer: TestClient, topic: str, payload: bytes) -> mqtt.MQTTMessage:
    """The first message on ``topic`` with ``payload``; others are skipped."""
    deadline = time.monotonic() + WAIT_S
    while (remaining_s := deadline - time.monotonic()) > 0:
        message = observer.receive(timeout_s=remaining_s)
        if message.topic == topic and bytes(message.payload) == payload:
            return message
    raise AssertionError(f"no {payload!r} on {topic} within {WAIT_S} s")


def retained_on(endpoint: BrokerEndpoint, topic: str) -> bytes:
    """What a client that subscribes now gets as the retained message of ``topic``."""
    with TestClient(endpoint) as late:
        late.subscribe(topic)
        message = late.receive()
    assert message.retain
    return bytes(message.payload)


def receive_payloads(observer: TestClient, count: int) -> list[bytes]:
    return [bytes(observer.receive().payload) for _ in range(count)]


def test_birth_is_published_retained_on_connect(
    broker: BrokerEndpoint, device: DeviceTopics, run_link: RunLink
) -> None:
    with TestClient(broker) as observer:
        observer.subscribe(device.state)
        runner = run_link(broker)
        wait_for(observer, device.state, device.birth.payload)

    assert retained_on(broker, device.state) == device.birth.payload
    assert runner.is_connected()


def test_will_is_retained_after_the_connection_is_cut(
    broker: BrokerEndpoint, device: DeviceTopics, run_link: RunLink, proxy_to: ProxyTo
) -> None:
    proxy = proxy_to(broker)
    run_link(proxy.endpoint)
    with TestClient(broker) as observer:
        observer.subscribe(device.state)
        wait_for(observer, device.state, device.birth.payload)
        proxy.refusing = True  # the link must not come back and say online again
        proxy.sever()
        wait_for(observer, device.state, device.will.payload)

    assert retained_on(broker, device.state) == device.will.payload


def test_will_is_retained_after_the_agent_process_is_killed(
    broker: BrokerEndpoint, device: DeviceTopics, topic_prefix: str, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "tests.agent.link.agent_process"]
    args = [broker.host, str(broker.port), topic_prefix, str(tmp_path / "outbox.sqlite")]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with TestClient(broker) as observer:
        observer.subscribe(device.state)
        process = subprocess.Popen([*command, *args], cwd=REPO_ROOT, env=env)
        try:
            wait_for(observer, device.state, device.birth.payload)
        finally:
            process.kill()
            process.wait(timeout=WAIT_S)
        wait_for(observer, device.state, device.will.payload)

    assert retained_on(broker, device.state) == device.will.payload


def test_clean_stop_is_prompt_and_leaves_the_device_offline(
    broker: BrokerEndpoint, device: DeviceTopics, run_link: RunLink
) -> None:
    with TestClient(broker) as observer:
        observer.subscribe(device.state)
        runner = run_link(broker)
        wait_for(observer, device.state, device.birth.payload)
        elapsed_s = runner.stop()
        wait_for(observer, device.state, device.will.payload)

    assert elapsed_s < PROMPT_S
    assert runner.error is None
    assert not runner.link.connected
    assert retained_on(broker, device.state) == device.will.payload


def test_stop_during_a_connection_attempt_is_prompt(
    broker: BrokerEndpoint, run_link: RunLink, proxy_to: ProxyTo
) -> None:
    proxy = proxy_to(broker)
    proxy.refusing = True  # accepts, then resets: no CONNACK ever comes
    runner = run_link(proxy.endpoint, connect_timeout_s=30.0)
    proxy.wait_for_connections(1)

    assert runner.stop() < PROMPT_S
    assert runner.error is None


def test_stop_during_the_backoff_is_prompt(
    run_link: RunLink, watch_link_log: Callable[[str], threading.Event]
) -> None:
    backing_off = watch_link_log("retrying in")
    nothing_listens = BrokerEndpoint("none", "127.0.0.1", free_port())
    runner = run_link(nothing_listens, backoff_initial_s=20.0, backoff_max_s=30.0)
    assert backing_off.wait(WAIT_S)

    assert runner.stop() < PROMPT_S
    assert runner.error is None


def test_messages_published_online_arrive_in_order_and_leave_the_outbox(
    broker: BrokerEndpoint, device: DeviceTopics, run_link: RunLink, outbox: Outbox
) -> None:
    with TestClient(broker) as observer:
        observer.subscribe(device.events)
        observer.subscribe(device.state)
        runner = run_link(broker)
        wait_for(observer, device.state, device.birth.payload)
        for number in range(20):
            runner.publish(device.event(number))
        events = receive_payloads(observer, 20)

    assert events == [device.event(number).payload for number in range(20)]
    # The drainer acks a message before it publishes the next one.
    assert len(outbox) <= 1


def test_a_message_without_puback_stays_in_the_outbox_and_is_sent_on_the_next_connection(
    broker: BrokerEndpoint,
    device: DeviceTopics,
    run_link: RunLink,
    proxy_to: ProxyTo,
    outbox: Outbox,
    watch_link_log: Callable[[str], threading.Event],
) -> None:
    proxy = proxy_to(broker)
    no_puback = watch_link_log("no PUBACK for " + device.events)
    runner = run_link(proxy.endpoint, ack_timeout_s=0.5, connect_timeout_s=0.5)
    with TestClient(broker) as observer:
        observer.subscribe(device.state)
        observer.subscribe(device.events)
        wait_for(observer, device.state, device.birth.payload)
        proxy.black_hole = True
        runner.publish(device.event(1))
        assert no_puback.wait(WAIT_S)
        assert [message.payload for message in outbox.peek(10)] == [device.event(1).payload]

        proxy.black_hole = False
        wait_for(observer, device.events, device.event(1).payload)
        runner.publish(device.event(2))
        wait_for(observer, device.events, device.event(2).payload)

    # event 1 left the outbox only once its PUBACK came, before event 2 was sent.
    assert [message.payload for message in outbox.peek(10)] in ([], [device.event(2).payload])


def test_messages_left_by_a_previous_run_are_sent_after_the_birth(
    broker: BrokerEndpoint, device: DeviceTopics, run_link: RunLink, outbox: Outbox
) -> None:
    for number in range(3):
        message = device.event(number)
        outbox.put(message.topic, message.payload, qos=message.qos)
    with TestClient(broker) as observer:
        observer.subscribe(device.state)
        observer.subscribe(device.events)
        run_link(broker)
        received = receive_payloads(observer, 4)

    assert received == [device.birth.payload] + [device.event(n).payload for n in range(3)]


def test_messages_put_while_the_broker_is_down_arrive_in_order_after_a_restart(
    restartable_mosquitto: MosquittoServer,
    device: DeviceTopics,
    run_link: RunLink,
    proxy_to: ProxyTo,
    outbox: Outbox,
) -> None:
    server = restartable_mosquitto
    # The proxy holds the link back until the observer below has subscribed again.
    proxy = proxy_to(server.endpoint)
    # A refused attempt ends when its CONNACK times out: keep that short.
    runner = run_link(proxy.endpoint, connect_timeout_s=0.5)
    with TestClient(server.endpoint) as observer:
        observer.subscribe(device.state)
        wait_for(observer, device.state, device.birth.payload)
    proxy.refusing = True
    server.stop()
    for number in range(30):
        runner.publish(device.event(number))
    assert len(outbox) == 30

    server.start()
    with TestClient(server.endpoint) as observer:
        observer.subscribe(device.events)
        proxy.refusing = False
        events = receive_payloads(observer, 30)

    assert events == [device.event(number).payload for number in range(30)]


def test_link_subscribes_again_after_a_broker_restart(
    restartable_mosquitto: MosquittoServer, device: DeviceTopics, run_link: RunLink
) -> None:
    server = restartable_mosquitto
    runner = run_link(server.endpoint, subscriptions=[(device.desired, 1)])
    with TestClient(server.endpoint) as observer:
        observer.subscribe(device.state)
        wait_for(observer, device.state, device.birth.payload)

    server.restart()  # persistence is off: the broker forgets every subscription
    with TestClient(server.endpoint) as controller:
        controller.subscribe(device.state)
        wait_for(controller, device.state, device.birth.payload)
        controller.publish(device.desired, b"deployment-2", retain=True)

        topic, payload, _retained = runner.receive()

    assert (topic, payload) == (device.desired, b"deployment-2")


def test_retained_desired_state_reaches_the_link_flagged_retained(
    broker: BrokerEndpoint, device: DeviceTopics, run_link: RunLink
) -> None:
    with TestClient(broker) as controller:
        controller.publish(device.desired, b"deployment-1", retain=True)
    runner = run_link(broker, subscriptions=[(device.desired, 1)])

    assert runner.receive() == (device.desired, b"deployment-1", True)


def test_a_failing_callback_does_not_stop_delivery(
    broker: BrokerEndpoint,
    device: DeviceTopics,
    run_link: RunLink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivered: list[bytes] = []

    async def handler(topic: str, payload: bytes, retained: bool) -> None:
        if payload == b"poison":
            raise RuntimeError("handler bug")
        delivered.append(payload)
        await runner.record(topic, payload, retained)

    runner = run_link(
        broker, on_message=handler, subscriptions=[(device.cmd, 1), (device.desired, 1)]
    )
    with TestClient(broker) as controller:
        # A retained probe answers once the subscriptions are in place.
        controller.publish(device.desired, b"probe", retain=True)
        assert runner.receive()[1] == b"probe"
        controller.publish(device.cmd, b"poison")
        controller.publish(device.cmd, b"command-1")

        # QoS 1 is at least once: amqtt may offer the retained probe a second time when
        # the subscription and the publish cross (seen once in CI); skip repeats of it.
        received = runner.receive()
        while received[1] == b"probe":
            received = runner.receive()
        assert received[:2] == (device.cmd, b"command-1")

    assert runner.is_connected()
    assert [payload for payload in delivered if payload != b"probe"] == [b"command-1"]
    assert "on_message failed" in caplog.text
    assert "handler bug" in caplog.text


def test_bad_credentials_raise_broker_auth_error_after_one_attempt(
    password_mosquitto: tuple[MosquittoServer, str, str], run_link: RunLink, proxy_to: ProxyTo
) -> None:
    server, user, _password = password_mosquitto
    proxy = proxy_to(server.endpoint)
    runner = run_link(proxy.endpoint, username=user, password="wrong-password")

    assert runner.done.wait(PROMPT_S), "run() kept going after the broker refused the login"
    assert isinstance(runner.error, BrokerAuthError)
    assert proxy.connections == 1


def test_right_credentials_connect_to_the_same_broker(
    password_mosquitto: tuple[MosquittoServer, str, str], device: DeviceTopics, run_link: RunLink
) -> None:
    server, user, password = password_mosquitto
    run_link(server.endpoint, username=user, password=password)
    observer = TestClient(server.endpoint)
    observer._client.username_pw_set(user, password)
    with observer:
        observer.subscribe(device.state)
        wait_for(observer, device.state, device.birth.payload)


def test_unreachable_broker_is_retried_until_it_answers(
    broker: BrokerEndpoint, device: DeviceTopics, run_link: RunLink, proxy_to: ProxyTo
) -> None:
    proxy = proxy_to(broker)
    proxy.refusing = True
    # aiomqtt notices a connection reset before CONNACK only when the CONNACK times out.
    runner = run_link(proxy.endpoint, connect_timeout_s=0.3)
    proxy.wait_for_connections(3)
    with TestClient(broker) as observer:
        observer.subscribe(device.state)
        proxy.refusing = False
        wait_for(observer, device.state, device.birth.payload)

    assert runner.error is None
    assert runner.is_connected()


def test_a_link_whose_first_node_is_down_connects_to_the_next(
    restartable_mosquitto: MosquittoServer, device: DeviceTopics, run_link: RunLink
) -> None:
    live = restartable_mosquitto.endpoint
    dead_port = free_port()  # nothing listens there
    with TestClient(live) as observer:
        observer.subscribe(device.state)
        runner = run_link(
            BrokerEndpoint("dead", "127.0.0.1", dead_port),
            other_nodes=((live.host, live.port),),
            connect_timeout_s=0.5,
        )
        wait_for(observer, device.state, device.birth.payload)

    assert runner.is_connected()


def test_when_its_node_dies_the_link_moves_to_another_and_keeps_its_order(
    restartable_mosquitto: MosquittoServer, tmp_path: Path, device: DeviceTopics, run_link: RunLink
) -> None:
    first = restartable_mosquitto
    second = MosquittoServer(mosquitto_binary(), tmp_path / "second")
    second.workdir.mkdir()
    second.start()
    try:
        with TestClient(second.endpoint) as observer:
            observer.subscribe(device.state)
            observer.subscribe(device.events)
            # The device's id picks where it starts: list the nodes so that it is ``first``.
            nodes = [first.endpoint, second.endpoint]
            start = mqttlink.BrokerAddresses(
                tuple(mqttlink.BrokerAddress(n.host, n.port, False) for n in nodes),
                spread_key=DEVICE,
            ).current
            if start.port != first.port:
                nodes.reverse()
            runner = run_link(
                nodes[0],
                other_nodes=((nodes[1].host, nodes[1].port),),
                subscriptions=[(device.desired, 1)],
                connect_timeout_s=0.5,
            )
            with TestClient(first.endpoint) as on_first:
                on_first.subscribe(device.state)
                wait_for(on_first, device.state, device.birth.payload)
            first.stop()
            for number in range(5):
                runner.publish(device.event(number))
            wait_for(observer, device.state, device.birth.payload)
            events = [
                bytes(message.payload)
                for message in (observer.receive() for _ in range(5))
                if message.topic == device.events
            ]
            observer.publish(device.desired, b"deployment-on-second", retain=True)
            topic, payload, _retained = runner.receive()
    finally:
        first.stop()
        second.stop()

    assert events == [device.event(number).payload for number in range(5)]
    assert (topic, payload) == (device.desired, b"deployment-on-second")
