"""Database engines and sessions: SQLite (WAL) by default, PostgreSQL by URL.

Invariants: SQLite transactions begin IMMEDIATE, so two writers never both read and then
deadlock upgrading their locks (the audit chain and version counters read then write);
PostgreSQL uses row locks (``SELECT … FOR UPDATE``) for the same read-then-write steps,
so several controller processes may share one database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlmodel import Session

__all__ = ["make_engine", "reader_engine", "session_scope"]

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, *, immediate: bool = True) -> Engine:
    """An engine for ``url``; ``postgresql://`` URLs use the psycopg 3 driver."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        _configure_sqlite(engine, "BEGIN IMMEDIATE" if immediate else "BEGIN")
        return engine
    return create_engine(url, pool_pre_ping=True)


def reader_engine(engine: Engine) -> Engine:
    """An engine for reads that may run while the same thread holds a write transaction.

    On SQLite every transaction of ``engine`` begins IMMEDIATE and so waits for the one
    writer; a reader's transactions begin deferred and, with WAL, never wait. Reads that
    happen inside a request's transaction (``/metrics``) use it. PostgreSQL needs nothing.
    """
    if engine.dialect.name != "sqlite":
        return engine
    return make_engine(engine.url.render_as_string(hide_password=False), immediate=False)


def _configure_sqlite(engine: Engine, begin: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
