"""The Alembic migrations build exactly the schema the table classes describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

# Importing the table modules registers every table on the metadata.
from controller import tables  # noqa: F401
from controller.db import make_engine
from controller.devices import tables as device_tables  # noqa: F401
from controller.migrate import upgrade_database
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
