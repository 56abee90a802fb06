"""The trust state file: round trips, and never a silent reset when it is damaged."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.errors import (
    BadSignatureError,
    DuplicateDeploymentError,
    LocalWriteError,
    ReplayedDeploymentError,
    TrustStateError,
)
from agent.update.state_files import load_trust_state, persist_trust_state
from agent.update.trust_state import TrustState
from protocol import Role, SigningKey
from tests.agent.conftest import Device, rotate
from tests.factories import NOW, Keyring


def test_trust_state_round_trips_through_disk(device: Device) -> None:
    device.deliver(device.deployment(sequence=7))
    device.deliver_command(device.command(sequence=2))
    device.commit("digits", 3)
    state = device.state()
    persist_trust_state(device.state_path, state)
    assert load_trust_state(device.state_path) == state
    assert (state.deployment_sequence("digits"), state.command_sequence, state.time_floor) == (
        7,
        2,
        NOW,
    )
    assert dict(state.committed) == {"digits": 3}


def test_rotated_trust_root_survives_restart(device: Device) -> None:
    successor, root_v2 = rotate(device.keyring, Role.ROOT, Role.DEPLOYMENT)
    device.deliver(
        device.deployment(trust_root=root_v2.to_json_obj(), signers=successor.keys[Role.DEPLOYMENT])
    )
    assert load_trust_state(device.state_path).trust_root == successor.trust_root()


def test_provisioning_refuses_a_trust_root_not_signed_by_its_own_root_keys() -> None:
    keyring = Keyring()
    forged = keyring.trust_root().sign([SigningKey.generate()])
    with pytest.raises(BadSignatureError):
        TrustState.initial(forged.to_bytes())


def test_missing_trust_state_is_an_error_not_a_fresh_device(tmp_path: Path) -> None:
    with pytest.raises(TrustStateError, match="provision"):
        load_trust_state(tmp_path / "trust-state.json")


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        obj[key] = value

    return mutate


def _tamper_trust_root(obj: dict[str, Any]) -> None:
    # Swap in a root listing an attacker's release key, signed by nobody we trust.
    attacker = Keyring()
    obj["trust_root"] = attacker.trust_root().sign([SigningKey.generate()]).to_json_obj()


CORRUPTIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "sequences reset by deletion": lambda obj: obj.pop("deployment_sequences"),
    "negative sequence": lambda obj: obj["deployment_sequences"].update(digits=-1),
    "sequence as text": lambda obj: obj["deployment_sequences"].update(digits="7"),
    "floor deleted": lambda obj: obj.pop("deployment_floor"),
    "sequence as bool": _set("command_sequence", True),
    "naive time floor": _set("time_floor", "2026-11-30T12:00:00"),
    "time floor not a time": _set("time_floor", "yesterday"),
    "committed not a map": _set("committed", [3]),
    "committed version as float": _set("committed", {"digits": 3.5}),
    "trust root version mismatch": _set("trust_root_version", 9),
    "trust root not self-signed": _tamper_trust_root,
    "trust root missing": lambda obj: obj.pop("trust_root"),
    "unknown format": _set("format", 3),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_trust_state_is_an_error(
    device: Device, corrupt: Callable[[dict[str, Any]], None]
) -> None:
    device.deliver(device.deployment(sequence=7))  # a mark to corrupt
    obj = json.loads(device.state_path.read_bytes())
    corrupt(obj)
    device.state_path.write_text(json.dumps(obj))
    with pytest.raises(TrustStateError):
        load_trust_state(device.state_path)


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"\xff\xfe", b"[]", b"null"],
    ids=["empty", "torn", "binary", "array", "null"],
)
def test_unreadable_trust_state_is_an_error(device: Device, content: bytes) -> None:
    device.state_path.write_bytes(content)
    with pytest.raises(TrustStateError):
        load_trust_state(device.state_path)


def test_crash_while_persisting_keeps_the_old_state(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = device.state_path.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("power cut")

    newer = device.state().record_commit("digits", 5)
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(LocalWriteError, match="power cut"):  # the agent's own error
        persist_trust_state(device.state_path, newer)
    monkeypatch.undo()
    assert device.state_path.read_bytes() == before
    assert [p.name for p in device.state_path.parent.iterdir()] == [device.state_path.name]


def test_state_is_immutable_and_copies_what_it_is_given(device: Device) -> None:
    committed = {"digits": 3}
    state = device.state().record_commit("faces", 1)
    state = TrustState(
        trust_root_envelope=state.trust_root_envelope,
        trust_root=state.trust_root,
        committed=committed,
    )
    committed["digits"] = 1
    assert state.committed_version("digits") == 3
    with pytest.raises(TypeError):
        state.committed["digits"] = 1  # type: ignore[index]


def test_effective_time_is_never_below_the_floor(device: Device) -> None:
    later = NOW + timedelta(hours=2)
    device.deliver(
        device.deployment(issued_at=later, expires=later + timedelta(hours=1)), now=later
    )
    assert device.state().effective_time(NOW) == later
    assert device.state().effective_time(later + timedelta(hours=1)) == later + timedelta(hours=1)


def test_a_format_1_state_keeps_its_one_mark_as_a_floor_for_every_model(device: Device) -> None:
    # What an agent before ADR 0003 wrote: one deployment mark for the device.
    obj = json.loads(device.state_path.read_bytes())
    for key in ("deployment_sequences", "deployment_floor"):
        del obj[key]
    obj |= {"format": 1, "deployment_sequence": 7}
    device.state_path.write_text(json.dumps(obj))

    device.refuse(device.deployment(sequence=7), DuplicateDeploymentError)
    device.refuse(
        device.deployment(sequence=6, model="vision", release={"model": "vision"}),
        ReplayedDeploymentError,
    )
    device.deliver(device.deployment(sequence=8, model="vision", release={"model": "vision"}))
    state = device.state()
    assert (state.deployment_sequence("vision"), state.deployment_sequence("digits")) == (8, 7)
