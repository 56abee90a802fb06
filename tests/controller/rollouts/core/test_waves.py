"""Wave sizes, quotas and durations as tables: operator text in, numbers out, or refusal."""

from __future__ import annotations

from decimal import Decimal

import pytest

from controller.rollouts.core import (
    Quota,
    RolloutPolicy,
    RolloutSpecError,
    RolloutState,
    format_duration,
    parse_duration,
    parse_quota,
    parse_waves,
    wave_targets,
)
from tests.controller.rollouts.core.fleet import NEW, OLD

STANDARD = "1,10%,50%,100%"


@pytest.mark.parametrize(
    ("text", "waves"),
    [
        ("100%", (Quota(percent=Decimal(100)),)),
        ("5", (Quota(count=5),)),
        (
            STANDARD,
            (
                Quota(count=1),
                Quota(percent=Decimal(10)),
                Quota(percent=Decimal(50)),
                Quota(percent=Decimal(100)),
            ),
        ),
        (" 1 , 2 , 12.5% ", (Quota(count=1), Quota(count=2), Quota(percent=Decimal("12.5")))),
        ("50%,10", (Quota(percent=Decimal(50)), Quota(count=10))),
    ],
    ids=["everything_at_once", "count_only", "standard", "spaces_and_decimals", "mixed_kinds"],
)
def test_waves_parse(text: str, waves: tuple[Quota, ...]) -> None:
    assert parse_waves(text) == waves


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "give 1 to 100 sizes"),
        ("1,,100%", "wave 2: '' is not a device count"),
        ("0,100%", "wave 1: a wave needs at least one device"),
        ("0%", "wave 1: a percentage must be above 0"),
        ("150%", "wave 1: a percentage must be above 0 and at most 100"),
        ("10%,5%", "wave 2: 5% does not grow from 10%"),
        ("5,5", "wave 2: 5 does not grow from 5"),
        ("100%,5", "wave 2: nothing can follow a 100% wave"),
        ("1.5", "a device count is a whole number"),
        ("-1", "is not a device count"),
        ("ten", "is not a device count"),
        ("1," * 100 + "100%", "give 1 to 100 sizes"),
    ],
    ids=[
        "empty",
        "empty_wave",
        "zero_devices",
        "zero_percent",
        "over_100_percent",
        "shrinking_percent",
        "repeated_count",
        "after_everything",
        "fractional_count",
        "negative",
        "words",
        "too_many",
    ],
)
def test_bad_waves_are_refused(text: str, message: str) -> None:
    with pytest.raises(RolloutSpecError) as caught:
        parse_waves(text)

    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)  # the API answers it with 400


@pytest.mark.parametrize(
    ("waves", "fleet_size", "targets"),
    [
        (STANDARD, 0, [0, 0, 0, 0]),
        (STANDARD, 1, [1, 1, 1, 1]),
        (STANDARD, 3, [1, 1, 2, 3]),
        (STANDARD, 20, [1, 2, 10, 20]),
        (STANDARD, 1000, [1, 100, 500, 1000]),
        ("1%,100%", 20, [1, 20]),
        ("1%,100%", 1000, [10, 1000]),
        ("12.5%,100%", 20, [3, 20]),
        ("33.3%,66.6%,100%", 3, [1, 2, 3]),
        ("5,10", 3, [3, 3]),
        ("5,10", 1000, [5, 10]),
        ("50%,10", 1000, [500, 500]),
        ("50%,10", 3, [2, 3]),
        ("2,50%", 20, [2, 10]),
    ],
    ids=[
        "empty_fleet",
        "one_device",
        "three_devices",
        "twenty_devices",
        "thousand_devices",
        "one_percent_of_20_is_one",
        "one_percent_of_1000",
        "exact_decimal_rounds_up",
        "thirds",
        "counts_capped_by_fleet",
        "counts_partial_rollout",
        "mixed_never_shrinks",
        "mixed_small_fleet",
        "count_then_percent",
    ],
)
def test_wave_targets_are_cumulative_and_capped(
    waves: str, fleet_size: int, targets: list[int]
) -> None:
    result = wave_targets(parse_waves(waves), fleet_size)

    assert result == targets
    assert result == sorted(result)
    assert all(fleet_size >= t >= min(1, fleet_size) for t in result)


@pytest.mark.parametrize("fleet_size", [0, 1, 3, 20, 1000, 1001, 99_999])
def test_last_wave_of_100_percent_covers_the_whole_fleet(fleet_size: int) -> None:
    assert wave_targets(parse_waves(STANDARD), fleet_size)[-1] == fleet_size


@pytest.mark.parametrize(
    ("text", "total", "count"),
    [("3", 20, 3), ("3", 2, 2), ("0", 20, 0), ("80%", 20, 16), ("80%", 3, 3), ("1%", 3, 1)],
    ids=["count", "count_capped", "zero", "percent", "percent_rounds_up", "small_percent"],
)
def test_quota_of_a_group(text: str, total: int, count: int) -> None:
    quota = parse_quota(text)

    assert quota.of(total) == count
    assert parse_quota(str(quota)) == quota


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s", 93784.0),
        ("1.5s", 1.5),
        ("90", 90.0),
        ("0", 0.0),
        ("0s", 0.0),
        (" 5m ", 300.0),
    ],
    ids=[
        "seconds",
        "minutes",
        "hours",
        "hours_minutes",
        "every_unit",
        "fractional_seconds",
        "bare_number",
        "zero",
        "zero_seconds",
        "spaces",
    ],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "m", "5x", "30m1h", "1.5m", "-5s", "-5", "nan", "inf", "5 m", "1h 30m"],
    ids=[
        "empty",
        "unit_only",
        "unknown_unit",
        "wrong_order",
        "fractional_minutes",
        "negative_unit",
        "negative",
        "nan",
        "infinite",
        "space_before_unit",
        "space_between",
    ],
)
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(RolloutSpecError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (30, "30s"), (300, "5m"), (5400, "1h30m"), (86400 + 61, "1d1m1s")],
    ids=["zero", "seconds", "minutes", "hours_minutes", "day_minute_second"],
)
def test_durations_format_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"waves": ()}, "a rollout has 1 to 100 waves"),
        ({"soak_s": -1.0}, "soak_s must be zero or more"),
        ({"soak_s": float("inf")}, "soak_s must be zero or more"),
        ({"report_timeout_s": 0.0}, "report_timeout_s must be above 0"),
    ],
    ids=["no_waves", "negative_soak", "endless_soak", "no_timeout"],
)
def test_bad_policy_is_refused(changes: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"waves": parse_waves(STANDARD), **changes}

    with pytest.raises(RolloutSpecError, match=message):
        RolloutPolicy(**settings)  # type: ignore[arg-type]


def test_state_refuses_a_wave_the_policy_does_not_have() -> None:
    policy = RolloutPolicy(waves=parse_waves(STANDARD))

    with pytest.raises(RolloutSpecError, match="wave 4 is not one of the policy's waves"):
        RolloutState("r-1", NEW, OLD, policy, wave=4)
