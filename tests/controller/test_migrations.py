"""The Alembic migrations build exactly the schema the table classes describe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text
from sqlmodel import Session, SQLModel, col, select

# Importing the table modules registers every table on the metadata.
from controller import tables  # noqa: F401
from controller.db import make_engine
from controller.devices import tables as device_tables  # noqa: F401
from controller.devices.tables import DeviceModelRecord, DeviceRecord
from controller.migrate import downgrade_database, upgrade_database
from controller.monitoring import tables as monitoring_tables  # noqa: F401
from controller.pipelines import tables as pipeline_tables  # noqa: F401
from controller.registry import tables as registry_tables  # noqa: F401
from controller.rollouts import tables as rollout_tables  # noqa: F401


def test_migrations_match_the_table_classes(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade_database(engine)
        with engine.connect() as connection:
            differences = compare_metadata(
                MigrationContext.configure(connection), SQLModel.metadata
            )
    finally:
        engine.dispose()
    assert differences == []


def test_upgrading_twice_changes_nothing(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade_database(engine)
        upgrade_database(engine)
    finally:
        engine.dispose()


def _migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    (downgrade_database if down else upgrade_database)(engine, revision)


def _seed_0002(engine: Engine) -> None:
    """A 0002 database: a device running digits:1 and told digits:2 (not taken yet), one
    running digits:1 and told nothing, and one that never reported."""
    now = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO models (name, next_version, created_at) VALUES ('digits', 3, :t)"),
            {"t": now},
        )
        for version in (1, 2):
            connection.execute(
                text(
                    "INSERT INTO model_versions (id, model_name, version, origin, status, format,"
                    " sha256, size_bytes, inputs, outputs, reasons, notes, created_by, created_at)"
                    " VALUES (:v, 'digits', :v, 'upload', 'registered', 'onnx', :sha, 1,"
                    " '[]', '[]', '[]', '[]', 't', :t)"
                ),
                {"v": version, "sha": str(version) * 64, "t": now},
            )
            connection.execute(
                text(
                    "INSERT INTO releases (id, model_version_id, model_name, version, sha256,"
                    " envelope, created_by, created_at)"
                    " VALUES (:v, :v, 'digits', :v, :sha, '{}', 't', :t)"
                ),
                {"v": version, "sha": str(version) * 64, "t": now},
            )
        devices = [
            ("told", "digits", 1, 3, 2, 4, now + timedelta(days=7), '{"x": 1}', 4),
            ("running", "digits", 1, 3, None, None, None, None, None),
            ("new", None, None, None, None, None, None, None, None),
        ]
        for device_id, model, version, reported, release, seq, expires, envelope, pub in devices:
            connection.execute(
                text(
                    "INSERT INTO devices (id, labels, mqtt_password_hash, enrolled_at, online,"
                    " phase, active_model, active_version, active_sha256, previous_version,"
                    " reported_sequence, next_deployment_sequence, next_command_sequence,"
                    " desired_release_id, desired_rollout_id, desired_rollback,"
                    " desired_sequence, desired_expires_at, desired_envelope, published_sequence)"
                    " VALUES (:id, '{}', '-', :t, true, :phase, :model, :version, :sha, NULL,"
                    " :reported, 5, 1, :release, NULL, false, :seq, :expires, :envelope, :pub)"
                ),
                {
                    "id": device_id,
                    "t": now,
                    "phase": None if model is None else "committed",
                    "model": model,
                    "version": version,
                    "sha": None if version is None else "1" * 64,
                    "reported": reported,
                    "release": release,
                    "seq": seq,
                    "expires": expires,
                    "envelope": envelope,
                    "pub": pub,
                },
            )
        # A row referencing a device: SQLite's rebuild of ``devices`` must keep it valid.
        connection.execute(
            text(
                "INSERT INTO telemetry (device_id, model_name, window_start, window_s, requests,"
                " errors, nonfinite, merged) VALUES ('told', 'digits', :t, 10, 1, 0, 0, 1)"
            ),
            {"t": now},
        )


def _migrate_seeded_0002_to_head(engine: Engine) -> None:
    _migrate(engine, "0002")
    _seed_0002(engine)
    _migrate(engine, "head")


def test_0003_moves_each_devices_model_into_device_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        _migrate_seeded_0002_to_head(engine)
        with Session(engine) as session:
            rows = {
                r.device_id: r
                for r in session.exec(
                    select(DeviceModelRecord).order_by(col(DeviceModelRecord.device_id))
                )
            }
            told = session.get(DeviceRecord, "told")
            assert told is not None
            assert (told.desired_sequence, told.published_sequence) == (4, None)
    finally:
        engine.dispose()

    assert sorted(rows) == ["running", "told"]
    assert {r.model_name for r in rows.values()} == {"digits"}
    running, told_row = rows["running"], rows["told"]
    assert (running.phase, running.active_version, running.reported_sequence) == ("committed", 1, 3)
    assert (running.desired_envelope, running.desired_release_id) == (None, None)
    assert (told_row.active_version, told_row.active_sha256) == (1, "1" * 64)
    assert (told_row.desired_release_id, told_row.desired_sequence) == (2, 4)
    assert told_row.desired_envelope == '{"x": 1}'
    # Not taken yet and signed as schema 1: due for renewal at once.
    assert told_row.desired_expires_at is not None
    assert told_row.desired_expires_at.replace(tzinfo=UTC) < datetime(2026, 12, 8, tzinfo=UTC)


def test_0003_downgrades_to_one_model_per_device(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        _migrate_seeded_0002_to_head(engine)
        _migrate(engine, "0002", down=True)
        with engine.connect() as connection:
            row = connection.execute(
                text(
                    "SELECT active_model, active_version, desired_release_id, desired_sequence"
                    " FROM devices WHERE id = 'told'"
                )
            ).one()
        _migrate(engine, "head")
    finally:
        engine.dispose()
    assert tuple(row) == ("digits", 1, 2, 4)
