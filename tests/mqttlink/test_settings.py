"""Session settings and messages validate themselves; the password never shows. Pure."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from mqttlink import Message, MqttVersion, SessionSettings, SettingsError, verify_topic_filter

VALID: dict[str, Any] = {"host": "broker.local", "port": 8883, "client_id": "controller-1"}


# What every MQTT session refuses; the agent's LinkSettings refuses the same (its tests
# use this table too).
BAD_SETTINGS: list[dict[str, Any]] = [
    {"host": ""},
    {"host": "broker local"},
    {"port": 0},
    {"port": 65_536},
    {"client_id": ""},
    {"client_id": "cam\x00"},
    {"password": "secret"},  # a password without a username
    {"keepalive_s": 0},
    {"connect_timeout_s": 0.0},
    {"ack_timeout_s": -1.0},
    {"ack_timeout_s": float("nan")},
    {"backoff_initial_s": 0.0},
    {"backoff_initial_s": 5.0, "backoff_max_s": 1.0},
    {"backoff_max_s": float("inf")},
]


@pytest.mark.parametrize(
    "overrides",
    [
        *BAD_SETTINGS,
        {"version": "5"},
        {"session_expiry_s": 3600},  # 3.1.1 has no session expiry
        {"version": MqttVersion.V5, "session_expiry_s": -1},
        {"version": MqttVersion.V5, "session_expiry_s": 2**32},
    ],
)
def test_bad_session_settings_are_a_settings_error(overrides: dict[str, Any]) -> None:
    with pytest.raises(SettingsError):
        SessionSettings(**{**VALID, **overrides})


def test_mqtt_5_settings_with_session_expiry_are_accepted() -> None:
    settings = SessionSettings(**VALID, version=MqttVersion.V5, session_expiry_s=7 * 86400)

    assert (settings.clean_session, settings.session_expiry_s) == (False, 604_800)


def test_session_settings_never_show_the_password() -> None:
    settings = SessionSettings(
        **VALID,
        username="controller",
        password="hunter2-secret",
        tls_context=ssl.create_default_context(),
    )

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
        ("edgefleet/v1/a/state", b"x", 3),
        ("edgefleet/v1/a/state", b"x", -1),
    ],
)
def test_bad_messages_are_a_settings_error(topic: str, payload: Any, qos: int) -> None:
    with pytest.raises(SettingsError):
        Message(topic, payload, qos=qos)


@pytest.mark.parametrize("topic_filter", ["", "a/#/b", "a/b#", "a/b+", "a/\x00"])
def test_bad_topic_filters_are_a_settings_error(topic_filter: str) -> None:
    with pytest.raises(SettingsError):
        verify_topic_filter(topic_filter)


@pytest.mark.parametrize("topic_filter", ["a/b", "a/+/c", "a/#", "#", "$share/g/a/+/events"])
def test_valid_topic_filters_pass(topic_filter: str) -> None:
    verify_topic_filter(topic_filter)
