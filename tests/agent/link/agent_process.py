"""A device process for the kill test: runs one ``MqttLink`` until it is killed.

Usage: ``python -m tests.agent.link.agent_process HOST PORT PREFIX OUTBOX_PATH``
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from agent.link.mqtt import LinkSettings, MqttLink
from agent.link.outbox import Outbox
from tests.agent.link.device_topics import DEVICE, DeviceTopics


async def serve(host: str, port: int, prefix: str, outbox_path: Path) -> None:
    device = DeviceTopics(prefix)
    link = MqttLink(
        LinkSettings(host, port, DEVICE, keepalive_s=5, backoff_initial_s=0.05, backoff_max_s=0.2),
        outbox=Outbox(outbox_path),
        will=device.will,
        birth=device.birth,
        subscriptions=[(device.desired, 1)],
    )

    async def ignore(_topic: str, _payload: bytes, _retained: bool) -> None:
        return None

    await link.run(ignore, asyncio.Event())


def main(argv: list[str]) -> None:
    host, port, prefix, outbox_path = argv
    asyncio.run(serve(host, int(port), prefix, Path(outbox_path)))


if __name__ == "__main__":
    main(sys.argv[1:])
