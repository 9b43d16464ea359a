"""Cheap checks for commits made by other processes, so the change feed reads only when needed.

These issue no queries on tables: SQLite's ``PRAGMA data_version`` and PostgreSQL's LISTEN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .errors import DatabaseUnavailable

CHANNEL = "report_changes"
logger = logging.getLogger("reports_service.watch")


class CommitWatcher(Protocol):
    async def changed(self) -> bool:
        """True when something may have been committed since the last call."""

    async def close(self) -> None: ...


def _unavailable(error: BaseException) -> DatabaseUnavailable:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return DatabaseUnavailable(f"database unavailable: {first}")


class SQLiteWatcher:
    """``PRAGMA data_version`` on a connection of its own changes when another one commits."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._last: object = None

    async def changed(self) -> bool:
        try:
            if self._conn is None:
                self._conn = await self._engine.connect()
            raw = await self._conn.get_raw_connection()
            driver: Any = raw.driver_connection
            cursor = await driver.execute("PRAGMA data_version")
            (value,) = await cursor.fetchone()
        except Exception as error:  # NOTE: the raw driver raises sqlite3's own errors
            await self.close()
            raise _unavailable(error) from error
        changed, self._last = value != self._last, value
        return bool(changed)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close()


class PostgresWatcher:
    """LISTENs on a dedicated connection; reconnects when it drops and reports a change then,
    so the feed catches up from the changelog and a lost notification loses nothing."""

    # NOTE: a full read now and then even without a notification: a cheap guard against a
    #   notification lost in a way the connection did not notice.
    SAFETY_INTERVAL = 5.0

    def __init__(self, url: URL) -> None:
        self._url = url
        self._conn: Any = None
        self._notified = False
        self._last_read = 0.0

    async def changed(self) -> bool:
        if self._conn is None or self._conn.is_closed():
            await self._connect()
            return True
        now = time.monotonic()
        if self._notified or now - self._last_read > self.SAFETY_INTERVAL:
            self._notified, self._last_read = False, now
            return True
        return False

    async def _connect(self) -> None:
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
            raise _unavailable(error) from error
        conn.add_termination_listener(self._on_terminate)
        self._conn, self._notified, self._last_read = conn, False, time.monotonic()
        logger.info("listening for changes on %s", CHANNEL)

    def _on_notify(self, *_args: object) -> None:
        self._notified = True

    def _on_terminate(self, *_args: object) -> None:
        logger.warning("change listener connection lost; reconnecting")

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
