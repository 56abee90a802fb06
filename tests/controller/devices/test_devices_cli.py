"""``edgefleet devices list/show`` render every model of a device."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from controller.cli.devices import _devices_table, _models_table


def model(name: str, active: int | None, desired: int | None, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "model": name,
        "phase": "idle",
        "active_version": active,
        "active_sha256": None,
        "previous_version": None,
        "last_good_version": active,
        "reported_sequence": None,
        "desired_version": desired,
        "desired_remove": False,
        "desired_rollback": False,
        "desired_sequence": None if desired is None else 5,
        "desired_expires_at": None,
        "desired_rollout_id": None,
    }
    values.update(fields)
    return values


def rendered(table: Any) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_a_device_row_lists_each_model_it_runs_and_what_it_should_run() -> None:
    row = {
        "id": "cam-1",
        "online": True,
        "labels": {"site": "berlin"},
        "phase": "probation",
        "last_seen_at": None,
        "models": [
            model("cats", 1, None, desired_remove=True, desired_sequence=6),
            model("digits", 2, 3, desired_rollout_id="ro-1"),
        ],
    }

    text = rendered(_devices_table([row]))
    models = rendered(_models_table(row["models"]))

    assert "cats:1" in text
    assert "digits:2" in text
    assert "digits:3" in text
    assert "remove" in text
    assert "ro-1" in models
    assert "cats" in models
