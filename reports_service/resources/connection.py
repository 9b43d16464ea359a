"""One accepted WebSocket connection: what it sends, its limits, and how it is closed."""

from __future__ import annotations

import math
import time
from typing import Protocol

from falcon.asgi import WebSocket
from falcon.constants import WebSocketPayloadType

from .. import transport
from ..access import Grant
from ..codes import Close
from ..config import Settings
from ..limits import RateLimiter, Refused
from ..metrics import count_close
from ..protocol import Payload

# NOTE: the grant of a connection on a route that does not authenticate (/echo): nothing.
ANONYMOUS = Grant("-", "none", read=False)


class ExpiryListener(Protocol):
    def token_expiring(self) -> None:
        """The connection's token expires in less than the warning time."""


async def close(ws: WebSocket, code: Close, reason: str, within: float) -> None:
    """Close with ``code``, counted; a peer that does not take the close frame in time is
    dropped."""
    count_close(code)
    await transport.close(ws, code, reason, within)


class Soonest:
    """The earliest expiry of the tokens of a registry's connections, or an earlier time: a
    refresh lowers it at once, the registry's scan puts it back up."""

    __slots__ = ("expires",)

    def __init__(self) -> None:
        self.expires = math.inf

    def lower(self, expires: float) -> None:
        self.expires = min(self.expires, expires)


class Member:
    """What the registry keeps of each open WebSocket connection or event stream: its route,
    its grant (what its token may do), and when it was last seen, sent to, or subscribed."""

    __slots__ = (
        "expiry_warned",
        "grant",
        "identity",
        "last_seen",
        "listener",
        "route",
        "sending_since",
        "soonest",
        "subscribed",
        "token",
    )

    def __init__(self, route: str, grant: Grant | None) -> None:
        self.route = route
        self.grant: Grant = grant or ANONYMOUS
        self.identity = self.grant.identity  # NOTE: as admitted; a refresh keeps it
        self.soonest: Soonest | None = None  # NOTE: the registry's, once admitted
        self.token = grant.key if grant is not None else None  # what the per-token cap counts
        self.listener: ExpiryListener | None = None
        self.expiry_warned = False
        self.last_seen = time.monotonic()
        self.sending_since = 0.0  # 0: no send under way
        self.subscribed = False  # True: not idle, even without messages

    def refreshed(self, grant: Grant) -> None:
        """From now on the connection may do what ``grant`` says (same identity)."""
        self.grant = grant
        self.expiry_warned = False
        if self.soonest is not None:
            self.soonest.lower(grant.expires)

    async def close(self, code: Close, reason: str) -> None:
        """End it, telling the peer why (a close frame, or the end of a stream)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop it at once: its peer stopped reading."""
        raise NotImplementedError

    def server_stopping(self) -> None:
        """The server is stopping (a WebSocket is closed by the server itself, with 1012)."""


class Connection(Member):
    """One accepted connection: its entry in the registry, and its message limits.

    NOTE: one of these lives as long as each connection, so it has slots and holds no
    callables. An idle connection's memory is the budget that matters (see benchmarks/):
    this is the one place that says so; every ``__slots__`` and ``del`` here serves it.
    """

    __slots__ = ("_limiter", "_settings", "ws")

    def __init__(
        self, ws: WebSocket, route: str, settings: Settings, grant: Grant | None = None
    ) -> None:
        super().__init__(route, grant)
        self.ws = ws
        self._settings = settings
        self._limiter = RateLimiter(settings.rate_limit, settings.rate_burst)

    def received(self, payload: Payload) -> bool:
        """Takes note of a message; False when it is over the size limit."""
        self.last_seen = time.monotonic()
        limit = self._settings.max_message_bytes
        # NOTE: at most 4 bytes of UTF-8 per character: most messages need no closer look.
        return len(payload) * 4 <= limit or not _too_big(payload, limit)

    def throttle(self) -> float:
        """0 when a message may be answered, else seconds to wait; Refused if it goes on."""
        wait = self._limiter.check()
        if wait and self._limiter.refused_in_a_row > self._settings.rate_strikes:
            raise Refused(Close.POLICY_VIOLATION, "rate limit exceeded")
        return wait

    async def send(self, message: object, kind: WebSocketPayloadType) -> None:
        # NOTE: no timer per message: the watchdog drops a connection whose send has waited
        #   longer than the send timeout (its peer stopped reading).
        self.sending_since = time.monotonic()
        try:
            if isinstance(message, str):  # already encoded (see protocol.event_frame)
                await self.ws.send_text(message)
            elif isinstance(message, bytes):
                await self.ws.send_data(message)
            else:
                await self.ws.send_media(message, kind)
        finally:
            self.sending_since = 0.0

    def send_now(self, frame: str | bytes) -> bool:
        return transport.send_now(self.ws, frame)

    async def close(self, code: Close, reason: str) -> None:
        await close(self.ws, code, reason, self._settings.send_timeout)

    def abort(self) -> None:
        transport.abort(self.ws)


def _too_big(payload: Payload, limit: int) -> bool:
    # NOTE: uvicorn enforces the limit on the wire (`serve` sets it); this holds under any server.
    if len(payload) > limit:
        return True
    return isinstance(payload, str) and len(payload) * 4 > limit and len(payload.encode()) > limit
