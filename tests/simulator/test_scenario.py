"""Scenario files: the demo loads, the fleet size can be overridden, and every mistake is
a ``ScenarioError`` that names the field, before any device starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.demo import DEMO_SCENARIO
from simulator.scenario import FaultKind, ScenarioError, load_scenario

ROLLOUT = '[[rollouts]]\nrelease = "digits:2"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


def test_demo_scenario_loads() -> None:
    scenario = load_scenario(DEMO_SCENARIO)

    assert scenario.name == "demo"
    assert scenario.fleet.devices == 50
    assert [p.name for p in scenario.profiles] == ["edge-box", "slow-camera"]
    assert [r.release for r in scenario.rollouts] == ["@good", "@second", "@bad"]
    assert [r.with_previous for r in scenario.rollouts] == [False, False, True]
    assert [r.expect.status for r in scenario.rollouts] == ["completed", "completed", "aborted"]


def test_the_first_rollout_cannot_start_with_a_previous_one(tmp_path: Path) -> None:
    text = ROLLOUT.replace('release = "', 'with_previous = true\nrelease = "', 1)
    assert "with_previous" in text
    with pytest.raises(ScenarioError, match="no rollout before it"):
        load_scenario(write(tmp_path, text))


@pytest.mark.parametrize("devices", [1, 7, 1000])
def test_devices_argument_overrides_the_fleet_size(devices: int) -> None:
    assert load_scenario(DEMO_SCENARIO, devices=devices).fleet.devices == devices


def test_devices_argument_works_without_a_fleet_table(tmp_path: Path) -> None:
    assert load_scenario(write(tmp_path, ROLLOUT), devices=3).fleet.devices == 3


def test_devices_argument_is_validated_like_the_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"fleet\.devices"):
        load_scenario(write(tmp_path, ROLLOUT), devices=0)


def test_minimal_scenario_gets_defaults(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, ROLLOUT))

    assert scenario.fleet.devices == 50
    assert [p.name for p in scenario.profiles] == ["default"]
    assert scenario.faults == []


def test_fault_kinds_are_read(tmp_path: Path) -> None:
    text = ROLLOUT + (
        '[[faults]]\nkind = "cut_broker"\nfraction = 0.1\nat_s = 3\n'
        '[[faults]]\nkind = "kill_at_state"\ndevices = 2\nstate = "staged"\n'
        '[[faults]]\nkind = "corrupt_artifact"\ndevices = 1\n'
    )

    faults = load_scenario(write(tmp_path, text)).faults

    assert [f.kind for f in faults] == [
        FaultKind.CUT_BROKER,
        FaultKind.KILL_AT_STATE,
        FaultKind.CORRUPT_ARTIFACT,
    ]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        pytest.param(ROLLOUT + "[fleet]\ndevics = 3\n", "fleet.devics", id="typo-in-fleet"),
        pytest.param(ROLLOUT + "nmae = 'x'\n", "nmae", id="typo-at-top"),
        pytest.param(
            ROLLOUT + '[[profiles]]\nname = "a"\nspeed_factr = 2\n',
            "profiles.0.speed_factr",
            id="typo-in-profile",
        ),
        pytest.param(
            '[[rollouts]]\nrelease = "digits:2"\nsoak_s = 3\n',
            "rollouts.0.soak_s",
            id="typo-in-rollout",
        ),
        pytest.param(
            ROLLOUT + '[[faults]]\nkind = "corrupt_artifact"\ndevices = 2\nfraction = 0.5\n',
            "faults.0: Value error, give exactly one of devices or fraction",
            id="fault-with-devices-and-fraction",
        ),
        pytest.param(
            ROLLOUT + '[[faults]]\nkind = "corrupt_artifact"\n',
            "faults.0: Value error, give exactly one of devices or fraction",
            id="fault-with-neither",
        ),
        pytest.param(
            ROLLOUT + '[[faults]]\nkind = "kill_at_state"\ndevices = 1\nstate = "sleeping"\n',
            "faults.0: Value error, state must be one of",
            id="kill-in-unknown-state",
        ),
        pytest.param(
            ROLLOUT + '[[faults]]\nkind = "kill_at_state"\ndevices = 1\n',
            "faults.0: Value error, state must be one of",
            id="kill-without-state",
        ),
        pytest.param(
            ROLLOUT + '[[faults]]\nkind = "melt"\ndevices = 1\n',
            "faults.0.kind",
            id="unknown-fault-kind",
        ),
        pytest.param(
            ROLLOUT + '[[profiles]]\nname = "cam"\n[[profiles]]\nname = "cam"\n',
            "profiles need distinct names",
            id="duplicate-profile-names",
        ),
        pytest.param(
            ROLLOUT + '[[profiles]]\nname = "Cam box"\n', "profiles.0.name", id="bad-profile-name"
        ),
        pytest.param("name = 'no rollouts'\n", "rollouts", id="no-rollouts"),
        pytest.param(
            ROLLOUT + "[workload]\nrequests_per_s = -1\n",
            "workload.requests_per_s",
            id="negative-rate",
        ),
    ],
)
def test_mistake_is_an_error_naming_the_field(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ScenarioError) as raised:
        load_scenario(write(tmp_path, text))

    assert named in str(raised.value)


def test_file_that_is_not_toml_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[fleet\ndevices = ")

    with pytest.raises(ScenarioError, match="cannot read the scenario"):
        load_scenario(path)


def test_file_that_is_not_text_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_bytes(b"\xff\xfe\x00binary")

    with pytest.raises(ScenarioError, match="cannot read the scenario"):
        load_scenario(path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"cannot read the scenario .*missing\.toml"):
        load_scenario(tmp_path / "missing.toml")


# "A typo is an error naming the field, before any device starts": references between
# parts of the scenario are checked too.
def test_fault_naming_an_unknown_profile_is_an_error(tmp_path: Path) -> None:
    text = ROLLOUT + (
        '[[profiles]]\nname = "edge-box"\n'
        '[[faults]]\nkind = "corrupt_artifact"\ndevices = 3\nprofile = "edge-bx"\n'
    )

    with pytest.raises(ScenarioError, match="edge-bx"):
        load_scenario(write(tmp_path, text))


def test_kill_in_a_rollout_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    text = (
        ROLLOUT + '[[faults]]\nkind = "kill_at_state"\ndevices = 1\nstate = "staged"\nrollout = 1\n'
    )

    with pytest.raises(ScenarioError, match="rollout"):
        load_scenario(write(tmp_path, text))


def test_fleet_that_is_not_a_table_is_an_error_with_a_size_override(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="fleet"):
        load_scenario(write(tmp_path, "fleet = 3\n" + ROLLOUT), devices=10)
