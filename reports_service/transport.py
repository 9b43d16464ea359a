"""Closing with a deadline, and dropping a connection whose peer stopped reading."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from falcon import WebSocketDisconnected
from falcon.asgi import WebSocket

from .metrics import CLOSES

logger = logging.getLogger("reports_service.transport")


async def close(ws: WebSocket, code: int, reason: str, within: float) -> None:
    """Close with ``code``; if the close frame cannot be sent in time, drop the connection."""
    try:
        async with asyncio.timeout(within):
            await ws.close(code, reason)
    except TimeoutError:
        abort(ws)
    except WebSocketDisconnected:
        pass


def abort(ws: WebSocket) -> None:
    # NOTE: ASGI has no call to drop a connection. When the peer stops reading, uvicorn waits
    #   for its buffer to drain before sending anything, a close frame included, and even its
    #   ping timeout only calls transport.close(), which also waits to flush. uvicorn's ASGI
    #   `send` is a method of its protocol object, which holds the asyncio transport: aborting
    #   that frees the buffers at once. Other servers: the connection is left to their timeouts.
    protocol = getattr(getattr(ws, "_asgi_send", None), "__self__", None)
    drop = getattr(getattr(protocol, "transport", None), "abort", None)
    if callable(drop):  # NOTE: uvloop's transports are not asyncio.Transport subclasses
        logger.info("dropping a connection that stopped reading")
        CLOSES.labels("1006").inc()
        with contextlib.suppress(Exception):
            drop()
