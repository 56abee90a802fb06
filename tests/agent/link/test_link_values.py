"""The link's value objects validate themselves; the backoff is exponential with full
jitter and a cap. Pure: no broker."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

import mqttlink
from agent.errors import ConfigurationError
from agent.link.mqtt import LinkSettings, Message, MqttLink, translate_mqtt_error
from agent.link.outbox import Outbox
from protocol import backoff_delay_s
from tests.mqttlink.test_settings import BAD_SETTINGS

VALID: dict[str, Any] = {"host": "broker.local", "port": 8883, "client_id": "cam-berlin-0001"}


@pytest.mark.parametrize("overrides", BAD_SETTINGS)
def test_bad_link_settings_are_a_configuration_error(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        LinkSettings(**{**VALID, **overrides})


def test_link_settings_never_show_the_password() -> None:
    settings = LinkSettings(**VALID, username="device", password="hunter2-secret")

    assert "hunter2-secret" not in repr(settings)
    assert "hunter2-secret" not in str(settings)


@pytest.mark.parametrize(
    ("topic", "payload", "qos"),
    [
        ("", b"x", 1),
        ("edgefleet/v1/+/state", b"x", 1),
        ("edgefleet/v1/#", b"x", 1),
        ("edgefleet/v1/a\x00/state", b"x", 1),
        ("edgefleet/v1/a/state", "text, not bytes", 1),
        ("edgefleet/v1/a/state", b"x", 2),  # exactly-once is not offered
        ("edgefleet/v1/a/state", b"x", -1),
    ],
)
def test_bad_messages_are_a_configuration_error(topic: str, payload: Any, qos: int) -> None:
    with pytest.raises(ConfigurationError):
        Message(topic, payload, qos=qos)


@pytest.mark.parametrize(
    ("will_retain", "birth_retain", "subscription"),
    [
        (False, True, ("a/b", 1)),
        (True, False, ("a/b", 1)),
        (True, True, ("a/#/b", 1)),
        (True, True, ("a/b+", 1)),
        (True, True, ("", 1)),
        (True, True, ("a/b", 3)),
    ],
)
def test_a_link_refuses_unretained_presence_and_bad_subscriptions(
    tmp_path: Path, will_retain: bool, birth_retain: bool, subscription: tuple[str, int]
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    with pytest.raises(ConfigurationError):
        MqttLink(
            LinkSettings(**VALID),
            outbox=outbox,
            will=Message("a/state", b"offline", retain=will_retain),
            birth=Message("a/state", b"online", retain=birth_retain),
            subscriptions=[subscription],
        )
    outbox.close()


def test_the_birth_can_be_replaced_by_a_retained_message_only(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    link = MqttLink(
        LinkSettings(**VALID),
        outbox=outbox,
        will=Message("a/state", b"offline", retain=True),
        birth=Message("a/state", b"online", retain=True),
        subscriptions=[("a/desired", 1), ("a/+/cmd", 1), ("a/#", 0)],
    )
    link.birth = Message("a/state", b"online, phase probation", retain=True)

    assert link.birth.payload == b"online, phase probation"
    with pytest.raises(ConfigurationError):
        link.birth = Message("a/state", b"online", retain=False)
    outbox.close()


class HighestDraw(random.Random):
    """Always draws the top of the range: shows the ceiling the jitter draws under."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.mark.parametrize(
    ("attempt", "ceiling_s"),
    [(0, 0.5), (1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (60, 30.0), (10_000, 30.0)],
)
def test_backoff_ceiling_doubles_up_to_the_cap(attempt: int, ceiling_s: float) -> None:
    delay_s = backoff_delay_s(attempt, initial_s=0.5, max_s=30.0, rng=HighestDraw())

    assert delay_s == ceiling_s


def test_backoff_draws_anywhere_from_zero_to_the_ceiling() -> None:
    rng = random.Random(7)
    delays_s = [backoff_delay_s(3, initial_s=0.5, max_s=30.0, rng=rng) for _ in range(500)]

    assert all(0.0 <= delay_s <= 4.0 for delay_s in delays_s)
    assert min(delays_s) < 0.5
    assert max(delays_s) > 3.5


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (mqttlink.CredentialsRefusedError("bad password", code=5), "broker_auth"),
        (mqttlink.ConfigurationRefusedError("bad client id", code=2), "configuration"),
        (mqttlink.SettingsError("bad topic"), "configuration"),
        (mqttlink.LinkTimeoutError("no PUBACK for a/b within 10 s"), "transport_timeout"),
        (mqttlink.ConnectionFailedError("connection reset"), "connection_failed"),
    ],
)
def test_mqttlink_errors_become_the_agents_reason_codes(
    error: mqttlink.MqttLinkError, reason: str
) -> None:
    translated = translate_mqtt_error(error)

    assert (translated.reason, str(translated)) == (reason, str(error))
