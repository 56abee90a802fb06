"""What devices report, into the database: retained state, lifecycle events, telemetry.

``decode_report`` turns one MQTT message into a typed report (or says why it is dropped);
``write_reports`` stores a batch of them. The ``apply_*`` functions are sync, over an
``Engine``, each call one transaction, meant to run in a worker thread.

Invariants:
- idempotent: applying the same reports again changes nothing. A state older than the one
  stored is ignored, one as old only says the device is online (``reported_at``; a
  reconnecting device repeats its last state as its birth); an offline will changes only
  ``online``; events are keyed by (device_id, seq);
- a newer state sets the reported fields of one ``device_models`` row per model it lists;
  a model it no longer lists keeps its row only while the controller wants something of
  it (a desired envelope), with its reported fields cleared (``phase`` None means "not
  listed"); a row with neither is deleted, so rows never pile up for models a device
  dropped;
- an event's side effects run only in the call whose ``INSERT … ON CONFLICT DO NOTHING
  … RETURNING`` inserted it, so each (device, seq) acts exactly once, whatever MQTT
  redelivers and however many controllers read the topics;
- a final outcome set on a rollout assignment is never overwritten, except that
  ``committed`` becomes ``committed_unobserved`` when the probation verdict of that
  deployment said ``commit_unobserved``, whichever of the two events arrived first;
- reports of devices the database does not know are skipped and counted, never an error;
- rows are locked in one order (devices and assignments by id, events by device and
  seq), so two controllers writing at once wait for each other rather than deadlock.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, and_, bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from protocol import (
    MAX_ENVELOPE_BYTES,
    Channel,
    Event,
    ModelState,
    State,
    TelemetryBatch,
    TopicError,
)
from protocol.topics import parse_device_topic

from ..devices.tables import DeviceEventRecord, DeviceModelRecord, DeviceRecord
from ..rollouts.tables import RolloutAssignmentRecord, RolloutEventRecord
from .telemetry import IN_CHUNK, TelemetryRow, active_device_ids, to_utc, write_telemetry_rows

__all__ = [
    "FINAL_EVENTS",
    "AppliedEvents",
    "DropReason",
    "Dropped",
    "QueuedReport",
    "Report",
    "WrittenReports",
    "apply_events",
    "apply_states",
    "decode_report",
    "write_reports",
]

FINAL_EVENTS = frozenset({"committed", "failed", "rolled_back"})
VERDICT_EVENT = "probation_verdict"
UNOBSERVED_VERDICT = "commit_unobserved"
MAX_REASON_CHARS = 256  # rollout_assignments.reason
MAX_VERDICT_CHARS = 32  # rollout_assignments.probation
TOPIC_CACHE_ENTRIES = 65_536

_DEVICES = DeviceRecord.__table__  # type: ignore[attr-defined]
_MODELS = DeviceModelRecord.__table__  # type: ignore[attr-defined]
_REPORTED_MODEL_COLUMNS = (
    "phase",
    "active_version",
    "active_sha256",
    "previous_version",
    "last_good_version",
    "reported_sequence",
)
_EVENTS = DeviceEventRecord.__table__  # type: ignore[attr-defined]
_ASSIGNMENTS = RolloutAssignmentRecord.__table__  # type: ignore[attr-defined]
_ROLLOUT_EVENTS = RolloutEventRecord.__table__  # type: ignore[attr-defined]


# -- decoding ---------------------------------------------------------------------------


class DropReason(StrEnum):
    TOPIC = "topic"  # not {prefix}/{device}/{state|events|telemetry}
    TOO_LARGE = "too_large"
    INVALID = "invalid"  # not JSON, or not the channel's schema
    FORGED = "forged"  # the payload names another device than its topic
    EMPTY = "empty"  # a retained state cleared by someone


@dataclass(frozen=True)
class Dropped:
    """A message the bridge drops: the reason (a metric label) and what was wrong."""

    reason: DropReason
    detail: str


Report = State | Event | TelemetryBatch
# What the bridge queues: telemetry as rows (see ``telemetry.telemetry_rows``).
QueuedReport = State | Event | TelemetryRow
_SCHEMAS: dict[Channel, type[State] | type[Event] | type[TelemetryBatch]] = {
    Channel.STATE: State,
    Channel.EVENTS: Event,
    Channel.TELEMETRY: TelemetryBatch,
}


def decode_report(prefix: str, topic: str, payload: bytes | bytearray) -> Report | Dropped:
    """The report a device published on ``topic``, or why it is dropped.

    Parsed by pydantic-core straight from the bytes (several times faster than
    ``Document.from_payload``, which parses with the stdlib first): the ingest rate is
    bounded by this and by the MQTT client.
    """
    parsed = _parse_topic(prefix, topic)
    if isinstance(parsed, str):
        return Dropped(DropReason.TOPIC, parsed)
    device_id, schema = parsed
    if not payload:
        return Dropped(DropReason.EMPTY, f"empty payload on {topic}")
    if len(payload) > MAX_ENVELOPE_BYTES:
        return Dropped(DropReason.TOO_LARGE, f"{len(payload)} bytes on {topic}")
    try:
        report = schema.model_validate_json(payload)
    except ValidationError as exc:
        return Dropped(DropReason.INVALID, f"{topic}: {exc.error_count()} errors")
    if report.device_id != device_id:
        return Dropped(DropReason.FORGED, f"{topic} carries {report.device_id!r}")
    return report


@functools.lru_cache(maxsize=TOPIC_CACHE_ENTRIES)
def _parse_topic(
    prefix: str, topic: str
) -> tuple[str, type[State] | type[Event] | type[TelemetryBatch]] | str:
    """The device and report schema of a topic, or what is wrong with it (cached: each
    device publishes on the same three topics again and again)."""
    try:
        device_id, channel = parse_device_topic(prefix, topic)
    except TopicError as exc:
        return str(exc)
    schema = _SCHEMAS.get(channel)
    if schema is None:
        return f"{channel} is not a device report"
    return device_id, schema


# -- states -----------------------------------------------------------------------------


def apply_states(engine: Engine, states: Sequence[tuple[str, State]], *, now: datetime) -> int:
    """Update the devices' reported fields from their states, in order; returns how many
    states were applied (unknown and decommissioned devices, and states not newer than the
    stored one, are skipped). An online state sets ``last_seen_at = now``; an offline one (the will)
    changes only ``online``, so the last known release stays on record.
    """
    if not states:
        return 0
    ids = sorted({device_id for device_id, _ in states})
    with engine.begin() as connection:
        stored: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), IN_CHUNK):
            query = (
                select(_DEVICES.c.id, _DEVICES.c.reported_state)
                .where(
                    _DEVICES.c.id.in_(ids[start : start + IN_CHUNK]),
                    _DEVICES.c.decommissioned_at.is_(None),
                )
                .order_by(_DEVICES.c.id)
                .with_for_update()
            )
            for row in connection.execute(query):
                stored[row.id] = {"reported_state": row.reported_state}
        changes: dict[str, dict[str, Any]] = {}
        newest: dict[str, State] = {}
        applied = 0
        for device_id, state in states:
            if device_id not in stored:
                continue
            current = {**stored[device_id], **changes.get(device_id, {})}
            values = _state_values(state, current.get("reported_state"), now=now)
            if values is None:
                continue
            changes[device_id] = {**changes.get(device_id, {}), **values}
            if "reported_state" in values:
                newest[device_id] = state
            applied += 1
        _update_devices(connection, changes)
        _update_models(connection, newest)
        return applied


def _state_values(
    state: State, stored: dict[str, Any] | None, *, now: datetime
) -> dict[str, Any] | None:
    """The columns ``state`` sets: all of them when it is newer than ``stored``; only that
    the device is online when it is the stored state again (a reconnecting device's birth
    repeats its last state, after its will said offline); None when it is older."""
    if not state.online:
        return {"online": False}
    stored_at = (stored or {}).get("reported_at")
    if state.reported_at is not None and stored_at is not None:
        stored_moment = datetime.fromisoformat(stored_at)
        if state.reported_at < stored_moment:
            return None
        if state.reported_at == stored_moment:
            return {"online": True, "last_seen_at": to_utc(now)}
    return {
        "online": True,
        "last_seen_at": to_utc(now),
        "phase": state.phase,
        "agent_version": state.agent_version,
        "reported_state": state.model_dump(mode="json"),
    }


def _model_values(model: ModelState) -> dict[str, Any]:
    active, previous, last_good = model.active, model.previous, model.last_good
    return {
        "phase": model.phase,
        "active_version": active.version if active else None,
        "active_sha256": active.sha256 if active else None,
        "previous_version": previous.version if previous else None,
        "last_good_version": last_good.version if last_good else None,
        "reported_sequence": model.deployment_sequence,
    }


def _update_models(connection: Connection, states: dict[str, State]) -> None:
    """Make the devices' ``device_models`` rows say what their newest states list (the
    device rows are locked by the caller, so no one else writes these rows meanwhile)."""
    if not states:
        return
    ids = sorted(states)
    existing: dict[tuple[str, str], bool] = {}  # (device, model) -> has a desired envelope
    for start in range(0, len(ids), IN_CHUNK):
        query = (
            select(_MODELS.c.device_id, _MODELS.c.model_name, _MODELS.c.desired_envelope)
            .where(_MODELS.c.device_id.in_(ids[start : start + IN_CHUNK]))
            .order_by(_MODELS.c.device_id, _MODELS.c.model_name)
            .with_for_update()
        )
        for row in connection.execute(query):
            existing[(row.device_id, row.model_name)] = row.desired_envelope is not None
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    unlisted: list[dict[str, Any]] = []
    deletes: list[dict[str, Any]] = []
    for device_id in ids:
        listed = {m.model: m for m in states[device_id].models}
        for name in sorted(listed):
            values = _model_values(listed[name])
            if (device_id, name) in existing:
                updates.append({"_device": device_id, "_model": name, **values})
            else:
                inserts.append(
                    {
                        "device_id": device_id,
                        "model_name": name,
                        "desired_rollback": False,
                        "desired_remove": False,
                        **values,
                    }
                )
        for (owner, name), wanted in existing.items():
            if owner != device_id or name in listed:
                continue
            key = {"_device": owner, "_model": name}
            (unlisted if wanted else deletes).append(key)
    this_row = and_(
        _MODELS.c.device_id == bindparam("_device"), _MODELS.c.model_name == bindparam("_model")
    )
    if updates:
        connection.execute(
            update(_MODELS)
            .where(this_row)
            .values({name: bindparam(name) for name in _REPORTED_MODEL_COLUMNS}),
            updates,
        )
    if unlisted:
        # Keep reported_sequence: the device's mark for the model outlives its files.
        cleared = dict.fromkeys(_REPORTED_MODEL_COLUMNS[:-1])
        connection.execute(update(_MODELS).where(this_row).values(cleared), unlisted)
    if deletes:
        connection.execute(delete(_MODELS).where(this_row), deletes)
    if inserts:
        connection.execute(insert(_MODELS), inserts)


def _update_devices(connection: Connection, changes: dict[str, dict[str, Any]]) -> None:
    """One executemany per set of columns (an offline will sets fewer than a state)."""
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for device_id in sorted(changes):
        values = changes[device_id]
        by_columns.setdefault(tuple(sorted(values)), []).append({"_id": device_id, **values})
    for columns, rows in by_columns.items():
        statement = (
            update(_DEVICES)
            .where(_DEVICES.c.id == bindparam("_id"))
            .values({name: bindparam(name) for name in columns})
        )
        connection.execute(statement, rows)


# -- events -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AppliedEvents:
    applied: int = 0  # newly stored, side effects done
    duplicates: int = 0  # stored before (a redelivery, another controller), or twice here
    unknown: int = 0  # of devices the database does not know


def apply_events(engine: Engine, events: Sequence[Event], *, received_at_s: float) -> AppliedEvents:
    """Store events once per (device, seq) and apply the side effects of the new ones."""
    unique: dict[tuple[str, int], Event] = {}
    for event in events:
        unique.setdefault((event.device_id, event.seq), event)
    repeated = len(events) - len(unique)
    if not unique:
        return AppliedEvents()
    received_at = datetime.fromtimestamp(received_at_s, UTC)
    with engine.begin() as connection:
        known = active_device_ids(connection, (device_id for device_id, _ in unique))
        ordered = [unique[key] for key in sorted(unique) if key[0] in known]
        unknown = len(unique) - len(ordered)
        inserted = _insert_events(connection, ordered, received_at=received_at)
        fresh = [event for event in ordered if (event.device_id, event.seq) in inserted]
        _apply_side_effects(connection, fresh, received_at_s=received_at_s, at=received_at)
    return AppliedEvents(
        applied=len(fresh), duplicates=repeated + len(ordered) - len(fresh), unknown=unknown
    )


def _insert_events(
    connection: Connection, events: Sequence[Event], *, received_at: datetime
) -> set[tuple[str, int]]:
    """Insert what is not stored yet; returns the keys this call inserted."""
    if not events:
        return set()
    dialect = connection.dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(_EVENTS).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(_EVENTS).on_conflict_do_nothing()
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(f"event ingest does not support {dialect}")
    rows = [
        {
            "device_id": event.device_id,
            "seq": event.seq,
            "type": event.type,
            "at": event.at.astimezone(UTC),
            "received_at": received_at,
            "deployment_sequence": event.deployment_sequence,
            "model_name": event.model or (event.release.model if event.release else None),
            "version": event.release.version if event.release else None,
            "reason": event.reason,
            "details": event.details,
        }
        for event in events
    ]
    result = connection.execute(statement.returning(_EVENTS.c.device_id, _EVENTS.c.seq), rows)
    return {(device_id, seq) for device_id, seq in result}


def _apply_side_effects(
    connection: Connection, events: Sequence[Event], *, received_at_s: float, at: datetime
) -> None:
    relevant = [e for e in events if e.type in FINAL_EVENTS or e.type == VERDICT_EVENT]
    if not relevant:
        return
    assignments = _locked_assignments(connection, relevant)
    changed: dict[int, dict[str, Any]] = {}
    rollback_records = []
    for event in relevant:
        row = assignments.get((event.device_id, event.deployment_sequence))
        if row is not None:
            _judge(row, event, received_at_s=received_at_s)
            changed[row["id"]] = row
        if event.type == "rolled_back":
            rollback_records.append(_rollback_record(event, row, at=at))
    for row_id in sorted(changed):
        row = changed[row_id]
        connection.execute(
            update(_ASSIGNMENTS)
            .where(_ASSIGNMENTS.c.id == row_id)
            .values(
                outcome=row["outcome"],
                reason=row["reason"],
                probation=row["probation"],
                reported_at_s=row["reported_at_s"],
            )
        )
    if rollback_records:
        connection.execute(insert(_ROLLOUT_EVENTS), rollback_records)


def _locked_assignments(
    connection: Connection, events: Sequence[Event]
) -> dict[tuple[str, int | None], dict[str, Any]]:
    """The assignments the events are about, by (device, deployment sequence), locked."""
    wanted = {(e.device_id, e.deployment_sequence) for e in events if e.deployment_sequence}
    device_ids = sorted({device_id for device_id, _ in wanted})
    found: dict[tuple[str, int | None], dict[str, Any]] = {}
    for start in range(0, len(device_ids), IN_CHUNK):
        query = (
            select(_ASSIGNMENTS)
            .where(_ASSIGNMENTS.c.device_id.in_(device_ids[start : start + IN_CHUNK]))
            .order_by(_ASSIGNMENTS.c.id)
            .with_for_update()
        )
        for row in connection.execute(query).mappings():
            key = (row["device_id"], row["deployment_sequence"])
            if key in wanted:
                found[key] = dict(row)
    return found


def _judge(row: dict[str, Any], event: Event, *, received_at_s: float) -> None:
    """Apply a verdict or a final event to an assignment row (a dict, changed in place)."""
    if event.type == VERDICT_EVENT:
        verdict = event.details.get("outcome")
        row["probation"] = str(verdict)[:MAX_VERDICT_CHARS] if verdict is not None else None
        if row["outcome"] == "committed" and row["probation"] == UNOBSERVED_VERDICT:
            row["outcome"] = "committed_unobserved"
        return
    if row["outcome"] != "pending":
        return  # a final outcome is never overwritten
    outcome = event.type
    if outcome == "committed" and row["probation"] == UNOBSERVED_VERDICT:
        outcome = "committed_unobserved"
    row["outcome"] = outcome
    row["reason"] = event.reason[:MAX_REASON_CHARS] if event.reason else None
    row["reported_at_s"] = received_at_s


def _rollback_record(
    event: Event, assignment: dict[str, Any] | None, *, at: datetime
) -> dict[str, Any]:
    return {
        "rollout_id": assignment["rollout_id"] if assignment else None,
        "device_id": event.device_id,
        "kind": "device_rolled_back",
        "details": {
            "reason": event.reason,
            "release": event.release.model_dump(mode="json") if event.release else None,
            "model": event.model or (event.release.model if event.release else None),
            "deployment_sequence": event.deployment_sequence,
        },
        "at": at,
        "webhook_status": "pending",
        "webhook_attempts": 0,
    }


# -- a batch ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenReports:
    states: int = 0
    events: AppliedEvents = field(default_factory=lambda: AppliedEvents())
    telemetry_rows: int = 0


def write_reports(
    engine: Engine, reports: Sequence[QueuedReport], *, now: datetime, received_at_s: float
) -> WrittenReports:
    """Store a batch of states, events and telemetry rows: three transactions, each
    idempotent, so a batch that failed halfway can be written again whole."""
    states = [(r.device_id, r) for r in reports if isinstance(r, State)]
    events = [r for r in reports if isinstance(r, Event)]
    rows = [r for r in reports if isinstance(r, dict)]
    return WrittenReports(
        states=apply_states(engine, states, now=now) if states else 0,
        events=apply_events(engine, events, received_at_s=received_at_s)
        if events
        else AppliedEvents(),
        telemetry_rows=write_telemetry_rows(engine, rows) if rows else 0,
    )
