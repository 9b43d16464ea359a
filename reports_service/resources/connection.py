"""What every WebSocket route does around its messages: admit, count, receive within limits."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from falcon import WebSocketDisconnected
from falcon.asgi import WebSocket

from .. import transport
from ..config import Settings
from ..limits import POLICY_VIOLATION, ConnectionRegistry, RateLimiter, Refused, Tracked
from ..metrics import CLOSES
from ..protocol import Payload

logger = logging.getLogger("reports_service.ws")

MESSAGE_TOO_BIG = 1009


class Connection:
    """One accepted connection: receives within the size and rate limits."""

    def __init__(self, tracked: Tracked, settings: Settings) -> None:
        self.tracked = tracked
        self.send = tracked.send
        self._settings = settings
        self._limiter = RateLimiter(settings.rate_limit, settings.rate_burst)

    async def receive(self) -> Payload | None:
        """The next message, raw (text or bytes), or None once the connection is over."""
        try:
            payload = await self.tracked.ws.receive_media()
        except WebSocketDisconnected as disconnected:
            CLOSES.labels(str(disconnected.code)).inc()
            return None
        self.tracked.last_seen = time.monotonic()
        assert isinstance(payload, str | bytes)
        if _too_big(payload, self._settings.max_message_bytes):
            CLOSES.labels(str(MESSAGE_TOO_BIG)).inc()
            await transport.close(
                self.tracked.ws, MESSAGE_TOO_BIG, "message too big", self._settings.send_timeout
            )
            return None
        return payload

    def throttle(self) -> float:
        """0 when a message may be answered, else seconds to wait; Refused if it goes on."""
        wait = self._limiter.check()
        if wait and self._limiter.refused_in_a_row > self._settings.rate_strikes:
            raise Refused(POLICY_VIOLATION, "rate limit exceeded")
        return wait


def _too_big(payload: Payload, limit: int) -> bool:
    # NOTE: uvicorn enforces the limit on the wire (`serve` sets it); this holds under any server.
    if len(payload) > limit:
        return True
    return isinstance(payload, str) and len(payload) * 4 > limit and len(payload.encode()) > limit


@contextlib.asynccontextmanager
async def serving(
    ws: WebSocket,
    route: str,
    registry: ConnectionRegistry,
    settings: Settings,
    token: str | None = None,
) -> AsyncIterator[Connection]:
    """Admits the connection within the caps, counts it while served, closes it if refused."""
    try:
        with registry.opened(ws, route, token) as tracked:
            yield Connection(tracked, settings)
    except Refused as refused:
        logger.info("closing connection on %s: %s", route, refused.reason)
        CLOSES.labels(str(refused.code)).inc()
        await transport.close(ws, refused.code, refused.reason, settings.send_timeout)
    finally:
        logger.info("websocket closed on %s", route)
