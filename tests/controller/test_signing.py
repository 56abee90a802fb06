"""Each signing key has its own passphrase: its variable, the shared one, or auto mode's files."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.errors import ConfigError, MissingPassphraseError, WrongPassphraseError
from controller.keystore import KeyStore
from controller.passphrases import Passphrases, passphrase_file
from controller.signing import load_or_create_signer
from protocol import KeyFormatError, Role

PER_ROLE = {
    "EDGEFLEET_ROOT_KEY_PASSPHRASE": "root passphrase",
    "EDGEFLEET_RELEASE_KEY_PASSPHRASE": "release passphrase",
    "EDGEFLEET_DEPLOYMENT_KEY_PASSPHRASE": "deployment passphrase",
}
NOW = datetime(2026, 12, 4, tzinfo=UTC)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "keys"


def unlocks(keys_dir: Path, role: Role, passphrase: str | bytes) -> bool:
    secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
    try:
        KeyStore(keys_dir).load_signing_key(role, secret)
    except KeyFormatError:
        return False
    return True


def test_each_key_is_encrypted_with_its_own_variable(keys_dir: Path) -> None:
    signer = load_or_create_signer(keys_dir, PER_ROLE)

    assert signer.deployment_key.key_id in signer.trust_root.role_keys(Role.DEPLOYMENT)
    for role in Role:
        own = PER_ROLE[f"EDGEFLEET_{role.value.upper()}_KEY_PASSPHRASE"]
        assert [unlocks(keys_dir, r, own) for r in Role] == [r is role for r in Role]
    assert not list(keys_dir.glob("passphrase*"))  # all given: nothing written


def test_the_shared_variable_unlocks_every_key_without_its_own(keys_dir: Path) -> None:
    environ = {"EDGEFLEET_KEY_PASSPHRASE": "shared", "EDGEFLEET_DEPLOYMENT_KEY_PASSPHRASE": "d"}
    load_or_create_signer(keys_dir, environ)

    assert unlocks(keys_dir, Role.ROOT, "shared")
    assert unlocks(keys_dir, Role.RELEASE, "shared")
    assert unlocks(keys_dir, Role.DEPLOYMENT, "d")
    assert load_or_create_signer(keys_dir, environ).release_key


def test_one_passphrase_for_every_key_keeps_working(keys_dir: Path) -> None:
    environ = {"EDGEFLEET_KEY_PASSPHRASE": "one for all"}
    first = load_or_create_signer(keys_dir, environ)
    again = load_or_create_signer(keys_dir, environ)
    assert again.deployment_key.key_id == first.deployment_key.key_id
    assert all(unlocks(keys_dir, role, "one for all") for role in Role)


def test_a_systemd_credential_gives_a_key_its_passphrase(tmp_path: Path, keys_dir: Path) -> None:
    load_or_create_signer(keys_dir, PER_ROLE)
    credentials = tmp_path / "credentials"  # what LoadCredentialEncrypted= makes
    credentials.mkdir()
    (credentials / "EDGEFLEET_DEPLOYMENT_KEY_PASSPHRASE").write_bytes(b"deployment passphrase\n")

    signer = load_or_create_signer(
        keys_dir, {"CREDENTIALS_DIRECTORY": str(credentials)}, release_key_online=False
    )

    assert signer.deployment_key.key_id in signer.trust_root.role_keys(Role.DEPLOYMENT)


def test_a_wrong_deployment_passphrase_names_the_key_and_the_variable(keys_dir: Path) -> None:
    load_or_create_signer(keys_dir, PER_ROLE)
    wrong = {**PER_ROLE, "EDGEFLEET_DEPLOYMENT_KEY_PASSPHRASE": "not it"}

    with pytest.raises(WrongPassphraseError) as refused:
        load_or_create_signer(keys_dir, wrong)

    assert isinstance(refused.value, ConfigError)
    message = str(refused.value)
    assert "deployment key" in message
    assert "EDGEFLEET_DEPLOYMENT_KEY_PASSPHRASE" in message
    assert "not it" not in message


def test_a_serving_controller_with_a_wrong_deployment_passphrase_exits_without_a_traceback(
    tmp_path: Path, keys_dir: Path
) -> None:
    load_or_create_signer(keys_dir, PER_ROLE)
    env = {k: v for k, v in os.environ.items() if "PASSPHRASE" not in k}
    env.update(PER_ROLE, EDGEFLEET_DEPLOYMENT_KEY_PASSPHRASE="not it")
    env.update(EDGEFLEET_DATA_DIR=str(keys_dir.parent), EDGEFLEET_PORT="0", EDGEFLEET_MQTT_PORT="0")

    result = subprocess.run(
        [sys.executable, "-m", "controller", "controller", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "does not unlock the deployment key" in result.stderr
    assert "EDGEFLEET_DEPLOYMENT_KEY_PASSPHRASE" in result.stderr


def test_an_offline_release_key_controller_needs_only_the_deployment_passphrase(
    keys_dir: Path,
) -> None:
    load_or_create_signer(keys_dir, PER_ROLE)
    only_deployment = {"EDGEFLEET_DEPLOYMENT_KEY_PASSPHRASE": "deployment passphrase"}

    signer = load_or_create_signer(keys_dir, only_deployment, release_key_online=False)

    assert signer.deployment_key.key_id in signer.trust_root.role_keys(Role.DEPLOYMENT)
    with pytest.raises(MissingPassphraseError, match="EDGEFLEET_RELEASE_KEY_PASSPHRASE"):
        load_or_create_signer(keys_dir, only_deployment)  # the release key online


def test_the_serving_controller_never_unlocks_the_root_key(keys_dir: Path) -> None:
    load_or_create_signer(keys_dir, PER_ROLE)
    KeyStore(keys_dir).private_key_path(Role.ROOT).unlink()  # kept offline
    environ = {k: v for k, v in PER_ROLE.items() if "ROOT" not in k}
    assert load_or_create_signer(keys_dir, environ).trust_root.version == 1


def test_auto_mode_writes_a_different_passphrase_per_key_in_0600_files(keys_dir: Path) -> None:
    first = load_or_create_signer(keys_dir, {})

    files = {role: passphrase_file(keys_dir, role) for role in Role}
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in files.values())
    secrets = {role: path.read_bytes() for role, path in files.items()}
    assert len(set(secrets.values())) == len(Role)
    assert all(unlocks(keys_dir, role, secret) for role, secret in secrets.items())
    assert not (keys_dir / "passphrase").exists()
    # And it restarts unattended on them.
    assert load_or_create_signer(keys_dir, {}).deployment_key.key_id == (
        first.deployment_key.key_id
    )


def test_auto_mode_generates_only_what_the_environment_does_not_give(keys_dir: Path) -> None:
    load_or_create_signer(keys_dir, {"EDGEFLEET_DEPLOYMENT_KEY_PASSPHRASE": "d"})

    assert sorted(p.name for p in keys_dir.glob("passphrase*")) == [
        "passphrase.release",
        "passphrase.root",
    ]
    assert unlocks(keys_dir, Role.DEPLOYMENT, "d")


def test_a_data_dir_with_the_old_single_passphrase_file_still_starts(keys_dir: Path) -> None:
    # What auto mode wrote before keys had their own passphrases.
    KeyStore(keys_dir).init(passphrases=dict.fromkeys(Role, b"old shared"), now=NOW)
    (keys_dir / "passphrase").write_bytes(b"old shared\n")
    before = {p.name: p.read_bytes() for p in keys_dir.glob("*.pem")}

    signer = load_or_create_signer(keys_dir, {})

    assert signer.release_key.key_id in signer.trust_root.role_keys(Role.RELEASE)
    assert {p.name: p.read_bytes() for p in keys_dir.glob("*.pem")} == before  # not re-encrypted
    assert sorted(p.name for p in keys_dir.glob("passphrase*")) == ["passphrase"]


def test_auto_mode_reuses_the_passphrases_of_a_first_start_that_died(keys_dir: Path) -> None:
    # Killed after writing a passphrase file, before any key was written.
    keys_dir.mkdir(parents=True)
    passphrase_file(keys_dir, Role.ROOT).write_bytes(b"written before the crash")

    load_or_create_signer(keys_dir, {})

    assert unlocks(keys_dir, Role.ROOT, "written before the crash")


def test_a_rotated_key_keeps_its_passphrase_so_the_running_controller_reloads_it(
    keys_dir: Path,
) -> None:
    signer = load_or_create_signer(keys_dir, PER_ROLE)
    old = signer.deployment_key.key_id

    KeyStore(keys_dir).rotate(
        Role.DEPLOYMENT,
        root_passphrase=b"root passphrase",
        key_passphrase=b"deployment passphrase",
        now=NOW,
    )

    assert signer.trust_root.version == 2
    assert signer.deployment_key.key_id != old
    assert unlocks(keys_dir, Role.DEPLOYMENT, "deployment passphrase")


def test_a_rotation_with_a_wrong_key_passphrase_changes_nothing(keys_dir: Path) -> None:
    load_or_create_signer(keys_dir, PER_ROLE)
    before = {p: p.read_bytes() for p in keys_dir.rglob("*") if p.is_file()}

    with pytest.raises(KeyFormatError):
        KeyStore(keys_dir).rotate(
            Role.DEPLOYMENT, root_passphrase=b"root passphrase", key_passphrase=b"typo", now=NOW
        )

    assert {p: p.read_bytes() for p in keys_dir.rglob("*") if p.is_file()} == before


def test_passphrases_are_never_in_their_repr() -> None:
    passphrases = Passphrases({"EDGEFLEET_KEY_PASSPHRASE": "hunter2"})
    passphrase = passphrases.get(Role.DEPLOYMENT)
    assert "hunter2" not in repr(passphrases) + repr(passphrase)
    assert passphrase.origin == "EDGEFLEET_KEY_PASSPHRASE"
