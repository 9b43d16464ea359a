"""One /reports connection: its requests and its subscription; replies go through its outbox."""

from __future__ import annotations

import logging
from typing import Any

from .errors import DatabaseUnavailable, ServiceError
from .metrics import MESSAGE_TALLY, REPLY_TALLY
from .outbox import Outbox, Peer
from .protocol import (
    REPORT_NOT_FOUND,
    UNAVAILABLE,
    AnyRequest,
    Get,
    ListReports,
    Payload,
    Ping,
    ProtocolError,
    Put,
    Remove,
    RequestError,
    ResyncEvent,
    Search,
    Subscribe,
    Subscription,
    SubscriptionReply,
    Unsubscribe,
    decode,
    error_reply,
    event_frame,
    request_id,
)
from .records import Change
from .service import ReportService

logger = logging.getLogger("reports_service.session")


class ReportsSession:
    """Answers one connection's messages and pushes the changes it subscribed to."""

    # NOTE: one per connection, so slots (see resources.connection.Connection on memory).
    __slots__ = (
        "_binary",
        "_can_write",
        "_delivered",
        "_held",
        "_names",
        "_outbox",
        "_peer",
        "_queue_size",
        "_service",
        "_subscribed",
    )

    def __init__(
        self,
        peer: Peer,
        service: ReportService,
        *,
        queue_size: int,
        can_write: bool = False,
    ) -> None:
        self._peer = peer
        self._can_write = can_write
        self._service = service
        self._queue_size = queue_size
        self._outbox: Outbox | None = None  # NOTE: made on the first push: most never subscribe
        self._names: set[str] | None = None  # None: every report
        self._subscribed = False
        self._held: list[Change] | None = None  # live changes held back while replaying
        self._delivered = 0
        self._binary = False

    # -- requests --------------------------------------------------------------------------

    async def handle(self, payload: Payload) -> Any:
        """The direct reply to one message, or None when the reply goes through the outbox."""
        reply, kind, outcome = await self._answer(payload)
        MESSAGE_TALLY.counts[kind] += 1
        REPLY_TALLY.counts[outcome] += 1
        return reply

    async def _answer(self, payload: Payload) -> tuple[Any, str, str]:
        """(reply, kind of message, outcome)"""
        try:
            message = decode(payload)
        except RequestError as error:
            return (
                error_reply(request_id(payload), error.code, error.message),
                "invalid",
                error.code,
            )
        except ProtocolError as error:
            return {"error": str(error)}, "invalid", "invalid_request"
        if isinstance(message, str):
            try:
                reply = await self._service.plain(message)
            except ServiceError as error:
                logger.warning("query failed: %s", error)
                return UNAVAILABLE, "plain", "unavailable"
            return reply, "plain", "ok" if reply is not REPORT_NOT_FOUND else "not_found"
        kind = type(message).__struct_config__.tag
        try:
            return await self._dispatch(message, isinstance(payload, bytes)), str(kind), "ok"
        except RequestError as error:
            return error_reply(message.id, error.code, error.message), str(kind), error.code
        except ServiceError as error:
            logger.warning("request failed: %s", error)
            failed = error_reply(message.id, "unavailable", "database unavailable, retry later")
            return failed, str(kind), "unavailable"

    async def _dispatch(self, request: AnyRequest, binary: bool) -> Any:
        match request:
            case Get():
                return await self._service.get(request)
            case ListReports() | Search():
                return await self._service.page(request)
            case Ping():
                return self._service.ping(request)
            case Subscribe():
                await self._subscribe(request, binary)
            case Unsubscribe():
                self._unsubscribe(request, binary)
            case Put() | Remove():
                if not self._can_write:
                    raise RequestError(
                        "forbidden", "this token may not write: create one with --write"
                    )
                if isinstance(request, Put):
                    return await self._service.put(request)
                return await self._service.remove(request)
        return None

    # -- subscriptions ---------------------------------------------------------------------

    async def _subscribe(self, request: Subscribe, binary: bool) -> None:
        names = set(request.names) if request.names is not None else None
        if self._subscribed:
            if request.since is not None:
                raise RequestError(
                    "invalid_request", "already subscribed: unsubscribe before resuming with since"
                )
            self._names = None if names is None or self._names is None else self._names | names
            self._reply_subscription(request.id, binary)
            return
        if self._service.version is None:
            # NOTE: the feed has not read the changelog yet (database down at start-up): a
            #   subscription now could not say which changes it will get.
            raise DatabaseUnavailable("the change feed is not ready")
        self._binary, self._names, self._subscribed = binary, names, True
        self._peer.subscribed = True  # NOTE: a subscriber is never closed for idling
        self._delivered = self._service.version or 0
        self._held = [] if request.since is not None else None
        self._service.subscribe(self)
        if request.since is None:
            self._reply_subscription(request.id, binary)
            return
        # NOTE: registered first, then read: a change committed meanwhile is both held and
        #   replayed, and the version check in deliver() drops the second copy.
        try:
            oldest, latest = await self._service.bounds()
            resync = request.since > latest or request.since < oldest - 1
            replay = [] if resync else await self._replay(request.since, latest)
        except BaseException:
            self._stop_subscription()
            raise
        self._delivered = max(latest, self._delivered)
        self._reply_subscription(request.id, binary)
        if resync:
            self._push(ResyncEvent("resync", latest))
        for change in replay:
            self._push(event_frame(change, self._binary))
        held, self._held = self._held or [], None
        for change in held:
            self.deliver(change)

    async def _replay(self, since: int, upto: int) -> list[Change]:
        most = self._queue_size
        return await self._service.replay(since, upto=upto, names=self._names, most=most)

    def _reply_subscription(self, rid: Any, binary: bool) -> None:
        names = None if self._names is None else sorted(self._names)
        self._push(SubscriptionReply(rid, Subscription(names, self._delivered)), binary)

    def _unsubscribe(self, request: Unsubscribe, binary: bool) -> None:
        if request.names is None or not self._subscribed:
            self._stop_subscription()
        elif self._names is None:
            raise RequestError(
                "invalid_request", "subscribed to every report: unsubscribe without names"
            )
        else:
            self._names -= set(request.names)
            if not self._names:
                self._stop_subscription()
        if self._subscribed:
            self._reply_subscription(request.id, binary)
        else:
            reply = SubscriptionReply(request.id, Subscription([], self._service.version or 0))
            self._push(reply, binary)

    def _stop_subscription(self) -> None:
        self._service.unsubscribe(self)
        self._subscribed, self._names, self._held = False, None, None
        self._peer.subscribed = False

    @property
    def queue_depth(self) -> int:
        return self._outbox.depth if self._outbox is not None else 0

    def deliver(self, change: Change) -> None:
        if not self._subscribed or (
            self._names is not None and change.report.name not in self._names
        ):
            return
        if self._held is not None:
            self._held.append(change)
            if len(self._held) > self._queue_size:
                self._overflow()
        elif change.version > self._delivered:
            self._delivered = change.version
            self._push(event_frame(change, self._binary))

    # -- the outbox ------------------------------------------------------------------------

    def _push(self, message: Any, binary: bool | None = None) -> None:
        """Queue a message: events in the subscription's format, replies in the request's."""
        if not self._ensure_outbox().push(message, self._binary if binary is None else binary):
            self._overflow()

    def _ensure_outbox(self) -> Outbox:
        if self._outbox is None:
            # NOTE: one more than the limit of events: the subscription reply that precedes them
            self._outbox = Outbox(self._peer, self._queue_size + 1, self._stop_subscription)
        return self._outbox

    def _overflow(self) -> None:
        self._stop_subscription()
        self._ensure_outbox().close_slow()

    async def close(self) -> None:
        self._stop_subscription()
        if self._outbox is not None:
            await self._outbox.close()
