"""The agents of one process (a simulator's thousands) share a parsed trust root: the
same verified bytes give the same frozen value, so holding one copy changes nothing."""

from __future__ import annotations

from pathlib import Path

from agent.daemon import _shared_trust_root
from agent.update.state_files import load_trust_state, persist_trust_state
from agent.update.trust_state import TrustState
from tests.factories import Keyring


def test_devices_loading_the_same_trust_root_share_one_parsed_copy(
    keyring: Keyring, tmp_path: Path
) -> None:
    provisioned = keyring.signed_trust_root().to_bytes()
    first = _shared_trust_root(TrustState.initial(provisioned))
    persist_trust_state(tmp_path / "trust.json", first.record_commit("digits", 3))

    second = _shared_trust_root(load_trust_state(tmp_path / "trust.json"))

    assert second.trust_root is first.trust_root
    assert second.trust_root_envelope is first.trust_root_envelope
    # Only the trust root is shared: each device keeps its own marks.
    assert second.committed_version("digits") == 3
    assert first.committed_version("digits") == 0


def test_another_fleets_trust_root_is_not_replaced_by_a_shared_one(keyring: Keyring) -> None:
    first = _shared_trust_root(TrustState.initial(keyring.signed_trust_root().to_bytes()))
    other = TrustState.initial(Keyring().signed_trust_root().to_bytes())

    shared = _shared_trust_root(other)

    assert shared.trust_root is other.trust_root
    assert shared.trust_root != first.trust_root
