"""The only module that issues SQL: reports and tokens, read and written with SQLAlchemy Core."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hmac
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from sqlalchemy import (
    Table,
    bindparam,
    case,
    delete,
    exc,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import WRITE_OPTIONS, is_busy, make_engine, sqlite_writer
from .errors import (
    DuplicateReports,
    DuplicateToken,
    VersionConflict,
    from_driver,
)
from .models import ApiToken, DatabaseEpoch, Report, ReportChange, RevokedSubject, UTCDateTime
from .point_reader import PostgresPointReader, SQLitePointReader
from .records import MAX_SUBJECT_LENGTH, Change, NewReport, TokenInfo, hash_token, utcnow
from .records import Report as ReportRecord
from .watch import CHANNEL

P = ParamSpec("P")
T = TypeVar("T")

reports = cast(Table, Report.__table__)
tokens = cast(Table, ApiToken.__table__)
changelog = cast(Table, ReportChange.__table__)
revoked_subjects = cast(Table, RevokedSubject.__table__)
epochs = cast(Table, DatabaseEpoch.__table__)

_REPORT_COLUMNS = (
    reports.c.name,
    reports.c.title,
    reports.c.content,
    reports.c.created_at,
    reports.c.updated_at,
    reports.c.version,
)
_GET_REPORT = select(*_REPORT_COLUMNS).where(reports.c.name == bindparam("name"))
_VERSION_OF = select(reports.c.version).where(reports.c.name == bindparam("name"))
_TOKEN_COLUMNS = (
    tokens.c.name,
    tokens.c.created_at,
    tokens.c.revoked_at,
    tokens.c.can_write,
    tokens.c.reports,
    tokens.c.expires_at,
)
_AUTHENTICATE = select(*_TOKEN_COLUMNS, tokens.c.token_hash).where(
    tokens.c.token_hash == bindparam("token_hash"), tokens.c.revoked_at.is_(None)
)
# NOTE: bind names prefixed with b_: SQLAlchemy reserves a column's own name for the SET clause.
_UPDATE_REPORT = (
    update(reports)
    .where(reports.c.name == bindparam("b_name"))
    .values(
        title=bindparam("b_title"),
        content=bindparam("b_content"),
        updated_at=bindparam("b_updated_at"),
        version=bindparam("b_version"),
    )
)
_CHANGES_AFTER = (
    select(
        changelog.c.version,
        changelog.c.op,
        *(changelog.c[column.name] for column in _REPORT_COLUMNS[:-1]),
        changelog.c.changed_at,
    )
    .where(changelog.c.version > bindparam("since"))
    .order_by(changelog.c.version)
    .limit(bindparam("most"))
)
# NOTE: the most changes read in the event loop's thread at once (see changes_since): a change
#   carries up to 1 MB of content, and the loop serves nothing else while it reads.
LOOP_CHANGES = 16
_LATEST_VERSION = select(func.coalesce(func.max(changelog.c.version), 0))
_WRITE_LOCK_KEY = 0x7265706F72747300  # "reports\0": the advisory lock all writers take
# NOTE: the statements of a write are built once: building one and its cache key each time
#   cost more than running it on SQLite (about 0.5 ms of a put's 1 ms of CPU).
_LOCK_WRITERS = select(func.pg_advisory_xact_lock(_WRITE_LOCK_KEY))
_ADD_REPORTS = insert(reports)
_ADD_REPORT_RETURNING = insert(reports).returning(*_REPORT_COLUMNS)
_UPDATE_REPORT_RETURNING = _UPDATE_REPORT.returning(*_REPORT_COLUMNS)
_REMOVE_REPORT = delete(reports).where(reports.c.name == bindparam("name"))
_APPEND_CHANGES = insert(changelog)
_LOG_WRITTEN = insert(changelog).from_select(
    ["version", "op", "name", "title", "content", "created_at", "updated_at", "changed_at"],
    select(
        reports.c.version,
        case((reports.c.created_at == reports.c.updated_at, "added"), else_="updated"),
        reports.c.name,
        reports.c.title,
        reports.c.content,
        reports.c.created_at,
        reports.c.updated_at,
        bindparam("changed_at", type_=UTCDateTime()),
    ).where(reports.c.version >= bindparam("since")),
)
_LATEST_AND_VERSION_OF = select(_LATEST_VERSION.scalar_subquery(), _VERSION_OF.scalar_subquery())
_PRUNE_CHANGES = delete(changelog).where(changelog.c.version <= bindparam("upto"))
# NOTE: one round trip for both on PostgreSQL: a DELETE in WITH runs whether read or not.
_PRUNE_AND_NOTIFY = text(
    "WITH pruned AS (DELETE FROM report_changes WHERE version <= :upto) "
    "SELECT pg_notify(:channel, :latest)"
)
# NOTE: the most writes one group commit runs together (see ReportRepository._transaction):
#   enough to share one fsync among many writers, few enough that one commit stays short.
MAX_BATCH = 64
# NOTE: SQLite allows 32766 bound parameters per statement, PostgreSQL 32767; stay below.
_CHUNK = 10_000


def _translate_errors(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn driver errors into the service's errors, so callers never see SQLAlchemy."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except exc.IntegrityError:
            raise
        except exc.DBAPIError as error:
            raise from_driver(error.orig) from error
        except (sqlite3.Error, OSError, TimeoutError, exc.TimeoutError) as error:
            raise from_driver(error) from error

    return wrapper


def _to_report(row: Any) -> ReportRecord:
    return ReportRecord(
        row.name, row.title, row.content, row.created_at, row.updated_at, row.version
    )


def _name_like(column: Any, like: Sequence[str]) -> Any:
    """Names matching one of the LIKE patterns ``like`` (``\\`` escapes)."""
    return or_(*(column.like(p, escape="\\") for p in like))


def _to_token(row: Any) -> TokenInfo:
    reports = tuple(json.loads(row.reports))
    return TokenInfo(
        row.name, row.created_at, row.revoked_at, row.can_write, reports, row.expires_at
    )


def _prefixed(row: dict[str, Any]) -> dict[str, Any]:
    return {f"b_{key}": value for key, value in row.items()}


@dataclass
class _Queued:
    """A write waiting for the SQLite writer thread: its body, when it was asked, its answer."""

    body: Callable[[Connection], Any]
    asked: float
    future: concurrent.futures.Future[Any]


def _run_batch(conn: Connection, bodies: Sequence[Callable[[Connection], Any]]) -> list[Any]:
    """Run ``bodies`` in ``conn``'s transaction: what each returned, or the exception it raised.

    One body runs as it is (its exception rolls the transaction back); several run each in a
    SAVEPOINT, so one that fails is rolled back alone and the others still commit.
    """
    if len(bodies) == 1:
        return [bodies[0](conn)]
    outcomes: list[Any] = []
    for body in bodies:
        savepoint = conn.begin_nested()
        try:
            outcomes.append(body(conn))
        except Exception as error:
            # NOTE: if the rollback fails too, the transaction is broken: the batch fails. So
            #   it does when the connection was lost (the rollback then does nothing).
            savepoint.rollback()
            if conn.invalidated:
                raise
            outcomes.append(_Failed(error))
        else:
            savepoint.commit()
    return outcomes


@dataclass
class _Failed:
    """The exception a body of a batch raised (its savepoint rolled back)."""

    error: Exception


def _answer(future: concurrent.futures.Future[Any] | asyncio.Future[Any], outcome: Any) -> None:
    if future.done():  # NOTE: an asyncio caller that was cancelled meanwhile
        return
    if isinstance(outcome, _Failed):
        future.set_exception(outcome.error)
    else:
        future.set_result(outcome)


class ReportRepository:
    """Reports and access tokens in a SQL database."""

    def __init__(self, engine: AsyncEngine, *, retention: int = 10_000) -> None:
        self.engine = engine
        self.retention = max(1, retention)
        # NOTE: writes go through an engine whose transactions start with BEGIN IMMEDIATE on
        #   SQLite; other backends ignore the option.
        self._writer = engine.execution_options(**WRITE_OPTIONS)
        # NOTE: on a SQLite file, the writes of the reports run in one thread of their own on
        #   a synchronous engine: a transaction is one hop there and back. Through aiosqlite
        #   each statement, fetch and commit is a hop to its thread (about 26 for a `put`).
        #   One thread also queues this process's writers instead of having them wait on
        #   SQLite's lock, which they would take in turn anyway.
        sync_writer = sqlite_writer(engine)
        self._sync_writer = None
        self._busy_timeout = 0.0
        if sync_writer is not None:
            self._sync_writer = sync_writer.engine.execution_options(**WRITE_OPTIONS)
            self._busy_timeout = sync_writer.busy_timeout
        self._busy_ms = 0  # NOTE: the busy timeout the writer thread's connection has now
        self._writer_thread: ThreadPoolExecutor | None = None
        # NOTE: group commit: the writes waiting for the transaction that runs now. SQLite:
        #   _queue, drained by the writer thread; else _pending, drained by the _drainer task.
        self._queue_lock = threading.Lock()
        self._queue: list[_Queued] = []
        self._draining = False
        self._pending: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None
        # NOTE: diagnostics (tests read them): transactions group commit began, the most
        #   writes one of them carried.
        self.batches = 0
        self.largest_batch = 0
        path = engine.url.database if engine.dialect.name == "sqlite" else None
        self._point_reader: SQLitePointReader | None = None
        if path and path != ":memory:":
            self._point_reader = SQLitePointReader(path, _GET_REPORT, _CHANGES_AFTER)
        self._pg_reader: PostgresPointReader | None = None
        if engine.dialect.name == "postgresql":
            self._pg_reader = PostgresPointReader(
                engine.url, engine.dialect, _GET_REPORT, _CHANGES_AFTER
            )

    # -- reports ---------------------------------------------------------------------------

    @_translate_errors
    async def get_report(self, *, name: str) -> ReportRecord | None:
        if "\x00" in name:  # NOTE: never stored (see NewReport); PostgreSQL rejects it in text
            return None
        if self._point_reader is not None:
            try:
                return self._point_reader.get(name)
            except sqlite3.Error as error:
                if not is_busy(error):
                    raise
                # NOTE: busy (the reader does not wait in the loop): read where waiting is fine
        if self._pg_reader is not None and not self._pg_reader.busy:
            return await self._pg_reader.get(name)
        async with self.engine.connect() as conn:
            row = (await conn.execute(_GET_REPORT, {"name": name})).first()
        return None if row is None else _to_report(row)

    @_translate_errors
    async def list_reports(self, *, limit: int | None = None) -> list[ReportRecord]:
        """Reports by name."""
        stmt = select(*_REPORT_COLUMNS).order_by(reports.c.name).limit(limit)
        async with self.engine.connect() as conn:
            return [_to_report(row) for row in await conn.execute(stmt)]

    @_translate_errors
    async def recent_reports(
        self,
        *,
        limit: int,
        before: int | None = None,
        text: str | None = None,
        like: Sequence[str] | None = None,
    ) -> list[ReportRecord]:
        """Newest change first, from version ``before`` down; ``text`` filters title/content,
        ``like`` (SQL LIKE patterns, ``\\`` escapes) names."""
        if text and "\x00" in text:
            return []
        stmt = select(*_REPORT_COLUMNS).order_by(reports.c.version.desc()).limit(limit)
        if before is not None:
            stmt = stmt.where(reports.c.version < before)
        if like is not None:
            stmt = stmt.where(_name_like(reports.c.name, like))
        if text:
            stmt = stmt.where(
                or_(
                    reports.c.title.icontains(text, autoescape=True),
                    reports.c.content.icontains(text, autoescape=True),
                )
            )
        async with self.engine.connect() as conn:
            return [_to_report(row) for row in await conn.execute(stmt)]

    @_translate_errors
    async def count_reports(self) -> int:
        async with self.engine.connect() as conn:
            result = await conn.execute(select(func.count()).select_from(reports))
            return int(result.scalar_one())

    @_translate_errors
    async def add_reports(self, items: Sequence[NewReport], *, replace: bool = False) -> list[str]:
        """Add reports in one transaction; with ``replace``, existing names are overwritten.

        Returns the names that were replaced.
        """
        names = [item.name for item in items]
        repeated = sorted(name for name, count in Counter(names).items() if count > 1)
        if repeated:
            raise ValueError(f"report name given more than once: {', '.join(repeated[:5])}")
        if not items:
            return []

        def add(conn: Connection) -> set[str]:
            latest, _ = self._lock_changelog(conn)
            # NOTE: without replace, a name that exists fails the insert (unique index),
            #   which rolls everything back; no need to look for them first.
            existing = set(_created_at(conn, names)) if replace else set()
            self._write(conn, items, existing, latest)
            return existing

        try:
            existing = await self._transaction(add)
        except exc.IntegrityError as error:
            async with self.engine.connect() as conn:
                taken = sorted(await conn.run_sync(_created_at, names))
            if not taken:
                raise
            raise DuplicateReports(taken) from error
        return [name for name in names if name in existing]

    @_translate_errors
    async def put_report(
        self, item: NewReport, *, if_version: int | None = None
    ) -> tuple[ReportRecord, bool]:
        """Add or replace one report: (the report as stored, whether it was added).

        With ``if_version``, only if the report is at that version now (0: only if there is
        none); else VersionConflict, and nothing is written.
        """

        def put(conn: Connection) -> tuple[ReportRecord, bool]:
            latest, current = self._lock_changelog(conn, item.name)
            if if_version is not None and if_version != (current or 0):
                raise VersionConflict(item.name, current)
            # NOTE: as _write does for one item, the stored row read back by RETURNING.
            now, version = utcnow(), latest + 1
            row = {"name": item.name, "title": item.title, "content": item.content}
            if current is None:
                values = {**row, "version": version, "created_at": now, "updated_at": now}
                stored = conn.execute(_ADD_REPORT_RETURNING, values).one()
            else:
                values = {**_prefixed(row), "b_version": version, "b_updated_at": now}
                stored = conn.execute(_UPDATE_REPORT_RETURNING, values).one()
            self._log_written(conn, version, version, now)
            return _to_report(stored), current is None

        return await self._transaction(put)

    async def _transaction(self, body: Callable[[Connection], T]) -> T:
        """``body`` run in a write transaction, answered once that transaction committed.

        Group commit: the writes asked while a transaction runs are run together in the next
        one (at most MAX_BATCH), each in its own savepoint, and share its commit (one fsync).
        A write that fails raises to its caller alone; if the commit fails, all of them fail.
        """
        if self._sync_writer is None:
            return cast(T, await self._in_drainer(body))
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._queue_lock:
            self._queue.append(_Queued(body, time.monotonic(), future))
            if not self._draining:
                if self._writer_thread is None:
                    self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
                self._writer_thread.submit(self._drain_queue)
                self._draining = True
        # NOTE: a caller cancelled before its write started cancels it (see _commit_queued).
        return cast(T, await asyncio.wrap_future(future))

    @property
    def queued_writes(self) -> int:
        """The writes waiting for a transaction (not those of the transaction running)."""
        return len(self._queue) + len(self._pending)

    def _drain_queue(self) -> None:
        """In the writer thread: commit the queued writes, a batch at a time, until none is left."""
        while True:
            with self._queue_lock:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                if not batch:
                    self._draining = False
                    return
            self._commit_queued(batch)

    def _commit_queued(self, batch: list[_Queued]) -> None:
        """Run ``batch`` in one transaction; the lock is waited for only for what remains of
        the busy timeout since its oldest write was asked (it may have queued behind others)."""
        assert self._sync_writer is not None
        now = time.monotonic()
        ready: list[_Queued] = []
        for write in batch:
            if not write.future.set_running_or_notify_cancel():
                continue
            if self._busy_timeout - (now - write.asked) <= 0:
                write.future.set_exception(sqlite3.OperationalError("database is locked"))
            else:
                ready.append(write)
        if not ready:
            return
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(ready))
        remaining = self._busy_timeout - (now - ready[0].asked)
        # NOTE: the whole timeout unless the write queued noticeably; the pragma only when the
        #   timeout changes, so the usual write runs no more statements than before.
        queued = remaining < self._busy_timeout - 0.01
        busy_ms = max(1, int((remaining if queued else self._busy_timeout) * 1000))
        try:
            with self._sync_writer.connect() as conn:
                if busy_ms != self._busy_ms:
                    driver = conn.connection.driver_connection
                    assert driver is not None
                    driver.execute(f"PRAGMA busy_timeout={busy_ms}")
                    self._busy_ms = busy_ms
                with conn.begin():
                    outcomes = _run_batch(conn, [write.body for write in ready])
        except BaseException as error:  # NOTE: nothing of the batch committed
            for write in ready:
                write.future.set_exception(error)
            return
        for write, outcome in zip(ready, outcomes, strict=True):
            _answer(write.future, outcome)

    async def _in_drainer(self, body: Callable[[Connection], Any]) -> Any:
        """PostgreSQL (or SQLite in memory): ``body`` queued for the task that drains them."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((body, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain_pending())
        return await future

    async def _drain_pending(self) -> None:
        """Commit the pending writes, a batch per transaction, until none is left."""
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                batch = [(body, future) for body, future in batch if not future.done()]
                if not batch:
                    continue
                self.batches += 1
                self.largest_batch = max(self.largest_batch, len(batch))
                try:
                    # NOTE: the bodies run in a greenlet, each statement awaited on asyncpg's
                    #   connection in the loop, without a thread.
                    async with self._writer.begin() as conn:
                        outcomes = await conn.run_sync(_run_batch, [body for body, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as error:  # NOTE: nothing of the batch committed
                    outcomes = [_Failed(error)] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    _answer(future, outcome)
        finally:
            # NOTE: no await between the loop's last check and here: nothing can be queued
            #   without a drainer to take it.
            self._drainer = None
            for _, future in self._pending:  # NOTE: only left if this task was cancelled
                future.cancel()
            self._pending = []

    def _write(
        self, conn: Connection, items: Sequence[NewReport], existing: set[str], latest: int
    ) -> None:
        """Insert ``items`` (update those in ``existing``) at the versions after ``latest``."""
        now = utcnow()
        added: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        for version, item in enumerate(items, start=latest + 1):
            row = {"name": item.name, "title": item.title, "content": item.content}
            (updated if item.name in existing else added).append({**row, "version": version})
        if added:
            # NOTE: the same created_at and updated_at: _LOG_WRITTEN tells an addition by it.
            conn.execute(_ADD_REPORTS, [{**r, "created_at": now, "updated_at": now} for r in added])
        if updated:
            rows = [{**_prefixed(row), "b_updated_at": now} for row in updated]
            conn.execute(_UPDATE_REPORT, rows)
        self._log_written(conn, latest + 1, latest + len(items), now)

    def _log_written(self, conn: Connection, first: int, last: int, now: datetime) -> None:
        """Log the reports just written at versions first..last, copied by the database.

        Versions the retention would prune at once are not logged at all.
        """
        since = max(first, last - self.retention + 1)
        conn.execute(_LOG_WRITTEN, {"since": since, "changed_at": now})
        self._after_changes(conn, last)

    @_translate_errors
    async def remove_report(self, *, name: str, if_version: int | None = None) -> int | None:
        """The changelog version of the removal, or None when there was no such report.

        With ``if_version``, only if the report is at that version; else VersionConflict.
        """
        if "\x00" in name:  # NOTE: never stored (see NewReport); PostgreSQL rejects it in text
            return None

        def remove(conn: Connection) -> int | None:
            version = self._lock_changelog(conn)[0] + 1
            row = conn.execute(_GET_REPORT, {"name": name}).first()
            if row is None:
                return None
            if if_version is not None and if_version != row.version:
                raise VersionConflict(name, row.version)
            conn.execute(_REMOVE_REPORT, {"name": name})
            change = {**row._asdict(), "version": version, "op": "removed"}
            self._append_changes(conn, [{**change, "changed_at": utcnow()}])
            return version

        return await self._transaction(remove)

    def _lock_changelog(self, conn: Connection, name: str | None = None) -> tuple[int, int | None]:
        """Serialise writers and return the latest version (versions follow commit order), and
        the version of report ``name`` if given (None when there is none)."""
        # NOTE: SQLite's BEGIN IMMEDIATE already holds the database's write lock. On
        #   PostgreSQL, without this lock a change could commit after a later version had been
        #   read by a subscriber, which would then never see it.
        if conn.dialect.name == "postgresql":
            conn.execute(_LOCK_WRITERS)
        if name is None:
            return int(conn.execute(_LATEST_VERSION).scalar_one()), None
        latest, current = conn.execute(_LATEST_AND_VERSION_OF, {"name": name}).one()
        return int(latest), current

    def _append_changes(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        conn.execute(_APPEND_CHANGES, rows)
        self._after_changes(conn, rows[-1]["version"])

    def _after_changes(self, conn: Connection, latest: int) -> None:
        upto = latest - self.retention
        if conn.dialect.name == "postgresql":
            # NOTE: delivered on commit, to every server's listener (watch.PostgresWatcher).
            conn.execute(
                _PRUNE_AND_NOTIFY, {"upto": upto, "channel": CHANNEL, "latest": str(latest)}
            )
        else:
            conn.execute(_PRUNE_CHANGES, {"upto": upto})

    # -- changelog -------------------------------------------------------------------------

    @_translate_errors
    async def changelog_bounds(self) -> tuple[int, int, str]:
        """(oldest, latest) version kept in the changelog ((0, 0) when it is empty) and the
        database's epoch, read together."""
        stmt = select(
            func.coalesce(func.min(changelog.c.version), 0),
            func.coalesce(func.max(changelog.c.version), 0),
            select(epochs.c.epoch).limit(1).scalar_subquery(),
        )
        async with self.engine.connect() as conn:
            oldest, latest, epoch = (await conn.execute(stmt)).one()
        return int(oldest), int(latest), epoch or ""

    @_translate_errors
    async def changes_since(
        self,
        version: int,
        *,
        limit: int,
        upto: int | None = None,
        names: Collection[str] | None = None,
        like: Sequence[str] | None = None,
    ) -> list[Change]:
        """Changes after ``version`` (up to ``upto``), oldest first; only to ``names`` if given,
        and to names matching one of ``like`` (as in :meth:`recent_reports`)."""
        head: list[Change] = []
        every = upto is None and names is None and like is None
        if self._point_reader is not None and every:
            # NOTE: the change feed's read after every commit: the first few in the loop's
            #   thread (40-60 µs, where a pooled aiosqlite read took about 1.5 ms of CPU),
            #   the rest, if there are more, below.
            most = min(limit, LOOP_CHANGES)
            try:
                head = self._point_reader.changes(version, most)
            except sqlite3.Error as error:
                if not is_busy(error):
                    raise
                # NOTE: busy (the reader does not wait in the loop): all of them below
            else:
                if len(head) < most or most == limit:
                    return head
                version, limit = head[-1].version, limit - most
        if self._pg_reader is not None and not self._pg_reader.busy and every:
            return await self._pg_reader.changes(version, limit)
        stmt = (
            select(changelog)
            .where(changelog.c.version > version)
            .order_by(changelog.c.version)
            .limit(limit)
        )
        if upto is not None:
            stmt = stmt.where(changelog.c.version <= upto)
        if names is not None:
            stmt = stmt.where(changelog.c.name.in_([n for n in names if "\x00" not in n]))
        if like is not None:
            stmt = stmt.where(_name_like(changelog.c.name, like))
        async with self.engine.connect() as conn:
            rows = await conn.execute(stmt)
            changes = [Change(row.version, row.op, _to_report(row), row.changed_at) for row in rows]
        return head + changes

    # -- tokens ----------------------------------------------------------------------------

    @_translate_errors
    async def create_token(
        self,
        *,
        name: str,
        token: str,
        can_write: bool = False,
        reports: Sequence[str] = ("*",),
        expires_at: datetime | None = None,
    ) -> None:
        """Store a token; it may see the reports matching ``reports`` until ``expires_at``."""
        if not reports or isinstance(reports, str):
            raise ValueError("a token needs a sequence of at least one report pattern")
        values = {
            "name": name,
            "token_hash": hash_token(token),
            "created_at": utcnow(),
            "can_write": can_write,
            "reports": json.dumps(list(reports)),
            "expires_at": expires_at,
        }
        try:
            async with self._writer.begin() as conn:
                await conn.execute(insert(tokens).values(**values))
        except exc.IntegrityError:
            raise DuplicateToken(
                f"a token named {name!r} (or with that value) exists already"
            ) from None

    @_translate_errors
    async def list_tokens(self) -> list[TokenInfo]:
        stmt = select(*_TOKEN_COLUMNS).order_by(tokens.c.created_at, tokens.c.name)
        async with self.engine.connect() as conn:
            return [_to_token(row) for row in await conn.execute(stmt)]

    @_translate_errors
    async def revoke_token(self, *, name: str) -> bool:
        stmt = (
            update(tokens)
            .where(tokens.c.name == name, tokens.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        async with self._writer.begin() as conn:
            result = await conn.execute(stmt)
        return bool(result.rowcount)

    @_translate_errors
    async def authenticate(self, token: str) -> TokenInfo | None:
        """The live token ``token``, or None (unknown, revoked or expired)."""
        wanted = hash_token(token)
        async with self.engine.connect() as conn:
            row = (await conn.execute(_AUTHENTICATE, {"token_hash": wanted})).first()
        if row is None or not hmac.compare_digest(row.token_hash, wanted):
            return None
        if row.expires_at is not None and row.expires_at <= utcnow():
            return None
        return _to_token(row)

    @_translate_errors
    async def revoked_tokens(self, names: Collection[str]) -> list[str]:
        """Those of ``names`` that were revoked (or no longer exist)."""
        stmt = select(tokens.c.name).where(
            tokens.c.name.in_(list(names)), tokens.c.revoked_at.is_(None)
        )
        async with self.engine.connect() as conn:
            live = set((await conn.execute(stmt)).scalars())
        return [name for name in names if name not in live]

    @_translate_errors
    async def revoke_subject(self, *, subject: str) -> datetime:
        """Refuse every JWT of ``subject`` issued before the returned time (about now)."""
        if not subject or len(subject) > MAX_SUBJECT_LENGTH or "\x00" in subject:
            raise ValueError(f"a subject must be 1 to {MAX_SUBJECT_LENGTH} characters, without NUL")
        # NOTE: `iat` counts whole seconds: a token issued in this second, before now, has the
        #   same `iat` as one issued after; the next whole second refuses both.
        revoked_at = utcnow().replace(microsecond=0) + timedelta(seconds=1)
        async with self._writer.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(revoked_subjects).values(subject=subject, revoked_at=revoked_at)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[revoked_subjects.c.subject],
                    set_={"revoked_at": stmt.excluded.revoked_at},
                )
            )
        return revoked_at

    async def subject_revoked_at(self, subject: str) -> datetime | None:
        """When ``subject`` was last revoked, or None."""
        return (await self.revoked_subjects([subject])).get(subject)

    @_translate_errors
    async def revoked_subjects(self, subjects: Collection[str]) -> dict[str, datetime]:
        """The revocation time of each of ``subjects`` that was revoked."""
        # NOTE: a JWT's `sub` may hold anything; PostgreSQL rejects NUL in text.
        wanted = [s for s in subjects if len(s) <= MAX_SUBJECT_LENGTH and "\x00" not in s]
        if not wanted:
            return {}
        stmt = select(revoked_subjects.c.subject, revoked_subjects.c.revoked_at).where(
            revoked_subjects.c.subject.in_(wanted)
        )
        async with self.engine.connect() as conn:
            return {row.subject: row.revoked_at for row in await conn.execute(stmt)}

    # -- schema ----------------------------------------------------------------------------

    @_translate_errors
    async def schema_revision(self) -> str | None:
        """The Alembic revision the database is at, or None when it was never migrated."""
        async with self.engine.connect() as conn:
            has_table = await conn.run_sync(
                lambda sync: sync.dialect.has_table(sync, "alembic_version")
            )
            if not has_table:
                return None
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()

    async def dispose(self) -> None:
        if self._drainer is not None:
            await asyncio.wait([self._drainer])
        if self._point_reader is not None:
            self._point_reader.close()
        if self._pg_reader is not None:
            await self._pg_reader.close()
        if self._sync_writer is not None:
            if self._writer_thread is not None:
                # NOTE: the writer thread's connection is closed in that thread.
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._writer_thread, self._sync_writer.engine.dispose)
                self._writer_thread.shutdown()
                self._writer_thread = None
            self._sync_writer.engine.dispose()
        await self.engine.dispose()


def _created_at(conn: Connection, names: Sequence[str]) -> dict[str, Any]:
    """Creation times of the reports among ``names`` that exist."""
    found: dict[str, Any] = {}
    for start in range(0, len(names), _CHUNK):
        chunk = names[start : start + _CHUNK]
        stmt = select(reports.c.name, reports.c.created_at).where(reports.c.name.in_(chunk))
        found.update((row.name, row.created_at) for row in conn.execute(stmt))
    return found


class RepositorySettings(Protocol):
    """What :func:`repository_for` reads of the settings (config.Settings has it all)."""

    @property
    def database_url(self) -> str: ...
    @property
    def sqlite_busy_timeout(self) -> float: ...
    @property
    def sqlite_synchronous(self) -> str: ...
    @property
    def pool_size(self) -> int: ...
    @property
    def pool_timeout(self) -> float: ...
    @property
    def changelog_retention(self) -> int: ...


def repository_for(settings: RepositorySettings) -> ReportRepository:
    """The repository a process uses: the engine and changelog retention from settings."""
    engine = make_engine(
        settings.database_url,
        busy_timeout=settings.sqlite_busy_timeout,
        pool_size=settings.pool_size,
        pool_timeout=settings.pool_timeout,
        synchronous=settings.sqlite_synchronous,
    )
    return ReportRepository(engine, retention=settings.changelog_retention)


__all__ = ["ReportRepository", "repository_for"]
