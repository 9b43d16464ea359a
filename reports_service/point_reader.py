"""One report by name, read in the event loop's thread with the standard library's driver."""

from __future__ import annotations

import sqlite3

from sqlalchemy import Select
from sqlalchemy.dialects import sqlite

from .db import connect_sqlite, is_busy
from .models import UTCDateTime
from .records import Report

MMAP_BYTES = 1 << 30


class SQLitePointReader:
    """Reads one row of ``statement`` (a SELECT of the report columns by ``:name``).

    An indexed lookup in SQLite takes microseconds: less than the hop to aiosqlite's thread and
    back, and far less than a pooled SQLAlchemy connection's BEGIN and ROLLBACK around it. In WAL
    mode a reader never waits for a writer. ``get`` raises sqlite3.Error as the driver does.
    """

    def __init__(self, path: str, statement: Select[tuple[str, str, str, object, object, int]]):
        self._path = path
        # NOTE: compiled from the repository's own statement, so the two cannot drift.
        self._sql = str(statement.compile(dialect=sqlite.dialect()))
        self._conn: sqlite3.Connection | None = None

    def get(self, name: str) -> Report | None:
        try:
            if self._conn is None:
                self._conn = connect_sqlite(self._path, mode="ro")
                # NOTE: pages mapped into memory, not read() one syscall at a time: random
                #   lookups in a large database cost a fraction as much.
                self._conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            row = self._conn.execute(self._sql, (name,)).fetchone()
        except sqlite3.Error as error:
            if not is_busy(error):
                self.close()
            raise
        if row is None:
            return None
        title, content, created, updated, version = row[1:]
        created_at = UTCDateTime.from_sqlite(created)
        updated_at = created_at if updated == created else UTCDateTime.from_sqlite(updated)
        return Report(row[0], title, content, created_at, updated_at, version)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
