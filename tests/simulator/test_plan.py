"""The fleet plan is a pure function of (scenario, seed, run tag): profiles by exact
shares, faults on distinct devices of the right profile, all drawn from the seed."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from simulator.plan import FleetPlan, plan_fleet
from simulator.scenario import FaultSpec, ProfileSpec, RolloutSpec, Scenario

ROLLOUTS = [RolloutSpec(release="digits:2"), RolloutSpec(release="digits:3")]


def scenario(
    devices: int,
    *,
    profiles: list[ProfileSpec] | None = None,
    faults: list[dict[str, Any]] | None = None,
) -> Scenario:
    return Scenario.model_validate(
        {
            "fleet": {"devices": devices},
            "profiles": profiles or [ProfileSpec(name="default")],
            "faults": faults or [],
            "rollouts": ROLLOUTS,
        }
    )


def snapshot(plan: FleetPlan) -> list[tuple[Any, ...]]:
    return [
        (
            d.index,
            d.device_id,
            d.profile.name,
            dict(d.kills),
            d.corrupt_artifacts,
            list(d.broker_cuts),
        )
        for d in plan.devices
    ]


def faulted(plan: FleetPlan) -> dict[str, set[int]]:
    """Device indexes per planned fault kind."""
    return {
        "kill": {d.index for d in plan.devices if d.kills},
        "corrupt": {d.index for d in plan.devices if d.corrupt_artifacts},
        "cut": {d.index for d in plan.devices if d.broker_cuts},
    }


MIXED = scenario(
    200,
    profiles=[
        ProfileSpec(name="box", share=0.7, crash_probability=0.2),
        ProfileSpec(name="cam", share=0.3),
    ],
    faults=[
        {"kind": "kill_at_state", "devices": 5, "state": "probation"},
        {"kind": "kill_at_state", "fraction": 0.05, "state": "staged", "rollout": 1},
        {"kind": "corrupt_artifact", "devices": 7, "profile": "cam"},
        {"kind": "cut_broker", "fraction": 0.1, "at_s": 3.0, "duration_s": 2.0},
    ],
)


def test_same_scenario_seed_and_tag_give_the_same_plan() -> None:
    first = plan_fleet(MIXED, seed=42, run_tag="sim42")
    second = plan_fleet(MIXED, seed=42, run_tag="sim42")

    assert snapshot(first) == snapshot(second)
    # The plan is not trivially empty: every kind of fault and crash landed somewhere.
    assert all(faulted(first).values())


def test_run_tag_names_devices_but_does_not_move_faults() -> None:
    first = plan_fleet(MIXED, seed=42, run_tag="a")
    second = plan_fleet(MIXED, seed=42, run_tag="b")

    assert [d.device_id for d in first.devices][:2] == ["a-00000", "a-00001"]
    assert [s[2:] for s in snapshot(first)] == [s[2:] for s in snapshot(second)]


def test_different_seed_places_faults_elsewhere() -> None:
    # 50 of 1000 devices: two seeds agreeing would be a 1 in C(1000, 50) coincidence.
    fleet = scenario(1000, faults=[{"kind": "corrupt_artifact", "devices": 50}])

    first = faulted(plan_fleet(fleet, seed=1, run_tag="t"))["corrupt"]
    second = faulted(plan_fleet(fleet, seed=2, run_tag="t"))["corrupt"]

    assert len(first) == len(second) == 50
    assert first != second


def test_per_device_generators_depend_on_seed_index_and_purpose() -> None:
    [zero, one] = plan_fleet(scenario(2), seed=5, run_tag="t").devices

    def draws(rng_seed: int, device: Any, purpose: str) -> list[float]:
        rng = device.rng(rng_seed, purpose)
        return [rng.random() for _ in range(3)]

    assert draws(5, zero, "workload") == draws(5, zero, "workload")
    assert draws(5, zero, "workload") != draws(5, one, "workload")
    assert draws(5, zero, "workload") != draws(5, zero, "life")
    assert draws(5, zero, "workload") != draws(6, zero, "workload")


@pytest.mark.parametrize(
    ("shares", "size", "expected"),
    [
        ([0.8, 0.2], 50, [40, 10]),
        ([4.0, 1.0], 50, [40, 10]),  # shares are relative, not fractions
        ([1.0], 7, [7]),
        ([1.0, 1.0, 1.0], 10, [3, 3, 4]),  # the last profile takes the remainder
        ([0.45, 0.45, 0.1], 10, [4, 4, 2]),
        ([0.9, 0.1], 3, [3, 0]),
        ([0.5, 0.5], 1, [0, 1]),
    ],
)
def test_profile_shares_give_exact_counts(
    shares: list[float], size: int, expected: list[int]
) -> None:
    profiles = [ProfileSpec(name=f"p{i}", share=share) for i, share in enumerate(shares)]

    plan = plan_fleet(scenario(size, profiles=profiles), seed=3, run_tag="t")

    counts = Counter(d.profile.name for d in plan.devices)
    assert [counts[f"p{i}"] for i in range(len(shares))] == expected


def test_profiles_are_shuffled_over_the_device_indexes() -> None:
    profiles = [ProfileSpec(name="a", share=0.5), ProfileSpec(name="b", share=0.5)]

    plan = plan_fleet(scenario(100, profiles=profiles), seed=3, run_tag="t")

    names = [d.profile.name for d in plan.devices]
    assert names != sorted(names)


def test_faults_never_share_a_device() -> None:
    # 4 + 4 + 4 asked of 10 devices: the third fault gets the 2 devices left.
    fleet = scenario(
        10,
        faults=[
            {"kind": "kill_at_state", "devices": 4, "state": "fetching"},
            {"kind": "corrupt_artifact", "devices": 4},
            {"kind": "cut_broker", "devices": 4},
        ],
    )

    for seed in range(20):
        groups = faulted(plan_fleet(fleet, seed=seed, run_tag="t"))
        assert [len(g) for g in groups.values()] == [4, 4, 2]
        assert set.union(*groups.values()) == set(range(10))


def test_kill_faults_of_different_rollouts_never_share_a_device() -> None:
    fleet = scenario(
        6,
        faults=[
            {"kind": "kill_at_state", "devices": 3, "state": "fetching", "rollout": 0},
            {"kind": "kill_at_state", "devices": 3, "state": "staged", "rollout": 1},
        ],
    )

    plan = plan_fleet(fleet, seed=9, run_tag="t")

    assert sorted(tuple(d.kills.items()) for d in plan.devices) == sorted(
        [((0, "fetching"),)] * 3 + [((1, "staged"),)] * 3
    )


def test_fault_with_a_profile_picks_only_that_profiles_devices() -> None:
    fleet = scenario(
        100,
        profiles=[ProfileSpec(name="box", share=0.8), ProfileSpec(name="cam", share=0.2)],
        faults=[{"kind": "corrupt_artifact", "devices": 15, "profile": "cam"}],
    )

    for seed in range(10):
        plan = plan_fleet(fleet, seed=seed, run_tag="t")
        chosen = [d for d in plan.devices if d.corrupt_artifacts]
        assert len(chosen) == 15
        assert {d.profile.name for d in chosen} == {"cam"}


def test_fault_asking_for_more_than_the_candidates_gets_them_all() -> None:
    fleet = scenario(
        50,
        profiles=[ProfileSpec(name="box", share=0.8), ProfileSpec(name="cam", share=0.2)],
        faults=[{"kind": "cut_broker", "devices": 25, "profile": "cam", "duration_s": 7.0}],
    )

    plan = plan_fleet(fleet, seed=4, run_tag="t")

    cams = [d for d in plan.devices if d.profile.name == "cam"]
    assert len(cams) == 10
    assert all(len(d.broker_cuts) == 1 and d.broker_cuts[0].duration_s == 7.0 for d in cams)
    assert not any(d.broker_cuts for d in plan.devices if d.profile.name == "box")


def test_crash_probability_one_kills_every_device_in_every_rollout() -> None:
    fleet = scenario(5, profiles=[ProfileSpec(name="flaky", crash_probability=1.0)])

    plan = plan_fleet(fleet, seed=0, run_tag="t")

    assert all(sorted(d.kills) == [0, 1] for d in plan.devices)


def test_planned_kill_wins_over_a_random_crash() -> None:
    fleet = scenario(
        5,
        profiles=[ProfileSpec(name="flaky", crash_probability=1.0)],
        faults=[{"kind": "kill_at_state", "devices": 5, "state": "activating"}],
    )

    plan = plan_fleet(fleet, seed=0, run_tag="t")

    assert all(d.kills[0] == "activating" for d in plan.devices)


@pytest.mark.parametrize(
    ("fault", "fleet_size", "expected"),
    [
        ({"devices": 3}, 10, 3),
        ({"devices": 30}, 10, 10),
        ({"devices": 0}, 10, 0),
        ({"fraction": 0.1}, 50, 5),
        ({"fraction": 0.33}, 10, 3),  # 3.3 rounds down
        ({"fraction": 0.37}, 10, 4),  # 3.7 rounds up
        ({"fraction": 0.01}, 30, 0),  # 0.3 rounds to no device
        ({"fraction": 1.0}, 7, 7),
        ({"fraction": 0.0}, 100, 0),
    ],
)
def test_fault_count(fault: dict[str, Any], fleet_size: int, expected: int) -> None:
    spec = FaultSpec.model_validate({"kind": "corrupt_artifact", **fault})

    assert spec.count(fleet_size) == expected
