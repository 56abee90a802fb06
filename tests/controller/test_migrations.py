"""The Alembic migrations build exactly the schema the table classes describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from controller import fleet_tables, tables  # noqa: F401 - registers the tables
from controller.db import make_engine
from controller.migrate import upgrade_database


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
