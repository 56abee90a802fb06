"""The private attributes of paho-mqtt and aiomqtt that mqttlink uses still exist.

When one of these fails after an upgrade, the message names the attribute: adapt
``mqttlink/_paho_compat.py`` or ``mqttlink/_aiomqtt_compat.py`` before allowing the release
in ``pyproject.toml``.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version

from mqttlink import _aiomqtt_compat, _paho_compat


def explain(owner: str, missing: list[str], required: dict[str, str], module: str) -> str:
    uses = "; ".join(
        f"{owner}.{name} ({required.get(name.split(' ')[0], 'see the module')})" for name in missing
    )
    return f"missing: {uses}. Adapt {module} before allowing this release in pyproject.toml."


def test_paho_still_has_the_private_attributes_mqttlink_uses() -> None:
    missing = _paho_compat.missing_attributes()

    assert missing == [], explain(
        f"paho-mqtt {version('paho-mqtt')}: paho.mqtt.client.Client",
        missing,
        _paho_compat.REQUIRED,
        "mqttlink/_paho_compat.py",
    )


def test_aiomqtt_still_has_the_private_attributes_mqttlink_uses() -> None:
    missing = asyncio.run(_aiomqtt_compat.missing_attributes())

    assert missing == [], explain(
        f"aiomqtt {version('aiomqtt')}: aiomqtt.Client",
        missing,
        _aiomqtt_compat.REQUIRED,
        "mqttlink/_aiomqtt_compat.py",
    )


def test_aiomqtt_reader_still_reads_on_while_the_socket_has_bytes_pending() -> None:
    assert _aiomqtt_compat.reader_drains_pending(), (
        f"aiomqtt {version('aiomqtt')}: aiomqtt.Client._on_socket_open no longer calls "
        "sock.pending(), so the fast ingest mode's BufferedSocket would leave buffered "
        "packets unread until the next one arrives (mqttlink/ingest.py)"
    )
