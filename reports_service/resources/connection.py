"""What every WebSocket route does around its messages: admit, count, receive within limits."""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar, Generic, TypeVar

from falcon import WebSocketDisconnected
from falcon.asgi import Request, WebSocket

from .. import transport
from ..config import Settings
from ..limits import POLICY_VIOLATION, ConnectionRegistry, RateLimiter, Refused, Tracked
from ..metrics import CLOSES
from ..protocol import Payload, payload_type

logger = logging.getLogger("reports_service.ws")

MESSAGE_TOO_BIG = 1009

S = TypeVar("S")


class Connection(Tracked):
    """One accepted connection: its entry in the registry, and its message limits."""

    __slots__ = ("_limiter", "_settings")

    def __init__(
        self, ws: WebSocket, route: str, settings: Settings, token: str | None = None
    ) -> None:
        super().__init__(ws, route, token)
        self._settings = settings
        self._limiter = RateLimiter(settings.rate_limit, settings.rate_burst)

    def received(self, payload: Payload) -> bool:
        """Takes note of a message; False when it is over the size limit."""
        self.last_seen = time.monotonic()
        return not _too_big(payload, self._settings.max_message_bytes)

    def throttle(self) -> float:
        """0 when a message may be answered, else seconds to wait; Refused if it goes on."""
        wait = self._limiter.check()
        if wait and self._limiter.refused_in_a_row > self._settings.rate_strikes:
            raise Refused(POLICY_VIOLATION, "rate limit exceeded")
        return wait

    async def close(self, code: int, reason: str) -> None:
        await transport.close(self.ws, code, reason, self._settings.send_timeout)


def _too_big(payload: Payload, limit: int) -> bool:
    # NOTE: uvicorn enforces the limit on the wire (`serve` sets it); this holds under any server.
    if len(payload) > limit:
        return True
    return isinstance(payload, str) and len(payload) * 4 > limit and len(payload.encode()) > limit


class WebSocketRoute(Generic[S]):
    """A WebSocket route: admits the connection within the caps, counts it while served,
    receives within the limits and closes it when refused. Subclasses answer the messages.

    NOTE: an idle connection waits in :meth:`on_websocket` itself, with no other frame, task
    or context manager of ours: each would cost memory on every idle connection.
    """

    route: ClassVar[str]

    def __init__(self, registry: ConnectionRegistry, settings: Settings) -> None:
        self._registry = registry
        self._settings = settings

    def open(self, req: Request, conn: Connection) -> S:
        """The connection's state (a session), once admitted."""
        raise NotImplementedError

    async def answer(self, state: S, conn: Connection, payload: Payload) -> Any:
        """The reply to one message, or None for none."""
        raise NotImplementedError

    async def finish(self, state: S) -> None:
        """The connection is over (its state was made by :meth:`open`)."""

    def token_name(self, req: Request) -> str | None:
        """The token the connection counts against (its per-token cap), if any."""
        return None

    async def on_websocket(self, req: Request, ws: WebSocket) -> None:
        if ws.unaccepted:
            await ws.accept()
        transport.trim(req, ws)
        conn = Connection(ws, self.route, self._settings, self.token_name(req))
        try:
            self._registry.admit(conn)
            try:
                state = self.open(req, conn)
                try:
                    while True:
                        try:
                            payload = await ws.receive_media()
                        except WebSocketDisconnected as disconnected:
                            CLOSES.labels(str(disconnected.code)).inc()
                            break
                        assert isinstance(payload, str | bytes)
                        if not conn.received(payload):
                            CLOSES.labels(str(MESSAGE_TOO_BIG)).inc()
                            await conn.close(MESSAGE_TOO_BIG, "message too big")
                            break
                        reply = await self.answer(state, conn, payload)
                        if reply is not None:
                            await conn.send(reply, payload_type(payload))
                        # NOTE: not kept while waiting for the next message
                        del payload, reply
                finally:
                    await self.finish(state)
            finally:
                self._registry.release(conn)
        except Refused as refused:
            logger.info("closing connection on %s: %s", self.route, refused.reason)
            CLOSES.labels(str(refused.code)).inc()
            await conn.close(refused.code, refused.reason)
        finally:
            logger.info("websocket closed on %s", self.route)
