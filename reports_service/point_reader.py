"""The two reads made most often, outside SQLAlchemy's pool: one report by name, and the changes
after a version. On SQLite in the event loop's thread with the standard library's driver; on
PostgreSQL on an asyncpg connection of their own."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL, Dialect

from .db import connect_asyncpg, connect_sqlite, is_busy
from .errors import from_driver
from .models import UTCDateTime
from .records import Change, Report

MMAP_BYTES = 1 << 30


class SQLitePointReader:
    """Reads one row of ``statement`` (a SELECT of the report columns by ``:name``), and the
    rows of ``changes`` (a SELECT of the changelog's version, op, report columns and
    changed_at after ``:since``, at most ``:most``).

    An indexed lookup in SQLite takes microseconds: less than the hop to aiosqlite's thread and
    back, and far less than a pooled SQLAlchemy connection's BEGIN and ROLLBACK around it. In WAL
    mode a reader never waits for a writer. Each read is a transaction of its own, so it sees
    every commit made before it started. The methods raise sqlite3.Error as the driver does.
    """

    def __init__(self, path: str, statement: Select[Any], changes: Select[Any]) -> None:
        self._path = path
        # NOTE: compiled from the repository's own statements, so the two cannot drift.
        self._sql = str(statement.compile(dialect=sqlite.dialect()))
        compiled = changes.compile(dialect=sqlite.dialect())
        self._changes_sql, self._changes_binds = str(compiled), tuple(compiled.positiontup or ())
        self._changes_values = dict(compiled.params)  # NOTE: with the dialect's own (OFFSET 0)
        self._conn: sqlite3.Connection | None = None

    def get(self, name: str) -> Report | None:
        rows = self._read(self._sql, (name,))
        if not rows:
            return None
        name, title, content, created, updated, version = rows[0]
        return _report(name, title, content, created, updated, version)

    def changes(self, since: int, most: int) -> list[Change]:
        """The changes after version ``since``, oldest first, at most ``most``."""
        values = {**self._changes_values, "since": since, "most": most}
        rows = self._read(self._changes_sql, tuple(values[bind] for bind in self._changes_binds))
        return [
            Change(
                version,
                op,
                _report(name, title, content, created, updated, version),
                UTCDateTime.from_sqlite(changed_at),
            )
            for version, op, name, title, content, created, updated, changed_at in rows
        ]

    def _read(self, sql: str, parameters: Sequence[object]) -> list[Any]:
        try:
            if self._conn is None:
                self._conn = connect_sqlite(self._path, mode="ro")
                # NOTE: pages mapped into memory, not read() one syscall at a time: random
                #   lookups in a large database cost a fraction as much.
                self._conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            # NOTE: fetched whole, so the statement ends and no read snapshot stays open.
            return self._conn.execute(sql, parameters).fetchall()
        except sqlite3.Error as error:
            if not is_busy(error):
                self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresPointReader:
    """The same two reads on PostgreSQL, on one asyncpg connection of its own.

    Through the pool each read is three round trips (BEGIN, the query, ROLLBACK; six while the
    pool pinged) and about 0.4 ms more CPU in SQLAlchemy; here it is one, a statement asyncpg
    prepares once, outside a transaction: it sees every commit made before it started. One
    read at a time: while one runs, ``busy`` is true and the caller reads through the pool. A
    connection the server closed is replaced before the next read (asyncpg notices at once);
    one that fails during a read is replaced after it. Errors are raised as the service's
    (errors.from_driver).
    """

    def __init__(
        self, url: URL, dialect: Dialect, statement: Select[Any], changes: Select[Any]
    ) -> None:
        self._url = url
        self._sql = str(statement.compile(dialect=dialect))
        self._changes_sql = str(changes.compile(dialect=dialect))  # NOTE: $1 since, $2 most
        self._conn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.busy = False

    async def get(self, name: str) -> Report | None:
        rows = await self._fetch(self._sql, name)
        if not rows:
            return None
        name, title, content, created, updated, version = rows[0]
        return Report(name, title, content, _utc(created), _utc(updated), version)

    async def changes(self, since: int, most: int) -> list[Change]:
        """The changes after version ``since``, oldest first, at most ``most``."""
        rows = await self._fetch(self._changes_sql, since, most)
        return [
            Change(
                version,
                op,
                Report(name, title, content, _utc(created), _utc(updated), version),
                _utc(changed_at),
            )
            for version, op, name, title, content, created, updated, changed_at in rows
        ]

    async def _fetch(self, sql: str, *arguments: object) -> list[Any]:
        import asyncpg

        self.busy = True
        try:
            loop = asyncio.get_running_loop()
            if self._conn is None or self._conn.is_closed() or self._loop is not loop:
                self._drop()
                self._conn, self._loop = await connect_asyncpg(self._url), loop
            return list(await self._conn.fetch(sql, *arguments))
        except (OSError, TimeoutError, asyncpg.InterfaceError) as error:
            self._drop()  # NOTE: the connection failed: the next read opens another
            raise from_driver(error) from error
        except asyncpg.PostgresError as error:
            raise from_driver(error) from error
        finally:
            self.busy = False

    def _drop(self) -> None:
        conn, self._conn, self._loop = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # NOTE: its loop may be closed already
                conn.terminate()

    async def close(self) -> None:
        conn, self._conn, self._loop = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _report(
    name: str, title: str, content: str, created: str, updated: str, version: int
) -> Report:
    created_at = UTCDateTime.from_sqlite(created)
    updated_at = created_at if updated == created else UTCDateTime.from_sqlite(updated)
    return Report(name, title, content, created_at, updated_at, version)
