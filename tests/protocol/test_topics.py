"""Topic names: building and parsing are inverse, and no id can widen a subscription."""

from __future__ import annotations

import pytest

from protocol import (
    CHANNELS,
    DEFAULT_PREFIX,
    Channel,
    TopicError,
    device_topic,
    parse_device_topic,
    subscription_filter,
)


@pytest.mark.parametrize("channel", list(Channel))
def test_topic_parses_back_to_device_and_channel(channel: Channel) -> None:
    topic = device_topic(DEFAULT_PREFIX, "cam-7.site_a", channel)
    assert topic == f"edgefleet/v1/cam-7.site_a/{channel.value}"
    assert parse_device_topic(DEFAULT_PREFIX, topic) == ("cam-7.site_a", channel)


@pytest.mark.parametrize("device_id", ["+", "#", "a/b", "$SYS", "", "a+", "x" * 65, "a\x00"])
def test_device_id_with_wildcards_or_separators_is_refused(device_id: str) -> None:
    with pytest.raises(TopicError):
        device_topic(DEFAULT_PREFIX, device_id, Channel.DESIRED)


@pytest.mark.parametrize("prefix", ["", "/a", "a/", "a//b", "a/#", "+/b", "$SYS/x"])
def test_prefix_with_empty_levels_or_wildcards_is_refused(prefix: str) -> None:
    with pytest.raises(TopicError):
        device_topic(prefix, "d1", Channel.STATE)


@pytest.mark.parametrize(
    "topic",
    [
        "edgefleet/v1/d1",
        "edgefleet/v1/d1/desired/extra",
        "edgefleet/v1/d1/unknown",
        "other/v1/d1/state",
        "edgefleet/v1/+/state",
    ],
)
def test_foreign_or_malformed_topic_is_refused(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_device_topic(DEFAULT_PREFIX, topic)


def test_subscription_filters_plain_and_shared() -> None:
    assert subscription_filter("p", Channel.EVENTS) == "p/+/events"
    shared = subscription_filter("p", Channel.EVENTS, shared_group="controllers")
    assert shared == "$share/controllers/p/+/events"
    with pytest.raises(TopicError):
        subscription_filter("p", Channel.EVENTS, shared_group="a/b")


def test_channel_table_matches_the_architecture() -> None:
    retained = {channel for channel, spec in CHANNELS.items() if spec.retained}
    from_device = {channel for channel, spec in CHANNELS.items() if spec.from_device}
    assert retained == {Channel.DESIRED, Channel.STATE}
    assert from_device == {Channel.STATE, Channel.EVENTS, Channel.TELEMETRY}
    assert all(spec.qos == 1 for spec in CHANNELS.values())
