"""``edgefleet alert …`` against a controller served over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller.cli import main as controller_cli
from controller.tokens import Role
from tests.security.http_server import ServedController, controller_settings, served


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ServedController]:
    with served(controller_settings(tmp_path)) as controller:
        yield controller


def _run(controller: ServedController, role: Role, *args: str) -> str:
    env = {
        "EDGEFLEET_URL": f"http://127.0.0.1:{controller.port}",
        "EDGEFLEET_TOKEN": controller.token(role),
    }
    result = CliRunner().invoke(controller_cli.app, ["alert", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_an_operator_creates_lists_and_deletes_an_alert_rule(
    controller: ServedController,
) -> None:
    created = json.loads(
        _run(
            controller,
            Role.OPERATOR,
            "create",
            "digits",
            "--metric",
            "input_drift_psi",
            "--above",
            "0.25",
            "--window",
            "15m",
            "--min-devices",
            "3",
            "--json",
        )
    )
    assert (created["metric"], created["window_s"], created["firing"]) == (
        "input_drift_psi",
        900.0,
        [],
    )

    assert "digits" in _run(controller, Role.VIEWER, "list")
    [listed] = json.loads(_run(controller, Role.VIEWER, "list", "--json"))
    assert listed["id"] == created["id"]
    assert json.loads(_run(controller, Role.VIEWER, "history", "--json")) == []

    _run(controller, Role.OPERATOR, "delete", created["id"])
    assert json.loads(_run(controller, Role.VIEWER, "list", "--json")) == []


def test_a_viewer_cannot_create_a_rule(controller: ServedController) -> None:
    env = {
        "EDGEFLEET_URL": f"http://127.0.0.1:{controller.port}",
        "EDGEFLEET_TOKEN": controller.token(Role.VIEWER),
    }
    result = CliRunner().invoke(
        controller_cli.app,
        ["alert", "create", "digits", "--metric", "error_rate", "--above", "0.1"],
        env=env,
    )
    assert result.exit_code == 1
    assert "403" in result.output or "operator" in result.output
