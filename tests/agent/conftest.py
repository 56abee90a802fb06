"""A provisioned device with its trust state on disk, and documents signed on demand.

``Device.deliver`` does what the daemon will do with a deployment: load the state,
verify, accept, persist. ``Device.refuse`` checks the two halves of every refusal: the
specific error, and the state file's bytes unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.errors import AgentError
from agent.update.state_files import load_trust_state, persist_trust_state
from agent.update.trust import verify_command, verify_deployment
from agent.update.trust_state import TrustState, VerifiedCommand, VerifiedDeployment
from protocol import Command, Envelope, Role, SigningKey
from tests.factories import NOW, Keyring, make_deployment, make_release

DEVICE_ID = "cam-berlin-0001"


@dataclass
class Device:
    keyring: Keyring
    state_path: Path

    def state(self) -> TrustState:
        return load_trust_state(self.state_path)

    def deliver(self, envelope_bytes: bytes, *, now: datetime = NOW) -> VerifiedDeployment:
        state = self.state()
        verified = verify_deployment(envelope_bytes, state, device_id=DEVICE_ID, now=now)
        persist_trust_state(self.state_path, state.accept_deployment(verified))
        return verified

    def deliver_command(self, envelope_bytes: bytes, *, now: datetime = NOW) -> VerifiedCommand:
        state = self.state()
        verified = verify_command(envelope_bytes, state, device_id=DEVICE_ID, now=now)
        persist_trust_state(self.state_path, state.accept_command(verified))
        return verified

    def refuse(
        self,
        envelope_bytes: bytes,
        error: type[AgentError],
        *,
        now: datetime = NOW,
        command: bool = False,
    ) -> pytest.ExceptionInfo[AgentError]:
        before = self.state_path.read_bytes()
        deliver = self.deliver_command if command else self.deliver
        with pytest.raises(error) as info:
            deliver(envelope_bytes, now=now)
        assert self.state_path.read_bytes() == before
        return info

    def commit(self, model: str, version: int) -> None:
        persist_trust_state(self.state_path, self.state().record_commit(model, version))

    def deployment(
        self,
        *,
        release: dict[str, Any] | None = None,
        release_signers: list[SigningKey] | None = None,
        signers: list[SigningKey] | None = None,
        **overrides: Any,
    ) -> bytes:
        """A deployment envelope as the controller would publish it, as bytes."""
        release_envelope = make_release(**(release or {})).sign(
            release_signers or self.keyring.keys[Role.RELEASE]
        )
        deployment = make_deployment(release_envelope, **overrides)
        return deployment.sign(signers or self.keyring.keys[Role.DEPLOYMENT]).to_bytes()

    def command(self, *, signers: list[SigningKey] | None = None, **overrides: Any) -> bytes:
        fields: dict[str, Any] = {
            "device_id": DEVICE_ID,
            "sequence": 1,
            "issued_at": NOW,
            "expires": NOW + timedelta(hours=1),
            "action": "resync",
        }
        fields.update(overrides)
        command = Command(**fields)
        return command.sign(signers or self.keyring.keys[Role.DEPLOYMENT]).to_bytes()


def rotate(keyring: Keyring, *roles: Role) -> tuple[Keyring, Envelope]:
    """The next keyring, with fresh keys for ``roles``, and its trust root signed by the
    old and the new root keys (docs/protocol.md §5.2)."""
    keys = {role: [SigningKey.generate()] if role in roles else keyring.keys[role] for role in Role}
    successor = Keyring(keys=keys, thresholds=dict(keyring.thresholds), version=keyring.version + 1)
    signers = [*keyring.keys[Role.ROOT], *successor.keys[Role.ROOT]]
    return successor, successor.trust_root().sign(signers)


@pytest.fixture
def device(tmp_path: Path, keyring: Keyring) -> Device:
    state = TrustState.initial(keyring.signed_trust_root().to_bytes())
    path = tmp_path / "trust-state.json"
    persist_trust_state(path, state)
    return Device(keyring, path)
