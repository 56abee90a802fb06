"""Trust root rotation, in the style of python-tuf's key rotation tests.

Each case is a chain of trust roots after version 1. ``keys`` are indexes into a pool of
root keys, ``sigs`` the keys that sign that version. The case says which version the
device ends on and which error stops it, if any.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from protocol import (
    Envelope,
    KeyNotInRoleError,
    ProtocolError,
    Role,
    RotationVersionError,
    SigningKey,
    ThresholdNotMetError,
    TrustRoot,
    verify_initial_trust_root,
    verify_trust_root_rotation,
)
from tests.factories import NOW

KEY_POOL = [SigningKey.generate() for _ in range(6)]
OTHER_ROLE_KEY = SigningKey.generate()


@dataclass(frozen=True)
class RootVersion:
    keys: list[int]
    threshold: int
    sigs: list[int]
    version: int | None = None  # defaults to the next one in the chain


@dataclass(frozen=True)
class Case:
    chain: list[RootVersion]
    error: type[ProtocolError] | None = None


def build(version: int, spec: RootVersion) -> Envelope:
    others = ([OTHER_ROLE_KEY.public_key], 1)
    trust_root = TrustRoot.build(
        version=spec.version or version,
        expires=NOW + timedelta(days=30),
        roles={
            Role.ROOT: ([KEY_POOL[i].public_key for i in spec.keys], spec.threshold),
            Role.RELEASE: others,
            Role.DEPLOYMENT: others,
        },
    )
    return trust_root.sign([KEY_POOL[i] for i in spec.sigs])


CASES = {
    "1-of-1 rotated": Case([RootVersion([0], 1, [0]), RootVersion([1], 1, [0, 1])]),
    "1-of-1 rotated, extra unused signature": Case(
        [RootVersion([0], 1, [0]), RootVersion([1], 1, [0, 1, 2])]
    ),
    "1-of-1 rotation not signed by the old key": Case(
        [RootVersion([0], 1, [0]), RootVersion([1], 1, [1])], KeyNotInRoleError
    ),
    "1-of-1 rotation not signed by the new key": Case(
        [RootVersion([0], 1, [0]), RootVersion([1], 1, [0])], KeyNotInRoleError
    ),
    "2-of-3 with one key rotated": Case(
        [RootVersion([0, 1, 2], 2, [0, 1]), RootVersion([0, 1, 3], 2, [1, 2, 3])]
    ),
    "2-of-3 with one key rotated, new threshold not reached": Case(
        [RootVersion([0, 1, 2], 2, [0, 1]), RootVersion([0, 1, 3], 2, [2, 3])],
        ThresholdNotMetError,
    ),
    "2-of-3 rotation not signed by 2 old keys": Case(
        [RootVersion([0, 1, 2], 2, [0, 1]), RootVersion([3, 4, 5], 2, [0, 3, 4])],
        ThresholdNotMetError,
    ),
    "2-of-3 rotation signed only by the new keys": Case(
        [RootVersion([0, 1, 2], 2, [0, 1]), RootVersion([3, 4, 5], 2, [3, 4, 5])],
        KeyNotInRoleError,
    ),
    "2-of-3 all keys rotated through an intermediate step": Case(
        [
            RootVersion([0, 1, 2], 2, [0, 1]),
            RootVersion([0, 1, 3, 4], 2, [0, 1, 3, 4]),
            RootVersion([3, 4, 5], 2, [0, 1, 3, 4]),
        ]
    ),
    "threshold raised from 1-of-3 to 2-of-3": Case(
        [RootVersion([0, 1, 2], 1, [0]), RootVersion([0, 1, 2], 2, [0, 1])]
    ),
    "threshold raised, signed by one key only": Case(
        [RootVersion([0, 1, 2], 1, [0]), RootVersion([0, 1, 2], 2, [0])],
        ThresholdNotMetError,
    ),
    "skipped version": Case(
        [RootVersion([0], 1, [0]), RootVersion([1], 1, [0, 1], version=3)],
        RotationVersionError,
    ),
    "same version replayed": Case(
        [RootVersion([0], 1, [0]), RootVersion([0], 1, [0], version=1)], RotationVersionError
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_trust_root_rotation(case: Case) -> None:
    trusted = verify_initial_trust_root(build(1, case.chain[0]))
    envelopes = [build(v, spec) for v, spec in enumerate(case.chain[1:], start=2)]
    if case.error is None:
        for envelope in envelopes:
            trusted = verify_trust_root_rotation(trusted, envelope)
        assert trusted.version == len(case.chain)
        return
    *accepted, refused = envelopes
    for envelope in accepted:
        trusted = verify_trust_root_rotation(trusted, envelope)
    with pytest.raises(case.error):
        verify_trust_root_rotation(trusted, refused)


def test_initial_trust_root_not_signed_by_its_own_root_keys_is_refused() -> None:
    with pytest.raises(ThresholdNotMetError):
        verify_initial_trust_root(build(1, RootVersion([0, 1], 2, [0])))


def test_rotation_needs_the_old_root_and_ignores_release_and_deployment_keys() -> None:
    trusted = verify_initial_trust_root(build(1, RootVersion([0], 1, [0])))
    successor = TrustRoot.build(
        version=2,
        expires=NOW + timedelta(days=30),
        roles={
            Role.ROOT: ([KEY_POOL[1].public_key], 1),
            Role.RELEASE: ([OTHER_ROLE_KEY.public_key], 1),
            Role.DEPLOYMENT: ([OTHER_ROLE_KEY.public_key], 1),
        },
    )
    # The online deployment key cannot rotate the root, even together with the new key.
    with pytest.raises(ProtocolError):
        verify_trust_root_rotation(trusted, successor.sign([OTHER_ROLE_KEY, KEY_POOL[1]]))
