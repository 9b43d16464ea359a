"""Cheap checks for commits made by other processes, so the change feed reads only when needed.

These read no table: SQLite's ``PRAGMA data_version`` and PostgreSQL's LISTEN. ``changed()`` is
synchronous and costs microseconds, so a query can ask it before trusting a cached report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from typing import Any, Protocol

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import connect_sqlite, is_busy
from .errors import DatabaseUnavailable

CHANNEL = "report_changes"
logger = logging.getLogger("reports_service.watch")


class CommitWatcher(Protocol):
    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None:
        """Open what the watcher listens on; DatabaseUnavailable when it cannot."""

    def changed(self) -> bool:
        """True when something may have been committed since the last call (or ever)."""

    async def close(self) -> None: ...


class SQLiteWatcher:
    """``PRAGMA data_version`` on a connection of its own changes when another one commits."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._last: object = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def connect(self) -> None:
        try:
            # NOTE: the standard library's driver, in the event loop's thread: the pragma reads
            #   a counter in shared memory, far cheaper than a hop to aiosqlite's thread.
            self._conn = connect_sqlite(self._path, mode="rw")
        except sqlite3.Error as error:
            raise DatabaseUnavailable.from_error(error) from error
        self._last = None

    def changed(self) -> bool:
        if self._conn is None:
            return True
        try:
            (value,) = self._conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error as error:
            if is_busy(error):
                return True  # NOTE: cannot tell: the feed reads the changelog, which may wait
            self._conn.close()
            self._conn = None
            raise DatabaseUnavailable.from_error(error) from error
        changed, self._last = value != self._last, value
        return bool(changed)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresWatcher:
    """LISTENs on a dedicated connection. When it drops, ``changed()`` says so (the feed then
    reconnects and catches up from the changelog), so a lost notification loses nothing."""

    # NOTE: a full read now and then even without a notification: a cheap guard against a
    #   notification lost in a way the connection did not notice.
    SAFETY_INTERVAL = 5.0

    def __init__(self, url: URL) -> None:
        self._url = url
        self._conn: Any = None
        self._notified = False
        self._last_read = 0.0

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connect(self) -> None:
        import asyncpg

        await self.close()
        url = self._url
        try:
            conn = await asyncpg.connect(
                host=url.host,
                port=url.port or 5432,
                user=url.username,
                password=url.password,
                database=url.database,
                timeout=5,
            )
            await conn.add_listener(CHANNEL, self._on_notify)
        except (TimeoutError, OSError, asyncpg.PostgresError) as error:
            raise DatabaseUnavailable.from_error(error) from error
        conn.add_termination_listener(self._on_terminate)
        self._conn, self._notified, self._last_read = conn, True, time.monotonic()
        logger.info("listening for changes on %s", CHANNEL)

    def changed(self) -> bool:
        now = time.monotonic()
        if self._notified or not self.connected or now - self._last_read > self.SAFETY_INTERVAL:
            self._notified, self._last_read = False, now
            return True
        return False

    def _on_notify(self, *_args: object) -> None:
        self._notified = True

    def _on_terminate(self, *_args: object) -> None:
        logger.warning("change listener connection lost; reconnecting")

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)


def watcher_for(engine: AsyncEngine) -> CommitWatcher:
    """When the change feed should read: data_version on SQLite, LISTEN on PostgreSQL."""
    if engine.dialect.name == "postgresql":
        return PostgresWatcher(engine.url)
    return SQLiteWatcher(engine.url.database or "")
