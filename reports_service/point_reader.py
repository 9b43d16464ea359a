"""Reads in the event loop's thread with the standard library's driver: one report by name,
and the first changes after a version."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select
from sqlalchemy.dialects import sqlite

from .db import connect_sqlite, is_busy
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


def _report(
    name: str, title: str, content: str, created: str, updated: str, version: int
) -> Report:
    created_at = UTCDateTime.from_sqlite(created)
    updated_at = created_at if updated == created else UTCDateTime.from_sqlite(updated)
    return Report(name, title, content, created_at, updated_at, version)
