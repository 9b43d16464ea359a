"""One /reports connection: its requests and its subscription; replies go through its outbox."""

from __future__ import annotations

import logging
from typing import Any

from .access import Authenticator, InvalidToken, KeysUnavailable
from .codes import Close
from .errors import DatabaseUnavailable, ServiceError
from .limits import Refused
from .metrics import TALLY
from .outbox import Outbox, Peer
from .protocol import (
    REPORT_NOT_FOUND,
    UNAVAILABLE,
    AnyRequest,
    Auth,
    AuthReply,
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
    TokenExpiring,
    Unsubscribe,
    decode,
    error_reply,
    event_frame,
    identity,
    plain_text,
    request_id,
)
from .records import Change
from .service import REPLAY_BATCH, ReportService, too_many_to_replay

logger = logging.getLogger("reports_service.session")

_COUNTS = TALLY.counts  # NOTE: cleared in place by flush(), never replaced
PLAIN_OK = ("plain", "ok")
PLAIN_NOT_FOUND = ("plain", "not_found")
PLAIN_UNAVAILABLE = ("plain", "unavailable")


class ReportsSession:
    """Answers one connection's messages and pushes the changes it subscribed to."""

    # NOTE: one per connection, so slots (see resources.connection.Connection on memory).
    __slots__ = (
        "_authenticator",
        "_binary",
        "_delivered",
        "_held",
        "_last_binary",
        "_names",
        "_outbox",
        "_peer",
        "_queue_size",
        "_replay_limit",
        "_service",
        "_subscribed",
    )

    def __init__(
        self,
        peer: Peer,
        service: ReportService,
        *,
        queue_size: int,
        replay_limit: int,
        authenticator: Authenticator | None = None,
        binary: bool = False,
    ) -> None:
        self._peer = peer  # NOTE: its ``grant`` is what this connection may do, refreshed by auth
        self._authenticator = authenticator
        self._service = service
        self._queue_size = queue_size
        self._replay_limit = replay_limit
        self._outbox: Outbox | None = None  # NOTE: made on the first push: most never subscribe
        self._names: set[str] | None = None  # None: every report
        self._subscribed = False
        self._held: list[Change] | None = None  # live changes held back while replaying
        self._delivered = 0
        self._binary = False
        self._last_binary = binary  # NOTE: the format of the client's last message

    # -- requests --------------------------------------------------------------------------

    async def handle(self, payload: Payload) -> Any:
        """The direct reply to one message, or None when the reply goes through the outbox."""
        self._last_binary = isinstance(payload, bytes)
        reply, tally = await self._answer(payload)
        _COUNTS[tally] = _COUNTS.get(tally, 0) + 1
        return reply

    async def _answer(self, payload: Payload) -> tuple[Any, tuple[str, str]]:
        """(reply, (kind of message, outcome))"""
        try:
            message = decode(payload)
        except RequestError as error:
            return (
                error_reply(request_id(payload), error.code, error.message),
                ("invalid", error.code),
            )
        except ProtocolError as error:
            return {"error": str(error)}, ("invalid", "invalid_request")
        if isinstance(message, str):
            # NOTE: a cache hit is answered without a coroutine of the service's or the feed's.
            reply = self._service.plain_now(message, self._peer.grant)
            if reply is None:
                try:
                    reply = await self._service.plain(message, self._peer.grant)
                except ServiceError as error:
                    logger.warning("query failed: %s", error)
                    return UNAVAILABLE, PLAIN_UNAVAILABLE
            if reply is REPORT_NOT_FOUND:
                return (reply if self._last_binary else plain_text(None)), PLAIN_NOT_FOUND
            return (reply if self._last_binary else plain_text(reply["report"])), PLAIN_OK
        kind = str(type(message).__struct_config__.tag)
        try:
            return await self._dispatch(message, isinstance(payload, bytes)), (kind, "ok")
        except RequestError as error:
            return error_reply(message.id, error.code, error.message), (kind, error.code)
        except ServiceError as error:
            logger.warning("request failed: %s", error)
            failed = error_reply(message.id, "unavailable", "database unavailable, retry later")
            return failed, (kind, "unavailable")

    async def _dispatch(self, request: AnyRequest, binary: bool) -> Any:
        grant = self._peer.grant
        match request:
            case Get():
                return await self._service.get(request, grant)
            case ListReports() | Search():
                return await self._service.page(request, grant)
            case Ping():
                return self._service.ping(request)
            case Subscribe():
                await self._subscribe(request, binary)
            case Unsubscribe():
                self._unsubscribe(request, binary)
            case Put():
                return await self._service.put(request, grant)
            case Remove():
                return await self._service.remove(request, grant)
            case Auth():
                return await self._refresh(request)
        return None

    async def _refresh(self, request: Auth) -> AuthReply:
        """Replace the connection's token by a new one of the same subject."""
        if self._authenticator is None:
            raise RequestError("invalid_request", "this connection does not authenticate")
        try:
            grant = await self._authenticator.authenticate(request.token)
        except InvalidToken as error:
            logger.info("refresh refused: %s", error)
            raise RequestError("invalid_token", "invalid token") from None
        except KeysUnavailable as error:
            logger.warning("refresh not checked: %s", error)
            raise RequestError(
                "unavailable", "the token cannot be checked now, retry later"
            ) from None
        old = self._peer.grant
        if grant.identity != old.identity:
            logger.info("refresh refused: %r is not %r", grant.subject, old.subject)
            raise RequestError("forbidden", "a new token must be of the same subject")
        self._peer.refreshed(grant)
        logger.info("token refreshed for %r, expires %s", grant.subject, grant.expires_at)
        return AuthReply(request.id, identity(grant))

    def token_expiring(self) -> None:
        """Warn the client that its token expires soon (see the registry's watchdog)."""
        expires_at = self._peer.grant.expires_at
        if expires_at is not None:
            binary = self._binary if self._subscribed else self._last_binary
            self._push(TokenExpiring("token.expiring", expires_at), binary)

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
            oldest, latest, epoch = await self._service.bounds()
            resync = (
                request.since > latest
                or request.since < oldest - 1
                or (request.epoch is not None and request.epoch != epoch)
            )
            if not resync and latest - request.since > self._replay_limit:
                raise too_many_to_replay(self._replay_limit, request.since)
        except BaseException:
            self._stop_subscription()
            raise
        self._delivered = max(latest, self._delivered)
        self._held = [c for c in self._held or [] if c.version > self._delivered]
        self._reply_subscription(request.id, binary)
        if resync:
            self._push(ResyncEvent("resync", latest))
        else:
            await self._replay(request.since, latest)
        held, self._held = self._held or [], None
        for change in held:
            self.deliver(change)

    async def _replay(self, since: int, upto: int) -> None:
        """Push the changes after ``since`` up to ``upto``, a batch at a time, each sent
        before the next is read: a replay longer than the outbox holds is paced, not refused
        (so a subscriber closed with 4001 resumes without loss)."""
        outbox = self._ensure_outbox()
        size = min(REPLAY_BATCH, self._queue_size)
        grant = self._peer.grant
        try:
            async for batch in self._service.replay_batches(
                since, upto=upto, names=self._names, grant=grant, size=size
            ):
                for change in batch:
                    self._push(event_frame(change, self._binary))
                await outbox.drained()
                if not self._subscribed:  # NOTE: gone, or closed as too slow
                    return
                if len(self._held or ()) > self._queue_size:
                    self._overflow()
                    return
        except ServiceError as error:
            # NOTE: the subscription was confirmed and part of the replay sent: an error reply
            #   would not say where it stopped. The client resumes from its last version.
            logger.warning("replay failed: %s", error)
            self._stop_subscription()
            reason = "database unavailable: resume with since"
            raise Refused(Close.TRY_AGAIN_LATER, reason) from None

    def _reply_subscription(self, rid: Any, binary: bool) -> None:
        names = None if self._names is None else sorted(self._names)
        subscription = Subscription(names, self._delivered, self._service.epoch)
        self._push(SubscriptionReply(rid, subscription), binary)

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
            stopped = Subscription([], self._service.version or 0, self._service.epoch)
            reply = SubscriptionReply(request.id, stopped)
            self._push(reply, binary)

    def _stop_subscription(self) -> None:
        self._service.unsubscribe(self)
        self._subscribed, self._names, self._held = False, None, None
        self._peer.subscribed = False

    @property
    def queue_depth(self) -> int:
        return self._outbox.depth if self._outbox is not None else 0

    def deliver(self, change: Change) -> None:
        name = change.report.name
        if not self._subscribed or (self._names is not None and name not in self._names):
            return
        if not self._peer.grant.can_read(name):
            return
        if self._held is not None:
            # NOTE: a change the replay will send is not held twice; how many newer ones are
            #   held is checked between the replay's batches.
            if change.version > self._delivered:
                self._held.append(change)
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
