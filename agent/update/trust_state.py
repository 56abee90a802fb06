"""The trust facts of one device, and what a trust check hands back.

``TrustState`` is a frozen value: every change returns a new state. Pure: reading and
writing the file that holds it is ``state_files``'s job (``load_trust_state``,
``persist_trust_state``). ``VerifiedDeployment`` and ``VerifiedCommand`` are what
``agent.update.trust`` returns and what a state accepts, so this module imports nothing
of ``trust`` (no import cycle).

Invariants:
- the high-water marks only rise: each model's deployment sequence, ``command_sequence``,
  ``time_floor``, every committed version and the trust root version never go down,
  whatever order the ``accept_*``/``record_commit`` calls come in;
- the trust root held is always one that verified: first through
  ``verify_initial_trust_root`` (provisioning), later only through rotation
  (``agent.update.trust``); on load its self-signature is checked again, so a bit flip or an
  edited file is an error, not a new authority;
- a corrupt persisted form is a ``TrustStateError``, never a silent reset: a reset
  would re-open every replay the marks were there to stop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeGuard

import protocol
from protocol import Command, Deployment, Envelope, Release, TrustRoot

from ..errors import (
    DuplicateCommandError,
    DuplicateDeploymentError,
    ReplayedCommandError,
    ReplayedDeploymentError,
    TrustStateError,
    translate_protocol_error,
)

__all__ = [
    "TIME_FLOOR_UNSET",
    "TRUST_STATE_FORMAT",
    "TrustState",
    "VerifiedCommand",
    "VerifiedDeployment",
]

# Format 2 keeps a deployment mark per model (ADR 0003); format 1's single mark is read
# as a floor under every model's mark, so nothing it refused becomes acceptable.
TRUST_STATE_FORMAT = 2
# Before any document was accepted there is no floor; the epoch is below every real time.
TIME_FLOOR_UNSET = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class VerifiedDeployment:
    """A deployment that passed every check, with what it was checked against."""

    deployment: Deployment
    release: Release | None  # None: the deployment removes its model, or orders a shadow
    effective_time: datetime
    trust_root: TrustRoot
    trust_root_envelope: Envelope
    # The candidate a shadow order carries (``deployment.shadow``), verified like a release.
    shadow_release: Release | None = None


@dataclass(frozen=True)
class VerifiedCommand:
    command: Command
    effective_time: datetime
    trust_root: TrustRoot
    trust_root_envelope: Envelope


@dataclass(frozen=True)
class TrustState:
    """What this device trusts and the highest marks it has accepted."""

    trust_root_envelope: Envelope
    trust_root: TrustRoot
    # The highest deployment sequence accepted, per model; below every one, the floor.
    deployment_sequences: Mapping[str, int] = field(default_factory=dict)
    deployment_floor: int = 0
    command_sequence: int = 0
    time_floor: datetime = TIME_FLOOR_UNSET
    committed: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Read-only copies, so a caller's dict can never change a state behind its back.
        object.__setattr__(self, "committed", MappingProxyType(dict(self.committed)))
        object.__setattr__(
            self, "deployment_sequences", MappingProxyType(dict(self.deployment_sequences))
        )
        if self.time_floor.tzinfo is None:
            raise ValueError("time_floor must be timezone-aware")

    @classmethod
    def initial(cls, trust_root_envelope_bytes: bytes) -> TrustState:
        """The state of a freshly provisioned device; raises a ``RefusalError``."""
        try:
            envelope = Envelope.from_bytes(trust_root_envelope_bytes)
            trust_root = protocol.verify_initial_trust_root(envelope)
        except protocol.ProtocolError as exc:
            raise translate_protocol_error(exc, what="provisioned trust root") from exc
        return cls(trust_root_envelope=envelope, trust_root=trust_root)

    @property
    def trust_root_version(self) -> int:
        return self.trust_root.version

    def effective_time(self, now: datetime) -> datetime:
        """``max(now, time_floor)``: a clock set back cannot revive an expired document."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return max(now, self.time_floor)

    def deployment_sequence(self, model: str) -> int:
        """The highest deployment sequence accepted for ``model`` (or the floor)."""
        return max(self.deployment_floor, self.deployment_sequences.get(model, 0))

    def committed_version(self, model: str) -> int:
        """The highest committed version of ``model``; 0 when none was."""
        return self.committed.get(model, 0)

    def with_verified_trust_root(self, envelope: Envelope, trust_root: TrustRoot) -> TrustState:
        """This state holding ``trust_root`` if it is newer.

        Only for roots that passed the rotation rules (``agent.update.trust`` walks them): this
        method trusts its argument.
        """
        if trust_root.version <= self.trust_root.version:
            return self
        return replace(self, trust_root_envelope=envelope, trust_root=trust_root)

    def accept_deployment(self, verified: VerifiedDeployment) -> TrustState:
        """This state after accepting ``verified``: its trust root, sequence and issue time.

        The sequence is checked again, so a verification that raced with another accept
        cannot lower or repeat the mark.
        """
        deployment = verified.deployment
        mark = self.deployment_sequence(deployment.model)
        if deployment.sequence <= mark:
            error = (
                DuplicateDeploymentError if deployment.sequence == mark else ReplayedDeploymentError
            )
            raise error(
                f"deployment {deployment.sequence} of {deployment.model} is not above {mark}"
            )
        return replace(
            self.with_verified_trust_root(verified.trust_root_envelope, verified.trust_root),
            deployment_sequences={
                **self.deployment_sequences,
                deployment.model: deployment.sequence,
            },
            time_floor=max(self.time_floor, deployment.issued_at),
        )

    def accept_command(self, verified: VerifiedCommand) -> TrustState:
        """This state after accepting ``verified``; command sequences count on their own."""
        command = verified.command
        if command.sequence <= self.command_sequence:
            error = (
                DuplicateCommandError
                if command.sequence == self.command_sequence
                else ReplayedCommandError
            )
            raise error(f"command {command.sequence} is not above {self.command_sequence}")
        return replace(
            self.with_verified_trust_root(verified.trust_root_envelope, verified.trust_root),
            command_sequence=command.sequence,
            time_floor=max(self.time_floor, command.issued_at),
        )

    def record_commit(self, model: str, version: int) -> TrustState:
        """This state after ``model`` ``version`` passed probation.

        A committed rollback to a lower version leaves the mark where it was: the mark
        is the highest ever committed, so going below it again needs ``rollback`` again.
        """
        committed = dict(self.committed)
        committed[model] = max(committed.get(model, 0), version)
        return replace(self, committed=committed)

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "format": TRUST_STATE_FORMAT,
            "trust_root": self.trust_root_envelope.to_json_obj(),
            "trust_root_version": self.trust_root.version,
            "deployment_sequences": dict(sorted(self.deployment_sequences.items())),
            "deployment_floor": self.deployment_floor,
            "command_sequence": self.command_sequence,
            "time_floor": self.time_floor.isoformat(),
            "committed": dict(sorted(self.committed.items())),
        }

    @classmethod
    def from_json_obj(cls, obj: Any) -> TrustState:
        """Parse and re-check a persisted state; raises ``TrustStateError``."""
        if not isinstance(obj, dict) or obj.get("format") not in (1, TRUST_STATE_FORMAT):
            raise TrustStateError(f"not a trust state of format 1..{TRUST_STATE_FORMAT}")
        try:
            envelope = Envelope.from_json_obj(obj["trust_root"])
            # Integrity, not authority: authority came from provisioning and rotation.
            trust_root = protocol.verify_initial_trust_root(envelope)
        except (KeyError, protocol.ProtocolError) as exc:
            raise TrustStateError(f"trusted trust root does not verify: {exc}") from exc
        if obj.get("trust_root_version") != trust_root.version:
            raise TrustStateError("trust_root_version does not match the trust root")
        if obj["format"] == 1:
            sequences, floor = {}, _count(obj, "deployment_sequence")
        else:
            sequences, floor = _counts(obj, "deployment_sequences"), _count(obj, "deployment_floor")
        return cls(
            trust_root_envelope=envelope,
            trust_root=trust_root,
            deployment_sequences=sequences,
            deployment_floor=floor,
            command_sequence=_count(obj, "command_sequence"),
            time_floor=_timestamp(obj, "time_floor"),
            committed=_counts(obj, "committed"),
        )


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _counts(obj: dict[str, Any], key: str) -> dict[str, int]:
    value = obj.get(key)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and _is_count(v) for k, v in value.items()
    ):
        raise TrustStateError(f"{key} is not a map of name to non-negative integer")
    return value


def _count(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if not _is_count(value):
        raise TrustStateError(f"{key} is not a non-negative integer")
    return value


def _timestamp(obj: dict[str, Any], key: str) -> datetime:
    value = obj.get(key)
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise TrustStateError(f"{key} is not a timestamp with an offset")
    return parsed
