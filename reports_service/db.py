"""Engine factory: SQLite through aiosqlite or PostgreSQL through asyncpg, chosen by URL scheme."""

from __future__ import annotations

import sqlite3
import weakref
from typing import Any, NamedTuple
from urllib.parse import quote

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# NOTE: connections of an engine made with this option start their transactions with
#   BEGIN IMMEDIATE, so a SQLite writer takes the write lock up front (and waits for it up to
#   the busy timeout) instead of failing with "database is locked" when it upgrades a read.
WRITE_OPTIONS = {"sqlite_begin": "BEGIN IMMEDIATE"}
SYNCHRONOUS = ("FULL", "NORMAL")
CONNECT_TIMEOUT = 5.0  # NOTE: seconds, for the connections opened outside the pool
# NOTE: SQLite checkpoints the WAL when it reaches 1,000 pages (4 MB) by default, and never
#   shrinks it. On a disk with less than that free the WAL fills it before the checkpoint that
#   would let it start over, and every write fails until a restart. A checkpoint every 100
#   pages (400 KB) keeps the WAL small; after one, a WAL a large transaction grew is cut back.
WAL_AUTOCHECKPOINT_PAGES = 100
JOURNAL_SIZE_LIMIT = 1 << 20


class SQLiteWriter(NamedTuple):
    """A synchronous engine on a SQLite file, and the busy timeout its connections have."""

    engine: Engine
    busy_timeout: float


# NOTE: the synchronous engine make_engine makes beside an async one on a SQLite file, for
#   the repository's writes (see sqlite_writer); keyed by the async engine's sync_engine.
_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, SQLiteWriter] = weakref.WeakKeyDictionary()


class DatabaseURLError(ValueError):
    """The database URL names a backend this service does not support."""


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str | URL) -> str | None:
    """The file behind a SQLite URL, or None for an in-memory database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return parsed.database


def make_engine(
    url: str,
    *,
    busy_timeout: float = 5.0,
    pool_size: int = 10,
    pool_timeout: float = 5.0,
    synchronous: str = "FULL",
) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets WAL, a busy timeout, explicit BEGINs and
    ``synchronous`` (FULL or NORMAL, see the README's Durability)."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": 0,
        "pool_timeout": pool_timeout,
    }
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite":
        if driver != "aiosqlite":
            raise DatabaseURLError(f"use sqlite+aiosqlite:// for SQLite, not {parsed.drivername}")
        if synchronous.upper() not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        engine = create_async_engine(parsed, connect_args={"timeout": busy_timeout}, **kwargs)
        _sqlite_recipe(engine.sync_engine, busy_timeout, synchronous.upper())
        if sqlite_path(parsed) is not None:
            # NOTE: one connection: the repository uses it from one thread of its own.
            writer = create_engine(
                parsed.set(drivername="sqlite"),
                connect_args={"timeout": busy_timeout, "check_same_thread": False},
                pool_size=1,
                max_overflow=0,
                pool_timeout=pool_timeout,
            )
            _sqlite_recipe(writer, busy_timeout, synchronous.upper())
            _SQLITE_WRITERS[engine.sync_engine] = SQLiteWriter(writer, busy_timeout)
        return engine
    if backend == "postgresql":
        if driver != "asyncpg":
            raise DatabaseURLError(
                f"use postgresql+asyncpg:// for PostgreSQL, not {parsed.drivername}"
            )
        engine = create_async_engine(
            parsed,
            connect_args={"timeout": pool_timeout, "command_timeout": 30},
            **kwargs,
        )
        event.listen(engine.sync_engine, "checkout", _replace_if_closed)
        return engine
    raise DatabaseURLError(f"unsupported database {parsed.drivername!r}: use SQLite or PostgreSQL")


def sqlite_writer(engine: AsyncEngine) -> SQLiteWriter | None:
    """The synchronous engine (sqlite3, same file and settings) that make_engine made beside
    ``engine``, or None (PostgreSQL, SQLite in memory, an engine made elsewhere)."""
    return _SQLITE_WRITERS.get(engine.sync_engine)


def _replace_if_closed(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """A pooled PostgreSQL connection the server closed is replaced as it is checked out.

    In place of pool_pre_ping, whose ping on asyncpg is three round trips (BEGIN, the ping,
    ROLLBACK) per checkout, a write's among them: asyncpg marks a connection closed as soon as
    the server ends or resets it (a restart, pg_terminate_backend, a failover). On
    DisconnectionError the pool connects anew (SQLAlchemy's documented recipe).
    """
    if record.driver_connection.is_closed():
        raise exc.DisconnectionError("the database server closed this connection")


def _sqlite_recipe(engine: Engine, busy_timeout: float, synchronous: str) -> None:
    # NOTE: SQLAlchemy's documented recipe for SQLite transactions: switch off the driver's own
    #   implicit BEGIN and emit ours, so that writers can use BEGIN IMMEDIATE.
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cursor.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))


def connect_sqlite(path: str, *, mode: str) -> sqlite3.Connection:
    """A standard-library connection for use in the event loop's thread (``mode`` ro or rw).

    Never creates a database that is not there (a ``file:`` URI with ``mode``).
    """
    # NOTE: timeout 0: SQLite's busy handler would sleep in the loop's thread, stalling every
    #   connection of the process (up to a second with the old timeout=1.0). Busy now fails at
    #   once (see is_busy) and the caller takes the slower path that may wait: the point reader
    #   falls back to aiosqlite's thread, the commit watcher answers "maybe changed". Worst case
    #   in the loop: the statement itself, microseconds.
    return sqlite3.connect(
        f"file:{quote(path)}?mode={mode}",
        uri=True,
        timeout=0,
        isolation_level=None,
        check_same_thread=False,
    )


async def connect_asyncpg(url: URL) -> Any:
    """A plain asyncpg connection to the database ``url`` names, outside any pool, with the
    options of its query as SQLAlchemy's dialect reads them (``ssl=require`` and the like)."""
    import asyncpg

    # NOTE: as SQLAlchemy's asyncpg dialect reads the URL; two of its options are its adapter's.
    options: dict[str, Any] = {**url.translate_connect_args(username="user"), **url.query}
    options.pop("prepared_statement_name_func", None)
    cached = options.pop("prepared_statement_cache_size", None)
    if cached is not None:
        options["statement_cache_size"] = int(cached)
    return await asyncpg.connect(**options, timeout=CONNECT_TIMEOUT, command_timeout=30)


def is_busy(error: sqlite3.Error) -> bool:
    """Whether ``error`` is SQLite's "database is locked/busy": worth retrying, not a fault."""
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
