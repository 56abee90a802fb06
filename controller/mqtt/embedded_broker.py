"""The embedded MQTT broker: amqtt, with two of its 0.12 behaviours corrected.

Imported only when the controller runs its own broker (amqtt is heavy to import). The
corrections use amqtt's private names only through ``_amqtt_compat``.

1. When a client with a persistent session reconnects, amqtt offers it the retained
   messages of *every* topic filter any client has subscribed to, not only its own, and
   without the ACL check. A device that lost its connection then received every other
   device's retained desired state and reported state: a leak across devices, and a
   flood the agent has to refuse message by message. ``EmbeddedBroker`` offers a client
   only the retained messages of the filters it holds itself.
2. amqtt iterates its subscriptions dict across ``await``s (the ACL check, retained
   deliveries); a client subscribing meanwhile raised "dictionary changed size during
   iteration", which killed that broadcast and dropped the message for the remaining
   subscribers. The dict now iterates over a copy of itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._amqtt_compat import CompatBroker

__all__ = ["EmbeddedBroker"]


class _SnapshotDict(dict[str, Any]):
    """A dict that iterates over a copy of itself, safe across ``await``s."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def items(self) -> Any:
        return list(super().items())


class EmbeddedBroker(CompatBroker):
    def wrap_subscriptions(self, table: dict[str, Any]) -> dict[str, Any]:
        return _SnapshotDict(table)

    def offers_retained_messages(self, topic_filter: str, session: Any) -> bool:
        holders = self.subscription_holders(topic_filter)
        return any(holder.client_id == session.client_id for holder, _ in holders)
