"""GET /api/changes: the changes a subscription gets, as Server-Sent Events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Collection

from falcon.asgi import Request, Response, SSEvent

from .. import transport
from ..access import Grant
from ..codes import Close
from ..errors import DatabaseUnavailable
from ..limits import Refused
from ..problems import problem
from ..protocol import ErrorCode, RequestError, ResyncEvent, encode_text, event_frame
from ..records import MAX_NAME_LENGTH, Change
from ..service import ReportService
from .connection import Member
from .registry import ConnectionRegistry

logger = logging.getLogger("reports_service.sse")

ROUTE = "/api/changes"
RETRY_MS = 2000  # NOTE: how soon an EventSource reconnects after a drop
MAX_NAMES = 1000


class ChangeStream(Member):
    """One event stream: a subscriber of the feed, and a member of the registry (it counts
    against the connection caps, and is closed on revocation and expiry like a WebSocket)."""

    __slots__ = (
        "_delivered",
        "_ended",
        "_held",
        "_names",
        "_queue",
        "_queue_size",
        "_req",
        "_wake",
    )

    def __init__(
        self, req: Request, grant: Grant, names: Collection[str] | None, queue_size: int
    ) -> None:
        super().__init__(ROUTE, grant)
        self.subscribed = True  # NOTE: never closed for idling
        self._req = req
        self._names = frozenset(names) if names is not None else None
        self._queue_size = queue_size
        self._queue: deque[Change] = deque()
        self._held: list[Change] | None = None  # live changes held back while replaying
        self._delivered = 0
        self._wake = asyncio.Event()
        self._ended = False

    # -- as a subscriber -------------------------------------------------------------------

    def deliver(self, change: Change) -> None:
        name = change.report.name
        if self._ended or (self._names is not None and name not in self._names):
            return
        if not self.grant.can_read(name):
            return
        if self._held is not None:
            self._held.append(change)
            if len(self._held) > self._queue_size:
                self._drop()
        elif change.version > self._delivered:
            self._delivered = change.version
            self._queue.append(change)
            if len(self._queue) > self._queue_size:
                self._drop()
            self._wake.set()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def _drop(self) -> None:
        logger.info("dropping a slow event stream of %r", self.grant.subject)
        self.abort()

    def disconnected(self) -> None:
        """The reader is gone."""
        self._end()

    def _end(self) -> None:
        self._ended = True
        self._queue.clear()
        self._wake.set()

    # -- as a member of the registry -------------------------------------------------------

    async def close(self, code: Close, reason: str) -> None:
        logger.info("ending an event stream of %r: %s", self.grant.subject, reason)
        self._end()
        if self.sending_since:
            self.abort()

    def abort(self) -> None:
        self._end()
        transport.abort_response(self._req)

    def server_stopping(self) -> None:
        # NOTE: the reader's EventSource reconnects (to another server) with Last-Event-ID
        logger.info("ending an event stream of %r: server stopping", self.grant.subject)
        self._end()

    # -- the stream ------------------------------------------------------------------------

    async def start(self, service: ReportService, since: int | None) -> list[SSEvent]:
        """Subscribe; the events that come first: what was missed since ``since``, or a resync.

        Unsubscribed again if it fails (the database down).
        """
        # NOTE: registered first, then read: a change committed meanwhile is both held and
        #   replayed, and the version check in deliver() drops the second copy (as in
        #   session.ReportsSession._subscribe).
        self._delivered = service.version or 0
        self._held = [] if since is not None else None
        service.subscribe(self)
        if since is None:
            return []
        try:
            oldest, latest, _ = await service.bounds()
            first: list[SSEvent] = []
            if since > latest or since < oldest - 1:
                first.append(_resync(latest))
            else:
                try:
                    replay = await service.replay(
                        since,
                        upto=latest,
                        names=self._names,
                        most=self._queue_size,
                        grant=self.grant,
                    )
                    first.extend(_event(change) for change in replay)
                except RequestError:  # NOTE: more than a queue's worth: fetch again instead
                    first.append(_resync(latest))
        except BaseException:
            service.unsubscribe(self)
            raise
        self._delivered = max(latest, self._delivered)
        held, self._held = self._held or [], None
        for change in held:
            self.deliver(change)
        return first

    async def events(
        self,
        first: list[SSEvent],
        service: ReportService,
        registry: ConnectionRegistry,
        keepalive: float,
    ) -> AsyncIterator[SSEvent | None]:
        """``first``, then every change as it is applied; a comment when there is none for
        ``keepalive`` seconds. Ends when closed, dropped, or its reader is gone."""
        try:
            yield SSEvent(retry=RETRY_MS)
            for event in first:
                yield event
            del first
            while not self._ended:
                while self._queue:
                    change = self._queue.popleft()
                    self.sending_since = time.monotonic()
                    yield _event(change)
                    self.sending_since = 0.0
                if self._ended:
                    break
                self._wake.clear()
                try:
                    async with asyncio.timeout(keepalive):
                        await self._wake.wait()
                except TimeoutError:
                    self.sending_since = time.monotonic()
                    yield SSEvent(comment="keep-alive")
                    self.sending_since = 0.0
        finally:
            # NOTE: also when Falcon stops iterating (the reader left): the event loop closes
            #   an abandoned async generator, which runs this.
            self._ended = True
            service.unsubscribe(self)
            registry.release(self)


def _resync(latest: int) -> SSEvent:
    body = encode_text(ResyncEvent("resync", latest))
    return SSEvent(event="resync", event_id=str(latest), text=body)


def _event(change: Change) -> SSEvent:
    frame = event_frame(change, False)
    assert isinstance(frame, str)
    return SSEvent(event=f"report.{change.op}", event_id=str(change.version), text=frame)


class ChangesResource:
    """GET /api/changes[?since=N][&names=a,b]: resumes with ``Last-Event-ID`` as EventSource
    sends it, or ``since``; a comment every ``keepalive`` seconds keeps proxies from closing it.
    """

    def __init__(
        self,
        service: ReportService,
        registry: ConnectionRegistry,
        *,
        queue_size: int,
        keepalive: float,
    ) -> None:
        self._service = service
        self._registry = registry
        self._queue_size = queue_size
        self._keepalive = keepalive

    async def on_get(self, req: Request, resp: Response) -> None:
        since = _since(req)
        names = _names(req)
        if unknown := sorted(set(req.params) - {"since", "names", "access_token"}):
            raise problem(400, f"unknown query parameter {unknown[0]!r}", code="invalid_request")
        if self._service.version is None:
            raise DatabaseUnavailable("the change feed is not ready")
        stream = ChangeStream(req, req.context.grant, names, self._queue_size)
        try:
            self._registry.admit(stream)
        except Refused as refused:
            status = 503 if refused.code == Close.TRY_AGAIN_LATER else 429
            code: ErrorCode = "unavailable" if status == 503 else "rate_limited"
            headers = {"retry-after": "5"}
            raise problem(status, refused.reason, code=code, headers=headers) from None
        try:
            first = await stream.start(self._service, since)
        except BaseException:
            self._registry.release(stream)
            raise
        transport.on_disconnect(req, stream.disconnected)
        resp.set_header("Cache-Control", "no-store")
        resp.set_header("X-Accel-Buffering", "no")  # NOTE: nginx would buffer the stream
        resp.sse = stream.events(first, self._service, self._registry, self._keepalive)


def _since(req: Request) -> int | None:
    last = req.get_header("Last-Event-ID")
    value = last if last else req.get_param("since")
    if value is None:
        return None
    if len(value) > 19 or not (value.isascii() and value.isdigit()) or int(value) >= 2**63:
        where = "Last-Event-ID" if last else "since"
        raise problem(400, f"{where} must be a version (an event's id)", code="invalid_request")
    return int(value)


def _names(req: Request) -> list[str] | None:
    names = req.get_param_as_list("names", delimiter=",")
    if names is None:
        return None
    if len(names) > MAX_NAMES or any(not 0 < len(n) <= MAX_NAME_LENGTH for n in names):
        raise problem(
            400,
            f"names: at most {MAX_NAMES} report names of 1 to {MAX_NAME_LENGTH} characters",
            code="invalid_request",
        )
    return names
