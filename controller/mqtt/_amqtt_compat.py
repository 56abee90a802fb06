"""Every reach into a private attribute of amqtt, in one place.

The embedded broker corrects two amqtt 0.12 behaviours (``embedded_broker``) through
amqtt's private names. ``CompatBroker`` maps them to two hooks of ours, so that
``EmbeddedBroker`` uses no private name of amqtt. ``REQUIRED`` lists each name with its
use; ``tests/controller/mqtt/test_amqtt_compat.py`` fails, naming the attribute, when an
amqtt release drops one. Check them before raising amqtt's upper bound in
``pyproject.toml``.
"""

from __future__ import annotations

import inspect
from typing import Any

from amqtt.broker import Broker

__all__ = ["REQUIRED", "CompatBroker", "missing_attributes"]

REQUIRED: dict[str, str] = {
    "_subscriptions": "the broker's table of topic filter -> [(session, qos)]",
    "_publish_retained_messages_for_subscription": (
        "the coroutine (subscription, session) that offers a session the retained messages "
        "of one of its filters when it reconnects"
    ),
}


class CompatBroker(Broker):  # type: ignore[misc]
    """amqtt's ``Broker`` with its private hooks under names of ours."""

    def __init__(self, config: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        # amqtt has no type information; set through setattr to keep mypy out of it.
        table = self.wrap_subscriptions(getattr(self, "_subscriptions"))  # noqa: B009
        setattr(self, "_subscriptions", table)  # noqa: B010

    def wrap_subscriptions(self, table: dict[str, Any]) -> dict[str, Any]:
        """The subscriptions table to use instead of ``table`` (amqtt's, empty)."""
        return table

    def subscription_holders(self, topic_filter: str) -> list[tuple[Any, int]]:
        """The ``(session, qos)`` pairs subscribed to ``topic_filter``."""
        holders: list[tuple[Any, int]] = getattr(self, "_subscriptions").get(topic_filter, [])  # noqa: B009
        return holders

    def offers_retained_messages(self, topic_filter: str, session: Any) -> bool:
        """Whether a reconnecting ``session`` is offered the retained messages that match
        ``topic_filter`` (amqtt: always)."""
        return True

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        if self.offers_retained_messages(subscription[0], session):
            await super()._publish_retained_messages_for_subscription(subscription, session)


async def missing_attributes() -> list[str]:
    """The names of ``REQUIRED`` this amqtt lacks, or lacks in the expected shape.

    A coroutine: amqtt's broker can only be made inside a running event loop (it is made,
    never started).
    """
    probe = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {}},
        }
    )
    missing = []
    if not isinstance(getattr(probe, "_subscriptions", None), dict):
        missing.append("_subscriptions (a dict)")
    method = getattr(Broker, "_publish_retained_messages_for_subscription", None)
    if method is None or not inspect.iscoroutinefunction(method):
        missing.append("_publish_retained_messages_for_subscription (a coroutine function)")
    elif list(inspect.signature(method).parameters) != ["self", "subscription", "session"]:
        missing.append("_publish_retained_messages_for_subscription(subscription, session)")
    return missing
