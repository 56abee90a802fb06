"""Device states and events into SQLite and PostgreSQL: applied once, in the right order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from controller.db import make_engine, session_scope
from controller.devices.tables import DeviceEventRecord, DeviceModelRecord, DeviceRecord
from controller.migrate import upgrade_database
from controller.mqtt.ingest import (
    AppliedEvents,
    Dropped,
    DropReason,
    apply_events,
    apply_states,
    decode_report,
)
from controller.mqtt.telemetry import to_utc
from controller.registry.tables import ModelRecord, ModelVersion, ReleaseRecord
from controller.rollouts.tables import RolloutAssignmentRecord, RolloutEventRecord, RolloutRecord
from protocol import Event, ModelState, ReleaseRef, State

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
NOW_S = T0.timestamp()
SHA = "cd" * 32
RELEASE = ReleaseRef(model="digits", version=2, sha256=SHA)
PREFIX = "edgefleet/v1"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade_database(engine)
    yield engine
    engine.dispose()


def add_devices(engine: Engine, *device_ids: str) -> None:
    with session_scope(engine) as session:
        for device_id in device_ids:
            session.add(DeviceRecord(id=device_id, mqtt_password_hash="-"))


def add_assignment(engine: Engine, device_id: str, deployment_sequence: int) -> str:
    """A rollout of digits:2 that assigned ``device_id`` with that deployment sequence."""
    rollout_id = f"r{deployment_sequence}{device_id}"[:32]
    with session_scope(engine) as session:
        release = session.exec(select(ReleaseRecord)).first()
        if release is None:
            session.add(ModelRecord(name="digits", next_version=3))
            version = ModelVersion(
                model_name="digits",
                version=2,
                origin="upload",
                status="registered",
                format="onnx",
                sha256=SHA,
                size_bytes=1,
                inputs=[],
                outputs=[],
                created_by="test",
            )
            session.add(version)
            session.flush()
            release = ReleaseRecord(
                model_version_id=version.id or 0,
                model_name="digits",
                version=2,
                sha256=SHA,
                envelope="{}",
                created_by="test",
            )
            session.add(release)
            session.flush()
        session.add(
            RolloutRecord(
                id=rollout_id,
                release_id=release.id or 0,
                model_name="digits",
                selector="",
                policy={},
                state={},
                status="running",
                created_by="test",
            )
        )
        session.flush()
        session.add(
            RolloutAssignmentRecord(
                rollout_id=rollout_id,
                device_id=device_id,
                wave=0,
                assigned_at_s=NOW_S,
                deployment_sequence=deployment_sequence,
            )
        )
    return rollout_id


def event(device_id: str, seq: int, kind: str, **fields: Any) -> Event:
    values: dict[str, Any] = {
        "device_id": device_id,
        "seq": seq,
        "type": kind,
        "at": T0 + timedelta(seconds=seq),
        "deployment_sequence": 7,
        "release": RELEASE,
    }
    values.update(fields)
    return Event(**values)


def verdict(device_id: str, seq: int, outcome: str) -> Event:
    return event(device_id, seq, "probation_verdict", details={"outcome": outcome})


def assignment(engine: Engine, device_id: str) -> RolloutAssignmentRecord:
    with Session(engine) as session:
        return session.exec(
            select(RolloutAssignmentRecord).where(RolloutAssignmentRecord.device_id == device_id)
        ).one()


def device(engine: Engine, device_id: str) -> DeviceRecord:
    with Session(engine) as session:
        found = session.get(DeviceRecord, device_id)
        assert found is not None
        return found


def models(engine: Engine, device_id: str) -> dict[str, DeviceModelRecord]:
    with Session(engine) as session:
        rows = session.exec(
            select(DeviceModelRecord).where(DeviceModelRecord.device_id == device_id)
        ).all()
        return {row.model_name: row for row in rows}


def rollout_events(engine: Engine) -> list[RolloutEventRecord]:
    with Session(engine) as session:
        return list(session.exec(select(RolloutEventRecord).order_by(col(RolloutEventRecord.id))))


# -- events ------------------------------------------------------------------------------


def test_an_event_delivered_twice_is_stored_and_applied_once(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    add_assignment(engine, "dev-1", 7)
    events = [event("dev-1", 1, "fetching"), event("dev-1", 2, "committed", reason=None)]

    first = apply_events(engine, events, received_at_s=NOW_S)
    again = apply_events(engine, [*events, events[1]], received_at_s=NOW_S + 60)

    assert first == AppliedEvents(applied=2)
    assert again == AppliedEvents(duplicates=3)
    assert assignment(engine, "dev-1").reported_at_s == NOW_S
    with Session(engine) as session:
        assert len(session.exec(select(DeviceEventRecord)).all()) == 2


def test_a_final_event_sets_the_outcome_of_its_deployment(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    add_assignment(engine, "dev-1", 7)

    apply_events(engine, [event("dev-1", 3, "failed", reason="hash_mismatch")], received_at_s=5.0)

    row = assignment(engine, "dev-1")
    assert (row.outcome, row.reason, row.reported_at_s) == ("failed", "hash_mismatch", 5.0)


def test_an_event_of_another_deployment_leaves_the_assignment_alone(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    add_assignment(engine, "dev-1", 7)

    apply_events(engine, [event("dev-1", 3, "committed", deployment_sequence=6)], received_at_s=1)

    assert assignment(engine, "dev-1").outcome == "pending"


@pytest.mark.parametrize(
    ("verdict_first", "outcome"),
    [
        ("commit_unobserved", "committed_unobserved"),
        ("commit", "committed"),
    ],
)
def test_a_commit_after_its_verdict_is_counted_as_the_verdict_says(
    engine: Engine, verdict_first: str, outcome: str
) -> None:
    add_devices(engine, "dev-1")
    add_assignment(engine, "dev-1", 7)

    apply_events(engine, [verdict("dev-1", 4, verdict_first)], received_at_s=1)
    apply_events(engine, [event("dev-1", 5, "committed")], received_at_s=2)

    row = assignment(engine, "dev-1")
    assert (row.outcome, row.probation) == (outcome, verdict_first)


def test_an_unobserved_verdict_arriving_after_the_commit_marks_it_unobserved(
    engine: Engine,
) -> None:
    add_devices(engine, "dev-1")
    add_assignment(engine, "dev-1", 7)

    apply_events(engine, [event("dev-1", 5, "committed")], received_at_s=2)
    apply_events(engine, [verdict("dev-1", 4, "commit_unobserved")], received_at_s=3)

    row = assignment(engine, "dev-1")
    assert (row.outcome, row.reported_at_s) == ("committed_unobserved", 2)


def test_verdict_and_commit_in_one_batch_are_applied_in_device_order(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    add_assignment(engine, "dev-1", 7)

    apply_events(
        engine,
        [event("dev-1", 5, "committed"), verdict("dev-1", 4, "commit_unobserved")],
        received_at_s=2,
    )

    assert assignment(engine, "dev-1").outcome == "committed_unobserved"


def test_a_final_outcome_is_never_overwritten(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    add_assignment(engine, "dev-1", 7)

    apply_events(engine, [event("dev-1", 5, "rolled_back", reason="p95")], received_at_s=2)
    apply_events(engine, [event("dev-1", 6, "committed")], received_at_s=3)
    apply_events(engine, [verdict("dev-1", 4, "commit_unobserved")], received_at_s=4)

    row = assignment(engine, "dev-1")
    assert (row.outcome, row.reason, row.reported_at_s) == ("rolled_back", "p95", 2)


def test_a_device_rollback_is_recorded_once_for_webhooks(engine: Engine) -> None:
    add_devices(engine, "dev-1", "dev-2")
    rollout_id = add_assignment(engine, "dev-1", 7)
    rolled_back = event("dev-1", 5, "rolled_back", reason="nonfinite")
    outside = event("dev-2", 1, "rolled_back", reason="crash", deployment_sequence=3)

    apply_events(engine, [rolled_back, outside], received_at_s=2)
    apply_events(engine, [rolled_back, outside], received_at_s=3)

    recorded = [(e.rollout_id, e.device_id, e.kind, e.details) for e in rollout_events(engine)]
    release = RELEASE.model_dump(mode="json")
    assert recorded == [
        (
            rollout_id,
            "dev-1",
            "device_rolled_back",
            {
                "reason": "nonfinite",
                "release": release,
                "model": "digits",
                "deployment_sequence": 7,
            },
        ),
        (
            None,
            "dev-2",
            "device_rolled_back",
            {
                "reason": "crash",
                "release": release,
                "model": "digits",
                "deployment_sequence": 3,
            },
        ),
    ]
    assert {e.webhook_status for e in rollout_events(engine)} == {"pending"}


def test_events_of_unknown_devices_are_skipped_and_counted(engine: Engine) -> None:
    add_devices(engine, "dev-1")

    applied = apply_events(
        engine, [event("ghost", 1, "committed"), event("dev-1", 1, "fetching")], received_at_s=1
    )

    assert applied == AppliedEvents(applied=1, unknown=1)


def test_two_writers_racing_apply_each_event_once(engine: Engine) -> None:
    device_ids = [f"dev-{index}" for index in range(20)]
    add_devices(engine, *device_ids)
    for device_id in device_ids:
        add_assignment(engine, device_id, 7)
    events = [
        e
        for device_id in device_ids
        for e in (verdict(device_id, 1, "commit_unobserved"), event(device_id, 2, "rolled_back"))
    ]
    results: list[AppliedEvents] = []
    start = threading.Barrier(2)

    def write(order: list[Event]) -> None:
        start.wait()
        results.append(apply_events(engine, order, received_at_s=1))

    threads = [
        threading.Thread(target=write, args=(events,)),
        threading.Thread(target=write, args=(events[::-1],)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sum(result.applied for result in results) == len(events)
    assert sum(result.duplicates for result in results) == len(events)
    assert len(rollout_events(engine)) == len(device_ids)
    assert {assignment(engine, d).outcome for d in device_ids} == {"rolled_back"}


# -- states ------------------------------------------------------------------------------


DIGITS = ModelState(
    model="digits",
    phase="probation",
    active=RELEASE,
    previous=ReleaseRef(model="digits", version=1, sha256="ef" * 32),
    last_good=ReleaseRef(model="digits", version=1, sha256="ef" * 32),
    deployment_sequence=7,
)
CATS = ModelState(
    model="cats",
    phase="idle",
    active=ReleaseRef(model="cats", version=4, sha256="ab" * 32),
    last_good=ReleaseRef(model="cats", version=4, sha256="ab" * 32),
    deployment_sequence=3,
)


def state(device_id: str, at: datetime | None, **fields: Any) -> State:
    values: dict[str, Any] = {
        "device_id": device_id,
        "online": True,
        "agent_version": "0.1.0",
        "phase": "probation",
        "models": [DIGITS],
        "reported_at": at,
    }
    values.update(fields)
    return State(**values)


def test_a_state_sets_the_reported_fields_of_its_device(engine: Engine) -> None:
    add_devices(engine, "dev-1")

    assert apply_states(engine, [("dev-1", state("dev-1", T0))], now=T0) == 1

    row = device(engine, "dev-1")
    assert (row.online, row.phase, row.agent_version) == (True, "probation", "0.1.0")
    digits = models(engine, "dev-1")["digits"]
    assert (digits.phase, digits.active_version, digits.active_sha256) == ("probation", 2, SHA)
    assert (digits.previous_version, digits.last_good_version) == (1, 1)
    assert digits.reported_sequence == 7
    assert row.last_seen_at is not None
    assert to_utc(row.last_seen_at) == T0
    assert (row.reported_state or {}).get("phase") == "probation"


def test_a_state_with_two_models_sets_one_row_per_model(engine: Engine) -> None:
    add_devices(engine, "dev-1")

    apply_states(engine, [("dev-1", state("dev-1", T0, models=[DIGITS, CATS]))], now=T0)

    rows = models(engine, "dev-1")
    assert sorted(rows) == ["cats", "digits"]
    assert (rows["cats"].phase, rows["cats"].active_version) == ("idle", 4)
    assert (rows["cats"].last_good_version, rows["cats"].reported_sequence) == (4, 3)
    assert (rows["digits"].active_version, rows["digits"].reported_sequence) == (2, 7)


def test_a_model_the_device_stops_listing_is_forgotten_unless_something_is_desired_of_it(
    engine: Engine,
) -> None:
    add_devices(engine, "dev-1")
    apply_states(engine, [("dev-1", state("dev-1", T0, models=[DIGITS, CATS]))], now=T0)
    with session_scope(engine) as session:
        row = session.get(DeviceModelRecord, ("dev-1", "digits"))
        assert row is not None
        row.desired_remove, row.desired_sequence, row.desired_envelope = True, 8, "{}"
        session.add(row)

    later = T0 + timedelta(seconds=1)
    apply_states(engine, [("dev-1", state("dev-1", later, models=[]))], now=later)

    rows = models(engine, "dev-1")
    assert sorted(rows) == ["digits"]
    digits = rows["digits"]
    assert (digits.phase, digits.active_version, digits.desired_remove) == (None, None, True)
    assert digits.reported_sequence == 7  # the device's mark outlives the model's files


def test_an_older_state_is_ignored(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    apply_states(engine, [("dev-1", state("dev-1", T0, phase="committed"))], now=T0)

    applied = apply_states(
        engine,
        [("dev-1", state("dev-1", T0 - timedelta(seconds=1), phase="fetching"))],
        now=T0 + timedelta(seconds=5),
    )

    assert applied == 0
    row = device(engine, "dev-1")
    assert row.phase == "committed"
    assert row.last_seen_at is not None
    assert to_utc(row.last_seen_at) == T0


def test_the_newest_of_several_states_in_one_batch_wins(engine: Engine) -> None:
    add_devices(engine, "dev-1")

    apply_states(
        engine,
        [
            ("dev-1", state("dev-1", T0 + timedelta(seconds=2), phase="committed")),
            ("dev-1", state("dev-1", T0 + timedelta(seconds=1), phase="probation")),
        ],
        now=T0,
    )

    assert device(engine, "dev-1").phase == "committed"


def test_the_will_says_offline_and_keeps_the_last_known_release(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    apply_states(engine, [("dev-1", state("dev-1", T0))], now=T0)
    will = State(device_id="dev-1", online=False, agent_version="0.1.0")

    assert apply_states(engine, [("dev-1", will)], now=T0 + timedelta(hours=1)) == 1

    row = device(engine, "dev-1")
    assert (row.online, row.phase) == (False, "probation")
    assert models(engine, "dev-1")["digits"].active_version == 2
    assert row.last_seen_at is not None
    assert to_utc(row.last_seen_at) == T0


def test_a_birth_repeating_the_last_state_after_the_will_brings_the_device_back(
    engine: Engine,
) -> None:
    add_devices(engine, "dev-1")
    online = state("dev-1", T0, phase="committed")
    apply_states(engine, [("dev-1", online)], now=T0)
    apply_states(engine, [("dev-1", State(device_id="dev-1", online=False))], now=T0)

    later = T0 + timedelta(minutes=5)
    applied = apply_states(engine, [("dev-1", online.model_copy(update={"phase": "x"}))], now=later)

    row = device(engine, "dev-1")
    assert applied == 1
    assert (row.online, row.phase) == (True, "committed")
    assert row.last_seen_at is not None
    assert to_utc(row.last_seen_at) == later


def test_states_of_unknown_devices_are_skipped(engine: Engine) -> None:
    add_devices(engine, "dev-1")

    applied = apply_states(
        engine, [("ghost", state("ghost", T0)), ("dev-1", state("dev-1", T0))], now=T0
    )

    assert applied == 1


# -- decoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (f"{PREFIX}/dev-1/telemetry", b"{not json", DropReason.INVALID),
        (f"{PREFIX}/dev-1/events", b'{"device_id": "dev-1", "seq": 0}', DropReason.INVALID),
        (f"{PREFIX}/dev-1/state", b"", DropReason.EMPTY),
        (f"{PREFIX}/dev-1/desired", b"{}", DropReason.TOPIC),
        (f"{PREFIX}/dev-1/nope", b"{}", DropReason.TOPIC),
        ("other/v1/dev-1/state", b"{}", DropReason.TOPIC),
        (f"{PREFIX}/a/b/state", b"{}", DropReason.TOPIC),
        (f"{PREFIX}/dev-2/state", state("dev-1", T0).to_payload(), DropReason.FORGED),
        (f"{PREFIX}/dev-1/state", b" " * (4 * 1024 * 1024 + 1), DropReason.TOO_LARGE),
    ],
)
def test_a_message_that_is_not_a_report_of_its_topic_device_is_dropped(
    topic: str, payload: bytes, reason: DropReason
) -> None:
    decoded = decode_report(PREFIX, topic, payload)

    assert isinstance(decoded, Dropped)
    assert decoded.reason is reason


def test_a_report_decodes_to_what_the_device_sent() -> None:
    sent = event("dev-1", 3, "committed", details={"numbers": [1, 2.5]})

    assert decode_report(PREFIX, f"{PREFIX}/dev-1/events", sent.to_payload()) == sent
