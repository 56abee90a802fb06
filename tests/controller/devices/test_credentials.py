"""MQTT password hashes in Mosquitto's $7$ format: Mosquitto and we agree both ways."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from controller.devices.credentials import hash_mqtt_password, verify_mqtt_password
from tests.brokers import BrokerEndpoint, MosquittoServer
from tests.conftest import mosquitto_binary
from tests.mqtt_client import TestClient

PASSWD_TIMEOUT_S = 10.0


def mosquitto_passwd() -> str:
    binary = shutil.which("mosquitto_passwd") or shutil.which(
        "mosquitto_passwd", path="/usr/bin:/usr/local/bin:/usr/sbin"
    )
    if binary is None:
        pytest.skip("mosquitto_passwd is not installed")
    return binary


def start_mosquitto_with_passwords(tmp_path: Path, lines: list[str]) -> MosquittoServer:
    password_file = tmp_path / "passwd"
    password_file.write_text("".join(f"{line}\n" for line in lines))
    password_file.chmod(0o600)
    me = pwd.getpwuid(os.geteuid()).pw_name
    server = MosquittoServer(
        mosquitto_binary(),
        tmp_path,
        extra_config=f"user {me}\nallow_anonymous false\npassword_file {password_file}\n",
    )
    server.start()
    return server


def connect(endpoint: BrokerEndpoint, username: str, password: str) -> None:
    client = TestClient(endpoint)
    client._client.username_pw_set(username, password)
    with client:
        pass


def test_hash_has_mosquittos_layout() -> None:
    hashed = hash_mqtt_password("secret", salt=b"\x00" * 12)
    assert hashed.startswith("$7$101$AAAAAAAAAAAAAAAA$")
    assert len(hashed.split("$")[4]) == 88  # base64 of 64 bytes


def test_each_hash_has_its_own_salt() -> None:
    assert hash_mqtt_password("same") != hash_mqtt_password("same")


def test_our_hash_verifies_only_its_password() -> None:
    hashed = hash_mqtt_password("right")
    assert verify_mqtt_password("right", hashed)
    assert not verify_mqtt_password("wrong", hashed)


@pytest.mark.parametrize(
    "hashed",
    [
        "",
        "-",
        "$6$salt$hash",
        "$7$abc$AAAA$AAAA",
        "$7$0$AAAAAAAAAAAAAAAA$" + "A" * 88,
        "$7$999999999$AAAAAAAAAAAAAAAA$" + "A" * 88,
        "$7$101$not base64!$" + "A" * 88,
        "$7$101$AAAAAAAAAAAAAAAA$short",
        "$7$101$$" + "A" * 88,
    ],
)
def test_malformed_hash_never_verifies(hashed: str) -> None:
    assert not verify_mqtt_password("", hashed)


def test_our_verify_accepts_a_hash_made_by_mosquitto_passwd(tmp_path: Path) -> None:
    password_file = tmp_path / "passwd"
    subprocess.run(
        [mosquitto_passwd(), "-b", "-c", str(password_file), "dev-1", "hunter2 with spaces"],
        check=True,
        capture_output=True,
        timeout=PASSWD_TIMEOUT_S,
    )
    _user, hashed = password_file.read_text().strip().split(":", 1)
    assert hashed.startswith("$7$")
    assert verify_mqtt_password("hunter2 with spaces", hashed)
    assert not verify_mqtt_password("hunter2", hashed)


def test_mosquitto_accepts_our_hash_for_the_right_password_only(tmp_path: Path) -> None:
    server = start_mosquitto_with_passwords(
        tmp_path, [f"dev-1:{hash_mqtt_password('correct password')}"]
    )
    try:
        connect(server.endpoint, "dev-1", "correct password")
        with pytest.raises(ConnectionError, match="refused"):
            connect(server.endpoint, "dev-1", "wrong password")
    finally:
        server.stop()
