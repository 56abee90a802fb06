"""Apply the Alembic migrations in ``controller/migrations`` to a database.

Invariant: on SQLite a migration runs with foreign keys off (batch mode copies a table
and drops the old one, which rows of other tables may reference; SQLite ignores
``foreign_keys`` inside a transaction, so it is switched before the transaction begins)
and is checked with ``PRAGMA foreign_key_check`` before it commits: a migration that
breaks a reference rolls back whole.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from .errors import ControllerError

__all__ = ["MIGRATIONS_DIR", "alembic_config", "downgrade_database", "upgrade_database"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (the newest by default); safe at every start."""
    _migrate(engine, revision, downgrade=False)


def downgrade_database(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (data the newer schema alone holds is lost)."""
    _migrate(engine, revision, downgrade=True)


def _migrate(engine: Engine, revision: str, *, downgrade: bool) -> None:
    config = alembic_config()
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            _sqlite_pragma(connection.connection.driver_connection, "foreign_keys=OFF")
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                if downgrade:
                    command.downgrade(config, revision)
                else:
                    command.upgrade(config, revision)
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise ControllerError(
                            f"migrating to {revision} would break {len(broken)} references, "
                            f"e.g. {tuple(broken[0])}: nothing changed"
                        )
        finally:
            if sqlite:
                _sqlite_pragma(connection.connection.driver_connection, "foreign_keys=ON")


def _sqlite_pragma(driver_connection: object, pragma: str) -> None:
    cursor = driver_connection.cursor()  # type: ignore[attr-defined]
    try:
        cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()
