"""Cheap checks for commits made by other processes, so the change feed reads only when needed.

These read no table: SQLite's ``PRAGMA data_version`` and PostgreSQL's LISTEN. ``changed()`` is
synchronous and costs microseconds, so a query can ask it before trusting a cached report.

They also wake the feed when something may have been committed (``wake_with``), so an idle
process has no timer to run: PostgreSQL's notification, and on SQLite the database's files
being written (inotify); ``pause()`` says how long the feed may then sleep. With
``wakeup="poll"``, or where inotify is missing, the feed asks every ``interval`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import connect_asyncpg, connect_sqlite, is_busy
from .errors import DatabaseUnavailable
from .inotify import DirectoryWatch

CHANNEL = "report_changes"
logger = logging.getLogger("reports_service.watch")


class CommitWatcher(Protocol):
    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None:
        """Open what the watcher listens on; DatabaseUnavailable when it cannot."""

    def changed(self) -> bool:
        """True when something may have been committed since the last call (or ever)."""

    def wake_with(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (in the loop's thread) whenever something may have been committed."""

    def pause(self, interval: float) -> float:
        """Seconds the feed may wait, unless woken, before it asks ``changed()`` again
        (``interval``: what it would wait when polling)."""

    async def close(self) -> None: ...


def _nothing() -> None:
    pass


class SQLiteWatcher:
    """``PRAGMA data_version`` on a connection of its own changes when another one commits.

    With inotify, the loop watches the database's directory: a commit writes the WAL, which
    wakes the feed. NOTE: the write comes before the commit is visible (the writer then syncs
    and publishes it in the shared-memory index, which inotify does not see), so after each
    write the feed asks again 0.5, 1, 1.5, 2.25 ... ms later (each time 1.5 times as long after
    the write), for about a second, then only every SAFETY_INTERVAL: nothing at all while
    idle, and a commit seen at most half its writer's sync time after it became visible.
    """

    SETTLE_FIRST = 0.0005
    SETTLE = 1.0
    SAFETY_INTERVAL = 5.0

    def __init__(self, path: str, *, wakeup: str = "auto") -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._last: object = None
        self._wakeup = wakeup
        self._watch: DirectoryWatch | None = None
        self._names: set[str] = set()
        self._wake: Callable[[], None] = _nothing
        self._active_at = -math.inf  # NOTE: the last write or change seen

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def watching(self) -> bool:
        """Whether inotify wakes the feed (else it polls)."""
        return self._watch is not None

    def wake_with(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    async def connect(self) -> None:
        try:
            # NOTE: the standard library's driver, in the event loop's thread: the pragma reads
            #   a counter in shared memory, far cheaper than a hop to aiosqlite's thread.
            self._conn = connect_sqlite(self._path, mode="rw")
        except sqlite3.Error as error:
            raise DatabaseUnavailable.from_error(error) from error
        self._last = None
        if self._wakeup == "auto" and self._watch is None:
            self._start_watch()

    def _start_watch(self) -> None:
        directory, name = os.path.split(os.path.abspath(self._path))
        try:
            watch = DirectoryWatch(directory)
        except OSError as error:
            logger.info("no inotify (%s): polling for commits of other processes", error)
            return
        self._watch, self._names = watch, {name, f"{name}-wal", f"{name}-journal"}
        asyncio.get_running_loop().add_reader(watch.fd, self._on_written)
        logger.info("woken by writes to the database's files in %s (inotify)", directory)

    def _on_written(self) -> None:
        assert self._watch is not None
        names = self._watch.written()
        if names is None or names & self._names:
            self._active_at = time.monotonic()
            self._wake()
        if self._watch.gone:
            logger.warning("the database's directory is no longer watched: polling instead")
            self._stop_watch()

    def _stop_watch(self) -> None:
        if self._watch is not None:
            watch, self._watch = self._watch, None
            with contextlib.suppress(Exception):  # NOTE: the loop may be closed already
                asyncio.get_running_loop().remove_reader(watch.fd)
            watch.close()

    def pause(self, interval: float) -> float:
        if self._watch is None:
            return interval
        since = time.monotonic() - self._active_at
        if since < self.SETTLE:
            return max(self.SETTLE_FIRST, since / 2)  # NOTE: each wait half as long as all before
        return self.SAFETY_INTERVAL

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
        first, changed, self._last = self._last is None, value != self._last, value
        if changed and not first:
            self._active_at = time.monotonic()  # NOTE: more may follow (one write, two commits)
        return bool(changed)

    async def close(self) -> None:
        self._stop_watch()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresWatcher:
    """LISTENs on a dedicated connection. When it drops, ``changed()`` says so (the feed then
    reconnects and catches up from the changelog), so a lost notification loses nothing."""

    # NOTE: a full read now and then even without a notification: a cheap guard against a
    #   notification lost in a way the connection did not notice.
    SAFETY_INTERVAL = 5.0

    def __init__(self, url: URL, *, wakeup: str = "auto") -> None:
        self._url = url
        self._conn: Any = None
        self._notified = False
        self._last_read = 0.0
        self._polling = wakeup == "poll"
        self._wake: Callable[[], None] = _nothing

    def wake_with(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def pause(self, interval: float) -> float:
        return interval if self._polling else self.SAFETY_INTERVAL

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connect(self) -> None:
        import asyncpg

        await self.close()
        try:
            conn = await connect_asyncpg(self._url)
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
        if not self._polling:
            self._wake()

    def _on_terminate(self, conn: object) -> None:
        if conn is not self._conn:
            return  # NOTE: closed here (stop, or replaced by a new connection), not lost
        logger.warning("change listener connection lost; reconnecting")
        self._wake()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)


def watcher_for(engine: AsyncEngine, wakeup: str = "auto") -> CommitWatcher:
    """When the change feed should read: data_version on SQLite, LISTEN on PostgreSQL; woken
    by the database (``auto``) or asking every feed interval (``poll``)."""
    if engine.dialect.name == "postgresql":
        return PostgresWatcher(engine.url, wakeup=wakeup)
    return SQLiteWatcher(engine.url.database or "", wakeup=wakeup)
