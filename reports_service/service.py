"""What each request does, in protocol terms; knows the repository, not the socket."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Collection

from .access import Grant
from .errors import VersionConflict
from .feed import MISSING, ChangeFeed, Subscriber
from .metrics import query_done
from .protocol import (
    Get,
    GetReply,
    ListReports,
    Page,
    PageReply,
    Ping,
    Pong,
    PongReply,
    Put,
    Remove,
    Removed,
    RemoveReply,
    RequestError,
    Search,
    report_out,
    report_reply,
)
from .records import Change, NewReport, Report
from .repository import ReportRepository

REPLAY_BATCH = 500


class ReportService:
    """Requests (the plain tutorial query, get, list, search, ping, put, remove) and the
    change feed's subscriptions, on the repository and the feed it is given.

    Every request is answered within a :class:`Grant`: a report it may not read answers as
    one that does not exist, and a write outside it is ``forbidden``.
    """

    def __init__(self, repository: ReportRepository, feed: ChangeFeed) -> None:
        self._repository = repository
        self._feed = feed

    def plain_now(self, name: str, grant: Grant) -> dict[str, str] | None:
        """The reply to a plain query when the cache answers it at once; else None, and
        :meth:`plain` answers."""
        if not grant.can_read(name):
            return report_reply(None)
        report = self._feed.cached(name)
        return None if report is MISSING else report_reply(report)  # type: ignore[arg-type]

    async def plain(self, name: str, grant: Grant) -> dict[str, str]:
        return report_reply(await self.report(name, grant))

    async def get(self, request: Get, grant: Grant) -> GetReply:
        report = await self.report(request.name, grant)
        if report is None:
            raise RequestError("not_found", f"no report named {request.name!r}")
        return GetReply(request.id, report_out(report))

    async def page(self, request: ListReports | Search, grant: Grant) -> PageReply:
        before = _cursor(request.cursor)
        text = request.q if isinstance(request, Search) else None
        if not grant.read:
            return PageReply(request.id, Page([], None))
        like, wanted = grant.like(), request.limit + 1
        found: list[Report] = []
        while len(found) < wanted:
            # NOTE: LIKE narrows the rows in the query (SQLite's is case-insensitive, so it
            #   may keep some a pattern does not match); can_read decides, and the loop goes on
            #   past hidden rows until the page is full.
            started = time.perf_counter()
            batch = await self._repository.recent_reports(
                limit=wanted, before=before, text=text, like=like
            )
            query_done(started)
            found.extend(r for r in batch if grant.can_read(r.name))
            if len(batch) < wanted:
                break
            before = batch[-1].version
        more = len(found) > request.limit
        found = found[: request.limit]
        cursor = str(found[-1].version) if more else None
        return PageReply(request.id, Page([report_out(r) for r in found], cursor))

    def ping(self, request: Ping) -> PongReply:
        return PongReply(request.id, Pong(True, self.version or 0, self.epoch))

    async def put(self, request: Put, grant: Grant) -> GetReply:
        stored, _ = await self.write(
            request.name, request.title, request.content, grant, if_version=request.if_version
        )
        return GetReply(request.id, report_out(stored))

    async def remove(self, request: Remove, grant: Grant) -> RemoveReply:
        removed = await self.delete(request.name, grant, if_version=request.if_version)
        return RemoveReply(request.id, removed)

    # -- the operations behind both the WebSocket and the HTTP API -------------------------

    async def report(self, name: str, grant: Grant) -> Report | None:
        """The report ``name``, or None when there is none or ``grant`` may not read it."""
        return await self._feed.report(name) if grant.can_read(name) else None

    async def write(
        self, name: str, title: str, content: str, grant: Grant, *, if_version: int | None
    ) -> tuple[Report, bool]:
        """Add or replace a report: (the report as stored, whether it was added)."""
        _check_write(grant, name)
        try:
            report = NewReport(name, title, content)
        except ValueError as error:
            raise RequestError("invalid_request", str(error)) from None
        try:
            stored, added = await self._repository.put_report(report, if_version=if_version)
        except VersionConflict as conflict:
            self._feed.written()
            raise RequestError("conflict", str(conflict)) from None
        except BaseException:
            self._feed.written()
            raise
        # NOTE: the change as the changelog has it (a copy of the row, at the same time).
        op = "added" if added else "updated"
        self._feed.written(Change(stored.version, op, stored, stored.updated_at))
        return stored, added

    async def delete(self, name: str, grant: Grant, *, if_version: int | None) -> Removed:
        _check_write(grant, name)
        try:
            version = await self._repository.remove_report(name=name, if_version=if_version)
        except VersionConflict as conflict:
            raise RequestError("conflict", str(conflict)) from None
        finally:
            self._feed.written()
        if version is None:
            raise RequestError("not_found", f"no report named {name!r}")
        return Removed(name, version)

    # -- subscriptions ---------------------------------------------------------------------

    @property
    def version(self) -> int | None:
        """The latest change this process has applied; None before the feed's first read."""
        return self._feed.version

    def subscribe(self, subscriber: Subscriber) -> None:
        """Deliver every change applied from now on to ``subscriber``."""
        self._feed.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._feed.discard(subscriber)

    @property
    def epoch(self) -> str:
        """The epoch of the database the feed last read ("" before its first read)."""
        return self._feed.epoch

    async def bounds(self) -> tuple[int, int, str]:
        """(oldest, latest) version a subscription may resume from ((0, 0) when none), and
        the database's epoch now."""
        return await self._repository.changelog_bounds()

    async def replay(
        self, since: int, *, upto: int, names: Collection[str] | None, most: int, grant: Grant
    ) -> list[Change]:
        """The changes after ``since`` up to ``upto`` (to ``names`` if given) that ``grant``
        may read, oldest first.

        A RequestError when there are more than ``most``: the client fetches again instead.
        """
        found: list[Change] = []
        async for batch in self.replay_batches(since, upto=upto, names=names, grant=grant):
            found.extend(batch)
            if len(found) > most:
                raise too_many_to_replay(most, since)
        return found

    async def replay_batches(
        self,
        since: int,
        *,
        upto: int,
        names: Collection[str] | None,
        grant: Grant,
        size: int = REPLAY_BATCH,
    ) -> AsyncIterator[list[Change]]:
        """The same changes as :meth:`replay`, read ``size`` versions at a time, all of them."""
        if not grant.read:
            return
        like = grant.like()
        while True:
            batch = await self._repository.changes_since(
                since, limit=size, upto=upto, names=names, like=like
            )
            yield [c for c in batch if grant.can_read(c.report.name)]
            if len(batch) < size:
                return
            since = batch[-1].version


def too_many_to_replay(most: int, since: int) -> RequestError:
    return RequestError(
        "invalid_request",
        f"more than {most} changes since {since}: "
        "fetch the reports again and subscribe without since",
    )


def _check_write(grant: Grant, name: str) -> None:
    if not grant.write:
        raise RequestError("forbidden", "this token may not write")
    if not grant.covers(name):
        raise RequestError("forbidden", f"this token may not write {name!r}")


def _cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    # NOTE: the length first: int() of over 4,300 digits raises ValueError.
    if len(cursor) > 19 or not (cursor.isascii() and cursor.isdigit()) or int(cursor) >= 2**63:
        raise RequestError("bad_cursor", "cursor must be a `next` value from an earlier page")
    return int(cursor)
