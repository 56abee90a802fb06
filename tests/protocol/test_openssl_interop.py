"""The signature format is standard: OpenSSL verifies it with nothing of ours."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from protocol import Role, pae, verify_document
from protocol.release import Release
from tests.factories import Keyring, make_release


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
@pytest.mark.parametrize("tampered", [False, True], ids=["intact", "tampered"])
def test_openssl_verifies_the_signature_over_pae(
    tmp_path: Path, keyring: Keyring, tampered: bool
) -> None:
    envelope = keyring.sign(make_release(), Role.RELEASE)
    assert verify_document(envelope, Release, keyring.trust_root())
    payload = envelope.payload + (b" " if tampered else b"")
    (tmp_path / "pae.bin").write_bytes(pae(envelope.payload_type, payload))
    (tmp_path / "sig.bin").write_bytes(envelope.signatures[0].sig)
    (tmp_path / "pub.pem").write_bytes(keyring.keys[Role.RELEASE][0].public_key.to_pem())
    command = "openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in pae.bin -sigfile sig.bin"
    result = subprocess.run(
        command.split(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    if tampered:
        assert result.returncode != 0, result.stdout
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Signature Verified Successfully" in result.stdout
