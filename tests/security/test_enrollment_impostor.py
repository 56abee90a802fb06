"""An impostor answering a device's enrollment cannot hand it the impostor's own trust root.

Found in the security review: enrollment accepted any trust root signed by its own root
keys, and enrollment runs over plain HTTP, so whoever answered the device's enrollment
owned it: every later release signed with the impostor's keys would verify. A device
given the SHA-256 that ``edgefleet devices enroll`` prints, or a provisioned trust root,
refuses any other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol import Envelope, Role, SigningKey
from tests.agent.canned_enrollment import canned_enrollment
from tests.factories import Keyring

COMMAND_TIMEOUT_S = 60.0


@pytest.fixture
def impostor() -> Iterator[str]:
    """Answers every enrollment with a trust root of its own, validly self-signed."""
    with canned_enrollment(Keyring().signed_trust_root()) as url:
        yield url


def agent_enroll(url: str, data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    command = ["enroll", "--controller", url, "--token", "et_x_y", "--data-dir", str(data_dir)]
    return subprocess.run(
        [sys.executable, "-m", "agent", *command, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def sha256_of(envelope: Envelope) -> str:
    return hashlib.sha256(envelope.to_bytes()).hexdigest()


def test_an_impostors_trust_root_is_refused_with_the_printed_sha256(
    impostor: str, tmp_path: Path
) -> None:
    genuine = Keyring().signed_trust_root()
    device_dir = tmp_path / "device"

    result = agent_enroll(impostor, device_dir, "--trust-root-sha256", sha256_of(genuine))

    assert result.returncode == 1, result.stderr
    assert "SHA-256" in result.stderr
    assert not device_dir.exists()  # nothing written


def test_without_a_pin_the_impostor_is_believed(impostor: str, tmp_path: Path) -> None:
    # Why the pin exists: a self-signed trust root proves only its own integrity.
    assert agent_enroll(impostor, tmp_path / "device").returncode == 0


def test_an_impostors_trust_root_is_refused_by_a_provisioned_one(
    impostor: str, tmp_path: Path
) -> None:
    provisioned = tmp_path / "provisioned-trust-root.json"
    provisioned.write_bytes(Keyring().signed_trust_root().to_bytes())
    device_dir = tmp_path / "device"

    result = agent_enroll(impostor, device_dir, "--trust-root", str(provisioned))

    assert result.returncode == 1, result.stderr
    assert "neither the provisioned one nor its next version" in result.stderr
    assert not device_dir.exists()


def test_a_provisioned_trust_root_accepts_the_controllers_next_version(tmp_path: Path) -> None:
    first = Keyring()
    rotated = dataclasses.replace(
        first, keys={**first.keys, Role.DEPLOYMENT: [SigningKey.generate()]}, version=2
    )
    provisioned = tmp_path / "provisioned-trust-root.json"
    provisioned.write_bytes(first.signed_trust_root().to_bytes())
    with canned_enrollment(rotated.signed_trust_root()) as url:
        result = agent_enroll(url, tmp_path / "device", "--trust-root", str(provisioned))
        assert result.returncode == 0, result.stderr


def test_a_malformed_sha256_is_a_usage_error(tmp_path: Path) -> None:
    result = agent_enroll("http://127.0.0.1:1", tmp_path / "device", "--trust-root-sha256", "ab")
    assert result.returncode == 2
