"""The update's files: the trust state, the journal, and the releases this device knows.

Each is written with ``durable.write_json_atomic`` (a crash leaves the old file or the
new one, never a torn one) and read with a size cap. The values they hold are pure and
live elsewhere: ``TrustState`` in ``trust_state``, ``Journal`` in ``machine``.

Invariants:
- the file system's errors become the agent's own here, once: a write that fails (a
  full disk, the descriptor limit's "Too many open files", permissions) is a
  ``LocalWriteError`` naming the file; an unreadable trust state is a
  ``TrustStateError`` and an unreadable journal a ``JournalError``, never a reset;
- the journal is persisted before the step it names runs (``advance_journal``), and at
  the transition cap ``give_up()`` is persisted before ``TransitionCapError`` is raised;
- the releases file only names releases in reports: an unreadable one is ignored;
- the trust state and the releases file are shared by all the models of a device: each is
  held by one ``TrustKeeper`` / ``ReleaseIndex`` that every model's updater writes
  through, so one model's write never drops another's mark.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from durable import read_json, write_json_atomic
from protocol import ProtocolError, Release

from ..errors import AgentError, JournalError, LocalWriteError, TransitionCapError, TrustStateError
from .machine import Journal, UpdateEvent, recover
from .trust_state import TrustState, VerifiedCommand, VerifiedDeployment

__all__ = [
    "ReleaseIndex",
    "TrustKeeper",
    "advance_journal",
    "load_journal",
    "load_releases",
    "load_trust_state",
    "persist_journal",
    "persist_releases",
    "persist_trust_state",
    "recover_journal",
]

logger = logging.getLogger(__name__)


def persist_json(path: Path, value: Any, *, what: str) -> None:
    """Write ``value`` to ``path`` atomically; ``LocalWriteError`` when the system refuses."""
    try:
        write_json_atomic(path, value)
    except OSError as exc:
        raise LocalWriteError(f"cannot write the {what} {path}: {exc}") from exc


def load_trust_state(path: Path) -> TrustState:
    """Read the device's trust state; a missing or corrupt file is a ``TrustStateError``."""
    try:
        obj = read_json(path)
    except FileNotFoundError as exc:
        raise TrustStateError(f"no trust state at {path}: provision the device first") from exc
    except (OSError, ValueError) as exc:
        raise TrustStateError(f"trust state {path} is unreadable: {exc}") from exc
    try:
        return TrustState.from_json_obj(obj)
    except TrustStateError as exc:
        raise TrustStateError(f"trust state {path} is corrupt: {exc}") from exc


def persist_trust_state(path: Path, state: TrustState) -> None:
    """Write ``state`` atomically: a crash leaves the old state or the new one."""
    persist_json(path, state.to_json_obj(), what="trust state")


def load_journal(path: Path) -> Journal | None:
    """The persisted journal, or ``None`` when no update was ever journaled."""
    try:
        obj = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise JournalError(f"journal {path} is unreadable: {exc}") from exc
    return Journal.from_json_obj(obj)


def persist_journal(path: Path, journal: Journal) -> None:
    """Write ``journal`` atomically and durably, before the step it names runs."""
    persist_json(path, journal.to_json_obj(), what="update journal")


def advance_journal(
    path: Path, journal: Journal, event: UpdateEvent, *, reason: str | None = None
) -> Journal:
    """``journal.step(event)`` persisted; at the cap, persist ``give_up()`` and raise."""
    try:
        moved = journal.step(event, reason=reason)
    except TransitionCapError:
        persist_journal(path, journal.give_up())
        raise
    persist_journal(path, moved)
    return moved


def recover_journal(path: Path) -> Journal | None:
    """At boot: load the journal, ``recover`` it and persist the result before resuming.

    ``None`` when there is no journal. At the cap, ``give_up()`` is persisted and
    ``TransitionCapError`` raised: a deployment that crashes every boot ends here.
    """
    journal = load_journal(path)
    if journal is None or journal.terminal:
        return journal
    try:
        recovered = recover(journal)
    except TransitionCapError:
        persist_journal(path, journal.give_up())
        raise
    persist_journal(path, recovered)
    return recovered


def load_releases(path: Path) -> dict[str, Release]:
    """The releases this device verified, by artifact SHA-256; ``{}`` if unreadable."""
    if not path.exists():
        return {}
    try:
        return {sha: Release.from_json_obj(obj) for sha, obj in read_json(path).items()}
    except (AgentError, ProtocolError, AttributeError, OSError, ValueError):
        logger.warning("ignoring unreadable %s: it only names releases in reports", path)
        return {}


def persist_releases(path: Path, releases: dict[str, Release]) -> None:
    persist_json(
        path, {sha: known.to_json_obj() for sha, known in releases.items()}, what="releases file"
    )


class TrustKeeper:
    """The device's one trust state and its file: every change is persisted before use."""

    def __init__(self, path: Path, state: TrustState) -> None:
        self.path = path
        self.state = state

    def accept_deployment(self, verified: VerifiedDeployment) -> None:
        self._persist(self.state.accept_deployment(verified))

    def accept_command(self, verified: VerifiedCommand) -> None:
        self._persist(self.state.accept_command(verified))

    def record_commit(self, model: str, version: int) -> None:
        self._persist(self.state.record_commit(model, version))

    def _persist(self, state: TrustState) -> None:
        persist_trust_state(self.path, state)
        self.state = state


class ReleaseIndex:
    """Which release each stored artifact was deployed as, for all models of the device."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._releases = load_releases(path)

    def get(self, sha256: str | None) -> Release | None:
        return None if sha256 is None else self._releases.get(sha256)

    def add(self, release: Release) -> None:
        self._releases[release.artifact.sha256] = release
        persist_releases(self.path, self._releases)
