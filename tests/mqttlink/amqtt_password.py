"""An amqtt auth plugin for tests: one user with one password, nobody else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amqtt.plugins.base import BaseAuthPlugin


class OnePasswordAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    @dataclass
    class Config:
        username: str = ""
        password: str = ""

    async def authenticate(self, *, session: Any) -> bool:
        password = session.password
        if isinstance(password, bytes | bytearray):
            password = bytes(password).decode("utf-8", "replace")
        return bool(session.username == self.config.username and password == self.config.password)
