"""Database engines and sessions: SQLite (WAL) by default, PostgreSQL by URL.

Invariants: SQLite transactions begin IMMEDIATE, so two writers never both read and then
deadlock upgrading their locks (the audit chain and version counters read then write);
PostgreSQL uses row locks (``SELECT … FOR UPDATE``) for the same read-then-write steps,
so several controller processes may share one database.

A SQLite database file is private to the controller's user: ``make_engine`` creates it
0600 before SQLite opens it (SQLite gives its ``-wal``, ``-shm`` and journal files the
mode of the database file), and tightens an existing file, and those beside it, that
others may read. It holds token hashes, device credentials and the audit log.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlmodel import Session

from durable import PRIVATE_FILE_MODE

__all__ = ["make_engine", "make_private", "reader_engine", "session_scope"]

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# The files of one SQLite database: the database itself, then what SQLite keeps beside it.
_SQLITE_FILE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def make_engine(url: str, *, immediate: bool = True) -> Engine:
    """An engine for ``url``; ``postgresql://`` URLs use the psycopg 3 driver."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            _create_private_sqlite_file(Path(database))
        engine = create_engine(url, connect_args={"check_same_thread": False})
        _configure_sqlite(engine, "BEGIN IMMEDIATE" if immediate else "BEGIN")
        return engine
    return create_engine(url, pool_pre_ping=True)


def _create_private_sqlite_file(path: Path) -> None:
    """Create the database file 0600 when it is missing; else make it and its kin private.

    A missing directory is left for SQLite to report, as it would without this.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        for suffix in _SQLITE_FILE_SUFFIXES:
            make_private(path.with_name(path.name + suffix))
    except FileNotFoundError:
        return
    else:
        os.close(fd)


def make_private(path: Path) -> None:
    """Take away group and other access to ``path`` (if it exists), saying so."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    try:
        os.chmod(path, mode & 0o700)
    except OSError as exc:
        logger.warning("%s is open to other users (mode %o) and stays so: %s", path, mode, exc)
        return
    logger.warning("%s was open to other users (mode %o): now %o", path, mode, mode & 0o700)


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
