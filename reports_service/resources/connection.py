"""What every WebSocket route does around its messages: admit, count, receive within limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from falcon import WebSocketDisconnected
from falcon.asgi import WebSocket

from .. import transport
from ..config import Settings
from ..limits import POLICY_VIOLATION, ConnectionRegistry, RateLimiter, Refused
from ..metrics import CLOSES
from ..protocol import Payload

logger = logging.getLogger("reports_service.ws")

GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009


class Connection:
    """One accepted connection: receives within the size, rate and idle limits."""

    def __init__(self, ws: WebSocket, settings: Settings) -> None:
        self.ws = ws
        self._settings = settings
        self._limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        self.keep_alive: Callable[[], bool] = lambda: False

    async def receive(self) -> Payload | None:
        """The next message, raw (text or bytes), or None once the connection is over."""
        while True:
            try:
                async with asyncio.timeout(self._settings.idle_timeout or None):
                    payload = await self.ws.receive_media()
            except TimeoutError:
                if self.keep_alive():
                    continue
                await self._close(GOING_AWAY, "idle timeout")
                return None
            except WebSocketDisconnected as disconnected:
                CLOSES.labels(str(disconnected.code)).inc()
                return None
            assert isinstance(payload, str | bytes)
            if _too_big(payload, self._settings.max_message_bytes):
                await self._close(MESSAGE_TOO_BIG, "message too big")
                return None
            return payload

    def throttle(self) -> float:
        """0 when a message may be answered, else seconds to wait; Refused if it goes on."""
        wait = self._limiter.check()
        if wait and self._limiter.refused_in_a_row > self._settings.rate_strikes:
            raise Refused(POLICY_VIOLATION, "rate limit exceeded")
        return wait

    async def _close(self, code: int, reason: str) -> None:
        CLOSES.labels(str(code)).inc()
        await transport.close(self.ws, code, reason, self._settings.send_timeout)


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
        with registry.opened(ws, route, token):
            yield Connection(ws, settings)
    except Refused as refused:
        logger.info("closing connection on %s: %s", route, refused.reason)
        CLOSES.labels(str(refused.code)).inc()
        await transport.close(ws, refused.code, refused.reason, settings.send_timeout)
    finally:
        logger.info("websocket closed on %s", route)
