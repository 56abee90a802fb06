"""`edgefleet keys` and `edgefleet doc verify`, run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.keystore import KeyStore
from protocol import (
    Envelope,
    Role,
    verify_initial_trust_root,
    verify_trust_root_rotation,
)
from tests.factories import make_deployment, make_release

PASSPHRASE = "correct horse battery staple"


def edgefleet(
    *args: str,
    passphrase: str | None = PASSPHRASE,
    stdin: str | None = None,
    environ: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("KEY_PASSPHRASE")}
    if passphrase is not None:
        env["EDGEFLEET_KEY_PASSPHRASE"] = passphrase
    env.update(environ or {})
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    result = edgefleet("keys", "init", "--dir", str(directory))
    assert result.returncode == 0, result.stderr
    return directory


def test_keys_init_writes_encrypted_keys_and_a_self_signed_trust_root(key_dir: Path) -> None:
    for role in Role:
        private = key_dir / f"{role.value}.key.pem"
        assert private.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert private.stat().st_mode & 0o777 == 0o600
        assert (key_dir / f"{role.value}.pub.pem").exists()
    trust_root = verify_initial_trust_root(
        Envelope.from_bytes((key_dir / "trust-root.json").read_bytes())
    )
    assert trust_root.version == 1
    assert (key_dir / "trust-roots" / "1.json").read_bytes() == (
        key_dir / "trust-root.json"
    ).read_bytes()


def test_keys_init_refuses_to_replace_existing_keys(key_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in key_dir.glob("*.pem")}
    result = edgefleet("keys", "init", "--dir", str(key_dir))
    assert result.returncode == 1
    assert "refusing to replace keys" in result.stderr
    assert {p.name: p.read_bytes() for p in key_dir.glob("*.pem")} == before


def test_passphrase_is_never_a_command_line_argument(tmp_path: Path) -> None:
    result = edgefleet("keys", "init", "--dir", str(tmp_path), "--passphrase", "x")
    assert result.returncode == 2
    assert not (tmp_path / "trust-root.json").exists()


def test_each_key_s_passphrase_is_typed_at_a_prompt_that_names_it(tmp_path: Path) -> None:
    typed = "".join(f"{role.value} typed\n" * 2 for role in Role)  # each one confirmed
    result = edgefleet("keys", "init", "--dir", str(tmp_path), passphrase=None, stdin=typed)
    assert result.returncode == 0, result.stderr
    for role in Role:
        assert f"Passphrase for the {role.value} key" in result.stdout + result.stderr
        KeyStore(tmp_path).load_signing_key(role, f"{role.value} typed".encode())


def test_each_key_takes_its_own_variable(tmp_path: Path) -> None:
    environ = {f"EDGEFLEET_{role.value.upper()}_KEY_PASSPHRASE": role.value for role in Role}
    result = edgefleet("keys", "init", "--dir", str(tmp_path), passphrase=None, environ=environ)
    assert result.returncode == 0, result.stderr
    for role in Role:
        KeyStore(tmp_path).load_signing_key(role, role.value.encode())

    rotate = ("keys", "rotate", "--dir", str(tmp_path), "--role", "deployment")
    rotated = edgefleet(*rotate, passphrase=None, environ=environ)
    assert rotated.returncode == 0, rotated.stderr
    KeyStore(tmp_path).load_signing_key(Role.DEPLOYMENT, b"deployment")  # the new key


def test_keys_rotate_names_the_key_a_wrong_passphrase_does_not_unlock(key_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in key_dir.iterdir() if p.is_file()}
    rotate = ("keys", "rotate", "--dir", str(key_dir), "--role", "deployment")
    result = edgefleet(*rotate, environ={"EDGEFLEET_DEPLOYMENT_KEY_PASSPHRASE": "no"})
    assert result.returncode == 1
    assert "EDGEFLEET_DEPLOYMENT_KEY_PASSPHRASE does not unlock the deployment key" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in key_dir.iterdir() if p.is_file()} == before


def test_release_sign_names_the_release_key_and_its_variable(key_dir: Path, tmp_path: Path) -> None:
    unsigned = tmp_path / "unsigned.json"
    unsigned.write_text(json.dumps(make_release().to_json_obj()))
    sign = ("release", "sign", str(unsigned), "--key", str(key_dir / "release.key.pem"))

    refused = edgefleet(*sign, environ={"EDGEFLEET_RELEASE_KEY_PASSPHRASE": "no"})
    assert refused.returncode == 1
    assert "EDGEFLEET_RELEASE_KEY_PASSPHRASE does not unlock the release key" in refused.stderr
    assert not unsigned.with_suffix(".signed.json").exists()

    signed = edgefleet(*sign, environ={"EDGEFLEET_DEPLOYMENT_KEY_PASSPHRASE": "not used"})
    assert signed.returncode == 0, signed.stderr  # EDGEFLEET_KEY_PASSPHRASE, the fallback
    assert unsigned.with_suffix(".signed.json").exists()


@pytest.mark.parametrize("role", list(Role))
def test_keys_rotate_writes_the_next_trust_root_signed_for_rotation(
    key_dir: Path, role: Role
) -> None:
    v1 = KeyStore(key_dir).load_trust_root()
    old_public = (key_dir / f"{role.value}.pub.pem").read_bytes()

    result = edgefleet("keys", "rotate", "--dir", str(key_dir), "--role", role.value)

    assert result.returncode == 0, result.stderr
    v2 = verify_trust_root_rotation(
        v1, Envelope.from_bytes((key_dir / "trust-root.json").read_bytes())
    )
    assert v2.version == 2
    assert (key_dir / f"{role.value}.pub.pem").read_bytes() != old_public
    assert v2.role_keys(role) != v1.role_keys(role)
    assert all(v2.role_keys(r) == v1.role_keys(r) for r in Role if r is not role)
    assert (key_dir / "retired" / f"{role.value}.v1.key.pem").exists()


def test_keys_rotate_with_a_wrong_passphrase_changes_nothing(key_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in key_dir.iterdir() if p.is_file()}
    result = edgefleet(
        "keys", "rotate", "--dir", str(key_dir), "--role", "release", passphrase="no"
    )
    assert result.returncode == 1
    assert "cannot read the private key" in result.stderr
    assert {p.name: p.read_bytes() for p in key_dir.iterdir() if p.is_file()} == before


def signed_release_file(key_dir: Path, tmp_path: Path) -> Path:
    key = KeyStore(key_dir).load_signing_key(Role.RELEASE, PASSPHRASE.encode())
    path = tmp_path / "release.json"
    path.write_bytes(make_release().sign([key]).to_bytes())
    return path


def test_doc_verify_reports_a_verified_release(key_dir: Path, tmp_path: Path) -> None:
    document = signed_release_file(key_dir, tmp_path)
    result = edgefleet(
        "doc", "verify", "--trust-root", str(key_dir / "trust-root.json"), str(document)
    )
    assert result.returncode == 0, result.stderr
    assert "document:     Release" in result.stdout
    assert "(release)" in result.stdout
    assert "model digits version 3" in result.stdout
    assert "result:       verified" in result.stdout


def test_doc_verify_fails_on_a_tampered_release(key_dir: Path, tmp_path: Path) -> None:
    document = signed_release_file(key_dir, tmp_path)
    envelope = Envelope.from_bytes(document.read_bytes())
    tampered = Envelope(
        envelope.payload_type,
        envelope.payload.replace(b'"version":3', b'"version":4'),
        envelope.signatures,
    )
    document.write_bytes(tampered.to_bytes())
    result = edgefleet(
        "doc", "verify", "--trust-root", str(key_dir / "trust-root.json"), str(document)
    )
    assert result.returncode == 1
    assert "NOT verified: BadSignatureError" in result.stdout


def test_doc_verify_fails_on_an_expired_deployment(key_dir: Path, tmp_path: Path) -> None:
    store = KeyStore(key_dir)
    release = make_release().sign([store.load_signing_key(Role.RELEASE, PASSPHRASE.encode())])
    issued = datetime.now(UTC) - timedelta(hours=2)
    deployment = make_deployment(release, issued_at=issued, expires=issued + timedelta(hours=1))
    document = tmp_path / "deployment.json"
    deployment_key = store.load_signing_key(Role.DEPLOYMENT, PASSPHRASE.encode())
    document.write_bytes(deployment.sign([deployment_key]).to_bytes())
    result = edgefleet(
        "doc", "verify", "--trust-root", str(key_dir / "trust-root.json"), str(document)
    )
    assert result.returncode == 1
    assert "release digits version 3 (verified)" in result.stdout
    assert "NOT verified: ExpiredError" in result.stdout


def test_doc_verify_explains_a_file_that_is_not_an_envelope(key_dir: Path, tmp_path: Path) -> None:
    document = tmp_path / "junk.json"
    document.write_text("{not json")
    result = edgefleet(
        "doc", "verify", "--trust-root", str(key_dir / "trust-root.json"), str(document)
    )
    assert result.returncode == 1
    assert "envelope is not JSON" in result.stderr
