"""The on-disk outbox: what the device must publish, kept until the broker acknowledges it.

Invariants:
- one SQLite file in WAL mode with ``synchronous=FULL``: a call that returned has been
  committed to disk, so a crash or a power cut right after it loses nothing it wrote;
- message ids come from ``AUTOINCREMENT`` and are never reused, even after the rows are
  gone: ``peek`` returns messages in the order they were ``put``, across restarts;
- the outbox holds at most ``max_messages``; ``put`` on a full outbox drops the OLDEST
  messages in the same transaction and adds them to the persisted ``dropped`` counter, so
  the outbox is bounded and what it lost is counted;
- ``next_sequence`` commits the new value before returning it: a sequence is never handed
  out twice, whenever the process dies;
- every ``sqlite3`` error (a corrupt file, a full disk, a locked database) is raised as an
  ``OutboxError``, here and nowhere else.

The outbox is thread-safe: one connection, serialized by a lock. Each call is one short
transaction, cheap enough to make from the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import OutboxError

__all__ = ["DEFAULT_MAX_MESSAGES", "Outbox", "OutboxMessage", "OutboxQueue"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGES = 10_000
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sequences (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class OutboxQueue(Protocol):
    """What the MQTT link and the reporter need of an outbox: an ordered queue of
    messages kept until acknowledged, and named sequences. ``Outbox`` is the device's
    (SQLite, durable); the simulator keeps one in memory per simulated device."""

    def put(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int: ...

    def peek(self, limit: int) -> list[OutboxMessage]: ...

    def ack(self, message_id: int) -> None: ...

    def __len__(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    def next_sequence(self, name: str) -> int: ...

    def close(self) -> None: ...


class Outbox:
    """A bounded, ordered, durable queue of messages to publish, plus named sequences."""

    def __init__(self, path: Path, *, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, not {max_messages}")
        self.path = path
        self.max_messages = max_messages
        self._lock = threading.Lock()
        with self._translate("open"):
            self._db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        try:
            with self._translate("open"):
                self._open()
        except OutboxError:
            self._db.close()
            raise

    def _open(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"outbox {self.path} has schema version {version}; this agent reads "
                f"up to {SCHEMA_VERSION}"
            )
        mode = str(self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        if mode.lower() != "wal":
            raise OutboxError(f"outbox {self.path} cannot use WAL (journal mode {mode!r})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
        )
        # Catches a file whose header is fine but whose pages are not.
        check = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise OutboxError(f"outbox {self.path} is corrupt: {check}")

    def close(self) -> None:
        with self._lock, self._translate("close"):
            self._db.close()

    def put(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Append a message and return its id; drop the oldest ones if the outbox is full."""
        with self._lock, self._translate("put"), self._transaction():
            count = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
            excess = count + 1 - self.max_messages
            if excess > 0:
                self._db.execute(
                    "DELETE FROM messages WHERE id IN "
                    "(SELECT id FROM messages ORDER BY id LIMIT ?)",
                    (excess,),
                )
                self._add_counter("dropped", excess)
                logger.warning(
                    "outbox full (%d messages): dropped the %d oldest", self.max_messages, excess
                )
            cursor = self._db.execute(
                "INSERT INTO messages (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                (topic, bytes(payload), qos, int(retain)),
            )
            message_id = cursor.lastrowid
        assert message_id is not None
        return message_id

    def peek(self, limit: int) -> list[OutboxMessage]:
        """The ``limit`` oldest messages, oldest first; they stay until ``ack``."""
        with self._lock, self._translate("peek"):
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM messages ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            OutboxMessage(
                id=int(row[0]),
                topic=str(row[1]),
                payload=bytes(row[2]),
                qos=int(row[3]),
                retain=bool(row[4]),
            )
            for row in rows
        ]

    def ack(self, message_id: int) -> None:
        """Forget a message the broker acknowledged; acking it again does nothing."""
        with self._lock, self._translate("ack"):
            self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def __len__(self) -> int:
        with self._lock, self._translate("count"):
            return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    @property
    def dropped(self) -> int:
        """How many messages a full outbox has dropped, over the file's whole life."""
        with self._lock, self._translate("read the dropped counter"):
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return 0 if row is None else int(row[0])

    def next_sequence(self, name: str) -> int:
        """The next value of sequence ``name`` (1, 2, 3, …), committed before it returns."""
        with self._lock, self._translate(f"advance sequence {name!r}"), self._transaction():
            row = self._db.execute("SELECT value FROM sequences WHERE name = ?", (name,)).fetchone()
            value = 1 if row is None else int(row[0]) + 1
            self._db.execute(
                "INSERT INTO sequences (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
        return value

    def _add_counter(self, name: str, amount: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, amount),
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # BEGIN IMMEDIATE takes the write lock up front, so a read-then-write (the bound,
        # a sequence) cannot interleave with another writer of the same file.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextlib.contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: cannot {what}: {exc}") from exc
