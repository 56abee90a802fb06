"""``edgefleet alert create --capture-*`` and ``edgefleet samples …`` argument handling,
against a controller served over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from controller.cli import main as controller_cli
from controller.cli.samples import parse_bytes, parse_since
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
    result = CliRunner().invoke(controller_cli.app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_alert_rule_created_with_capture_options(controller: ServedController) -> None:
    created = json.loads(
        _run(
            controller,
            Role.OPERATOR,
            "alert",
            "create",
            "digits",
            "--metric",
            "confidence_drop",
            "--above",
            "0.1",
            "--capture-below-confidence",
            "0.5",
            "--capture-per-hour",
            "20",
            "--capture-max-bytes",
            "50MB",
            "--capture-for",
            "1d",
            "--json",
        )
    )
    assert created["capture"] == {
        "below_confidence": 0.5,
        "per_hour": 20,
        "max_bytes": 50_000_000,
        "for_s": 86400.0,
    }


def test_samples_of_nothing_list_empty_and_export_fails(
    controller: ServedController, tmp_path: Path
) -> None:
    assert "0 samples" in _run(controller, Role.VIEWER, "samples", "list", "--since", "1d")
    env = {
        "EDGEFLEET_URL": f"http://127.0.0.1:{controller.port}",
        "EDGEFLEET_TOKEN": controller.token(Role.VIEWER),
    }
    out = tmp_path / "none.npz"
    result = CliRunner().invoke(
        controller_cli.app, ["samples", "export", "--model", "digits", str(out)], env=env
    )
    assert result.exit_code == 1
    assert "no samples of digits" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("50MB", 50_000_000), ("512KiB", 524_288), ("1000", 1000), ("1.5GB", 1_500_000_000)],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["fifty", "5XB", ""])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_bytes(text)


def test_since_is_a_duration_back_or_a_time() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert parse_since("1d", now=now) == now - timedelta(days=1)
    assert parse_since("2026-12-01T00:00:00Z") == datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(typer.BadParameter):
        parse_since("yesterday")
