"""``edgefleet-agent enroll`` against a real controller process over real HTTP.

Each test asserts the exit code and what is left on disk: a refusal leaves the data
directory as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from agent.config import load_config
from controller.cli import main as controller_cli
from protocol import SigningKey
from simulator.controller_process import ControllerProcess
from tests.agent.canned_enrollment import canned_enrollment
from tests.brokers import free_port
from tests.factories import Keyring

STARTUP_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 60.0
REFUSAL = "the enrollment token is unknown, expired or already used"


def run(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


@dataclass(frozen=True)
class Served:
    url: str
    env: dict[str, str]

    def enrollment_token(self, *args: str) -> dict[str, Any]:
        """``edgefleet devices enroll --json`` (in this process; the HTTP is real)."""
        operator_env = {"EDGEFLEET_URL": self.url, "EDGEFLEET_TOKEN": self.env["EDGEFLEET_TOKEN"]}
        created = CliRunner().invoke(
            controller_cli.app, ["devices", "enroll", "--json", *args], env=operator_env
        )
        assert created.exit_code == 0, created.stderr
        answer: dict[str, Any] = json.loads(created.stdout)
        return answer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A controller with its embedded broker and a key passphrase, and an operator token."""
    controller = ControllerProcess(tmp_path_factory.mktemp("controller"))
    controller.start()
    try:
        token = controller.create_token("operator")
        url = controller.url
        yield Served(url, controller.env | {"EDGEFLEET_URL": url, "EDGEFLEET_TOKEN": token})
    finally:
        controller.stop()


def agent_enroll(
    url: str, token: str, data_dir: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    return run(
        "agent", "enroll", "--controller", url, "--token", token, "--data-dir", str(data_dir),
        *extra, env=env,
    )  # fmt: skip


def test_enrolled_device_has_a_config_that_loads_and_a_trust_root_that_checks(
    served: Served, tmp_path: Path
) -> None:
    created = served.enrollment_token("--labels", "site=lab", "--device-id", "cam-1")
    device_dir = tmp_path / "device"
    printed = created["command"].split()
    assert printed[:2] == ["edgefleet-agent", "enroll"]
    assert printed[printed.index("--controller") + 1] == served.url
    pin = printed[printed.index("--trust-root-sha256") + 1]
    assert pin == created["trust_root_sha256"]
    enrolled = agent_enroll(served.url, created["token"], device_dir, "--trust-root-sha256", pin)
    assert enrolled.returncode == 0, enrolled.stderr
    assert "enrolled as cam-1" in enrolled.stdout

    config_path = device_dir / "agent.toml"
    assert config_path.stat().st_mode & 0o777 == 0o600
    config = load_config(config_path, environ={})
    assert config.device_id == config.mqtt_username == "cam-1"
    assert config.data_dir == device_dir.resolve() / "data"
    assert config.trust_root == device_dir.resolve() / "trust-root.json"
    assert hashlib.sha256(config.trust_root.read_bytes()).hexdigest() == pin
    assert config.controller_url == served.url
    assert config.mqtt_password
    checked = run("agent", "check-trust-root", str(config.trust_root), env=served.env)
    assert checked.returncode == 0, checked.stderr

    device_token = {"Authorization": f"Bearer {config.controller_token}"}
    assert httpx.get(f"{served.url}/api/v1/models", headers=device_token).status_code == 403
    artifact = httpx.get(f"{served.url}/artifacts/sha256/{'0' * 64}", headers=device_token)
    assert artifact.status_code == 404  # allowed in, nothing there


def test_reused_token_is_refused_and_nothing_is_written(served: Served, tmp_path: Path) -> None:
    token = served.enrollment_token()["token"]
    assert agent_enroll(served.url, token, tmp_path / "first").returncode == 0
    second = agent_enroll(served.url, token, tmp_path / "second")
    assert second.returncode == 1
    assert REFUSAL in second.stderr
    assert not (tmp_path / "second").exists()


def test_existing_config_is_kept_without_force_and_the_token_is_not_spent(
    served: Served, tmp_path: Path
) -> None:
    device_dir = tmp_path / "device"
    assert agent_enroll(served.url, served.enrollment_token()["token"], device_dir).returncode == 0
    before = (device_dir / "agent.toml").read_bytes()
    token = served.enrollment_token("--device-id", "cam-replaced")["token"]
    kept = agent_enroll(served.url, token, device_dir)
    assert kept.returncode == 2
    assert "--force" in kept.stderr
    assert (device_dir / "agent.toml").read_bytes() == before
    replaced = agent_enroll(served.url, token, device_dir, "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert load_config(device_dir / "agent.toml", environ={}).device_id == "cam-replaced"


def test_unreachable_controller_exits_3(tmp_path: Path) -> None:
    result = agent_enroll(f"http://127.0.0.1:{free_port()}", "et_x_y", tmp_path / "device")
    assert result.returncode == 3
    assert "cannot reach" in result.stderr
    assert not (tmp_path / "device").exists()


def test_usage_error_exits_2(tmp_path: Path) -> None:
    result = run("agent", "enroll", "--token", "et_x_y", env=dict(os.environ))
    assert result.returncode == 2


@pytest.fixture
def controller_with_forged_trust_root() -> Iterator[str]:
    """A controller that answers a trust root signed by a key outside its root role."""
    forged = Keyring().trust_root().sign([SigningKey.generate()])
    with canned_enrollment(forged, "cam-forged") as url:
        yield url


def test_trust_root_that_does_not_verify_writes_nothing(
    controller_with_forged_trust_root: str, tmp_path: Path
) -> None:
    device_dir = tmp_path / "device"
    device_dir.mkdir()
    result = agent_enroll(controller_with_forged_trust_root, "et_x_y", device_dir)
    assert result.returncode == 1
    assert "trust root" in result.stderr
    assert list(device_dir.iterdir()) == []
