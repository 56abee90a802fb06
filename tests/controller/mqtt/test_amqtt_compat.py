"""The private attributes of amqtt that the embedded broker overrides still exist.

When this fails after an upgrade, the message names the attribute: adapt
``controller/mqtt/_amqtt_compat.py`` before allowing the release in ``pyproject.toml``.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version

from controller.mqtt import _amqtt_compat


def test_amqtt_still_has_the_private_attributes_the_embedded_broker_overrides() -> None:
    missing = asyncio.run(_amqtt_compat.missing_attributes())

    uses = "; ".join(
        f"Broker.{name} ({_amqtt_compat.REQUIRED.get(name.split(' ')[0], 'see the module')})"
        for name in missing
    )
    assert missing == [], (
        f"amqtt {version('amqtt')}: amqtt.broker.Broker is missing {uses}. Adapt "
        "controller/mqtt/_amqtt_compat.py before allowing this release in pyproject.toml."
    )
