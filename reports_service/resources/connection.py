"""What every WebSocket route does around its messages: count, log, receive."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from falcon import WebSocketDisconnected
from falcon.asgi import WebSocket

from ..metrics import CLOSES, CONNECTIONS
from ..protocol import Payload

logger = logging.getLogger("reports_service.ws")


@contextlib.contextmanager
def tracked(route: str) -> Iterator[None]:
    """Counts the connection as open while the route serves it, and logs when it ends."""
    gauge = CONNECTIONS.labels(route)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()
        logger.info("websocket closed on %s", route)


async def receive(ws: WebSocket) -> Payload | None:
    """The next message, raw (text or bytes), or None once the client has gone."""
    try:
        payload = await ws.receive_media()
    except WebSocketDisconnected as disconnected:
        CLOSES.labels(str(disconnected.code)).inc()
        return None
    assert isinstance(payload, str | bytes)
    return payload
