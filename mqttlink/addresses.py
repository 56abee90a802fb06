"""Broker addresses: one or several nodes of the same broker, as URLs.

``mqtt://host:port`` or ``mqtts://host:port``; a cluster is the nodes' URLs separated by
commas (``mqtt://n1:1883,mqtt://n2:1883``), as NATS clients take their servers. A client
connects to the first and moves to the next when a connect fails (``BrokerAddresses``),
so a node that dies sends its clients to the others.

Invariants:
- every node uses the same scheme: TLS to some nodes and not to others would make a
  failover silently drop TLS;
- a list that parses is non-empty, without duplicates, each port in 1-65535.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import SettingsError

__all__ = ["BrokerAddress", "BrokerAddresses", "parse_broker_urls"]

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_broker_urls(text: str) -> tuple[BrokerAddress, ...]:
    """The nodes named by ``text``; raises ``SettingsError`` naming what is wrong."""
    urls = [url.strip() for url in text.split(",")]
    if not text.strip() or any(not url for url in urls):
        raise SettingsError(f"broker URL list {text!r} has an empty entry")
    addresses: list[BrokerAddress] = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise SettingsError(f"broker URL {url!r} is not mqtt://host:port or mqtts://host:port")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError as exc:
            raise SettingsError(f"broker URL {url!r} has an invalid port") from exc
        addresses.append(BrokerAddress(parts.hostname, port, parts.scheme == "mqtts"))
    if len({address.tls for address in addresses}) > 1:
        raise SettingsError(f"broker URLs {text!r} mix mqtt:// and mqtts://; use one scheme")
    if len(set(addresses)) != len(addresses):
        raise SettingsError(f"broker URLs {text!r} name a node twice")
    return tuple(addresses)


class BrokerAddresses:
    """The node to connect to next: the same one while it works, the next after a
    failed connect (round robin).

    With ``spread_key`` (a device's client id) the first node tried is chosen by the key's
    CRC-32, so a fleet given the same list spreads over the nodes, each device always
    starting on the same one; without it, the first in the list (the controller's way).
    """

    def __init__(self, addresses: tuple[BrokerAddress, ...], *, spread_key: str = "") -> None:
        if not addresses:
            raise SettingsError("a broker needs at least one address")
        self._addresses = addresses
        self._index = zlib.crc32(spread_key.encode()) % len(addresses) if spread_key else 0

    @property
    def current(self) -> BrokerAddress:
        return self._addresses[self._index]

    def connect_failed(self) -> None:
        self._index = (self._index + 1) % len(self._addresses)
