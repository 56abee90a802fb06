"""In auto mode each key has its own generated passphrase, in its own 0600 file.

Found in the security review: a controller that created its keys itself (no passphrase in
the environment) encrypted the root, release and deployment keys with one generated
passphrase, kept in ``keys/passphrase`` beside them. Whoever could read that file to use
the online deployment key could also unlock the root key (and so rotate in keys of their
own) and the release key (and so ship any model).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.keystore import KeyStore
from controller.passphrases import passphrase_file
from controller.signing import load_or_create_signer
from protocol import KeyFormatError, Role


def test_auto_mode_keys_share_one_passphrase_on_disk(tmp_path: Path) -> None:
    keys_dir = tmp_path / "data" / "keys"
    load_or_create_signer(keys_dir, {})  # auto mode: no passphrase in the environment
    store = KeyStore(keys_dir)
    stolen = passphrase_file(keys_dir, Role.DEPLOYMENT).read_bytes()

    assert store.load_signing_key(Role.DEPLOYMENT, stolen)
    for role in (Role.ROOT, Role.RELEASE):
        with pytest.raises(KeyFormatError):
            store.load_signing_key(role, stolen)
    assert not (keys_dir / "passphrase").exists()  # no file that unlocks them all
    for role in Role:
        assert passphrase_file(keys_dir, role).stat().st_mode & 0o777 == 0o600
