"""``keys rotate`` killed at any step leaves the old key set or the new one, never a mix.

Found in the security review: a rotation wrote the new key over the old one before it
wrote the trust root that lists it; a crash in between left a key no trust root lists,
and everything signed with it was refused by every device.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import controller.keystore as keystore_module
from controller.keystore import KeyStore
from controller.passphrases import Passphrases
from controller.signing import Signer
from protocol import Role

PASSPHRASE = b"rotation test"
PASSPHRASES = dict.fromkeys(Role, PASSPHRASE)
NOW = datetime(2026, 12, 4, tzinfo=UTC)
# What a rotation writes and moves: the retired copy, the staged public and private key,
# the trust root's history entry and trust-root.json, then the two moves into place.
STEPS = 7


class CrashError(Exception):
    """The process dies here."""


def crash_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the ``step``-th file operation of the key store (0-based) never happen."""
    calls = {"n": 0}
    real_write, real_replace = keystore_module.write_atomic, os.replace

    def counted(real: Any) -> Any:
        def operation(*args: Any, **kwargs: Any) -> Any:
            if calls["n"] == step:
                raise CrashError(f"killed before file operation {step}")
            calls["n"] += 1
            return real(*args, **kwargs)

        return operation

    monkeypatch.setattr(keystore_module, "write_atomic", counted(real_write))
    # Only the key store's own moves (write_atomic's inner one is part of its write).
    monkeypatch.setattr(keystore_module, "os", SimpleNamespace(replace=counted(real_replace)))


def rotate_deployment_key(store: KeyStore) -> None:
    store.rotate(Role.DEPLOYMENT, root_passphrase=PASSPHRASE, key_passphrase=PASSPHRASE, now=NOW)


def deployment_key_id(directory: Path) -> tuple[int, str]:
    """What a controller starting on ``directory`` would sign with."""
    signer = Signer(KeyStore(directory), Passphrases.one_for_every_key(PASSPHRASE))
    return signer.trust_root.version, signer.deployment_key.key_id


@pytest.mark.parametrize("step", range(STEPS))
def test_a_rotation_killed_at_any_step_leaves_the_old_or_the_new_key_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    store = KeyStore(tmp_path / "keys")
    store.init(passphrases=PASSPHRASES, now=NOW)
    old = deployment_key_id(store.directory)

    with monkeypatch.context() as patched:
        crash_at(patched, step)
        with pytest.raises(CrashError):
            rotate_deployment_key(store)

    version, key_id = deployment_key_id(store.directory)  # finishes or undoes it
    assert (version, key_id) == old or (version == 2 and key_id != old[1])
    assert store.load_public_key(Role.DEPLOYMENT).key_id == key_id
    assert not list(store.directory.glob("*.next"))
    # And the next rotation works from there.
    rotate_deployment_key(store)
    assert deployment_key_id(store.directory)[0] == version + 1


def test_the_crash_points_cover_the_whole_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # STEPS is exactly the number of file operations: one more never fires.
    store = KeyStore(tmp_path / "keys")
    store.init(passphrases=PASSPHRASES, now=NOW)
    crash_at(monkeypatch, STEPS)
    rotate_deployment_key(store)
    monkeypatch.undo()
    assert deployment_key_id(store.directory)[0] == 2
