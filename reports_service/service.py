"""What each request does, in protocol terms; knows the repository, not the socket."""

from __future__ import annotations

import time

from .feed import ChangeFeed
from .metrics import QUERY_SECONDS
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
from .records import NewReport
from .repository import ReportRepository


class ReportService:
    """Queries: the plain tutorial query, get, list, search and ping."""

    def __init__(self, repository: ReportRepository, feed: ChangeFeed) -> None:
        self.repository = repository
        self.feed = feed

    async def plain(self, name: str) -> dict[str, str]:
        return report_reply(await self.feed.report(name))

    async def get(self, request: Get) -> GetReply:
        report = await self.feed.report(request.name)
        if report is None:
            raise RequestError("not_found", f"no report named {request.name!r}")
        return GetReply(request.id, report_out(report))

    async def page(self, request: ListReports | Search) -> PageReply:
        before = _cursor(request.cursor)
        text = request.q if isinstance(request, Search) else None
        started = time.perf_counter()
        found = await self.repository.recent_reports(
            limit=request.limit + 1, before=before, text=text
        )
        QUERY_SECONDS.observe(time.perf_counter() - started)
        more = len(found) > request.limit
        found = found[: request.limit]
        cursor = str(found[-1].version) if more else None
        return PageReply(request.id, Page([report_out(r) for r in found], cursor))

    def ping(self, request: Ping) -> PongReply:
        return PongReply(request.id, Pong(True, self.feed.version or 0))

    async def put(self, request: Put) -> GetReply:
        try:
            report = NewReport(request.name, request.title, request.content)
        except ValueError as error:
            raise RequestError("invalid_request", str(error)) from None
        await self.repository.add_reports([report], replace=True)
        self.feed.written()
        stored = await self.repository.get_report(name=request.name)
        if stored is None:  # removed by another writer in between
            raise RequestError("not_found", f"no report named {request.name!r}")
        return GetReply(request.id, report_out(stored))

    async def remove(self, request: Remove) -> RemoveReply:
        version = await self.repository.remove_report(name=request.name)
        self.feed.written()
        if version is None:
            raise RequestError("not_found", f"no report named {request.name!r}")
        return RemoveReply(request.id, Removed(request.name, version))


def _cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()) or int(cursor) >= 2**63:
        raise RequestError("bad_cursor", "cursor must be a `next` value from an earlier page")
    return int(cursor)
