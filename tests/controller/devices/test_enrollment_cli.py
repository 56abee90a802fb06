"""The operator's path through ``edgefleet devices …`` against a real controller process.

Enroll with a printed command, run it as the device would, find the device, label it,
export broker credentials, decommission it. The operator's commands run in this process
(typer's runner; the HTTP is real), the controller and the agent as processes.
"""

from __future__ import annotations

import json
import os
import shlex
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
from controller.cli.main import app
from simulator.controller_process import ControllerProcess

STARTUP_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 60.0


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
class Outcome:
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Served:
    url: str
    data_dir: Path
    env: dict[str, str]

    def edgefleet(self, *args: str) -> Outcome:
        operator_env = {
            "EDGEFLEET_URL": self.env["EDGEFLEET_URL"],
            "EDGEFLEET_TOKEN": self.env["EDGEFLEET_TOKEN"],
            "EDGEFLEET_DATA_DIR": str(self.data_dir),
            "COLUMNS": "200",
        }
        result = CliRunner().invoke(app, list(args), env=operator_env)
        return Outcome(result.exit_code, result.stdout, result.stderr)

    def json(self, *args: str) -> Any:
        result = self.edgefleet(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A controller with its embedded broker, and an operator's environment.

    Shared by this module's tests; only the first one enrolls a device.
    """
    controller = ControllerProcess(tmp_path_factory.mktemp("controller"))
    controller.start()
    try:
        token = controller.create_token("operator")
        env = controller.env | {"EDGEFLEET_URL": controller.url, "EDGEFLEET_TOKEN": token}
        assert controller.data_dir is not None
        yield Served(controller.url, controller.data_dir, env)
    finally:
        controller.stop()


def printed_command(output: str) -> list[str]:
    [line] = [line for line in output.splitlines() if "edgefleet-agent enroll" in line]
    return shlex.split(line)


def test_enroll_find_label_export_and_decommission_a_device(served: Served, tmp_path: Path) -> None:
    created = served.edgefleet(
        "devices", "enroll", "--labels", "site=berlin,tier=lab", "--ttl", "1h",
        "--agent-data-dir", str(tmp_path / "device"),
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    command = printed_command(created.stdout)
    assert command[:4] == ["edgefleet-agent", "enroll", "--controller", served.url]
    agent_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    enrolled = run("agent", *command[1:], "--device-id", "cam-7", env=agent_env)
    assert enrolled.returncode == 0, enrolled.stderr
    config = load_config(tmp_path / "device" / "agent.toml", environ={})

    [row] = served.json("devices", "list", "--selector", "site=berlin,tier=lab")
    assert (row["id"], row["labels"]) == ("cam-7", {"site": "berlin", "tier": "lab"})
    table = served.edgefleet("devices", "list", "--offline")
    assert "cam-7" in table.stdout
    assert served.json("devices", "list", "--online") == []
    shown = served.edgefleet("devices", "show", "cam-7")
    assert shown.returncode == 0, shown.stderr
    assert "cam-7" in shown.stdout
    assert served.json("devices", "show", "cam-7")["labels"] == {"site": "berlin", "tier": "lab"}

    labelled = served.json("devices", "label", "cam-7", "tier=prod", "--remove", "site")
    assert labelled["labels"] == {"tier": "prod"}

    passwords, acl = tmp_path / "passwd", tmp_path / "acl"
    exported = served.edgefleet(
        "devices", "mosquitto-config", "--passwords", str(passwords), "--acl", str(acl)
    )
    assert exported.returncode == 0, exported.stderr
    assert [line.split(":")[0] for line in passwords.read_text().splitlines()] == ["cam-7"]
    assert "pattern write edgefleet/v1/%u/state" in acl.read_text()

    gone = served.edgefleet("devices", "decommission", "cam-7")
    assert gone.returncode == 0, gone.stderr
    assert served.json("devices", "list") == []
    assert [r["id"] for r in served.json("devices", "list", "--all")] == ["cam-7"]
    artifact = httpx.get(
        f"{served.url}/artifacts/sha256/{'0' * 64}",
        headers={"Authorization": f"Bearer {config.controller_token}"},
    )
    assert artifact.status_code == 401
    served.edgefleet(
        "devices", "mosquitto-config", "--passwords", str(passwords), "--acl", str(acl)
    )
    assert passwords.read_text() == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enroll", "--labels", "site"], "expected key=value"),
        (["enroll", "--ttl", "soon"], "not a duration"),
        (["label", "cam-1"], "give labels to set"),
    ],
)
def test_bad_arguments_are_usage_errors(served: Served, args: list[str], message: str) -> None:
    result = served.edgefleet("devices", *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_api_refusals_print_the_controllers_reason(served: Served) -> None:
    bad_selector = served.edgefleet("devices", "list", "--selector", "site==")
    assert bad_selector.returncode == 1
    assert "expected a value" in bad_selector.stderr
    unknown = served.edgefleet("devices", "show", "nope")
    assert unknown.returncode == 1
    assert "404" in unknown.stderr
    no_model = served.edgefleet("devices", "remove-model", "nope", "digits")
    assert no_model.returncode == 1
    assert "404" in no_model.stderr
