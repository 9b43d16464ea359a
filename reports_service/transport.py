"""Closing with a deadline, and dropping a connection whose peer stopped reading."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from falcon import WebSocketDisconnected
from falcon.asgi import Request, WebSocket

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


def trim(req: Request, ws: WebSocket) -> None:
    """Lets go of what an accepted connection no longer needs, for as long as it stays open.

    An idle connection's memory is the budget that matters (see benchmarks/): every byte
    held here is held by each of thousands of connections. Each step is a no-op elsewhere.
    """
    # NOTE: the request headers (the scope's list, and the copy Falcon's Request makes of it)
    #   are read up to the handshake only: by uvicorn, by OriginMiddleware and, through
    #   req.remote_addr (cached by then), by AuthMiddleware and LoggingMiddleware. The routes
    #   never read them, so they are dropped: req.get_header() finds none from here on.
    for headers in (req.scope.get("headers"), getattr(req, "_asgi_headers", None)):
        if isinstance(headers, list | dict):
            headers.clear()
    # NOTE: Falcon makes a receive buffer (with its deque) for every WebSocket, even when
    #   it is turned off (max_receive_queue = 0, see app.py), and then never uses it: one
    #   idle instance serves them all.
    receiver: Any = getattr(ws, "_buffered_receiver", None)
    if getattr(receiver, "_max_queue", None) == 0 and getattr(receiver, "_pump_task", True) is None:
        ws._buffered_receiver = _idle_receiver(type(receiver))
    # NOTE: uvicorn keeps the handshake's HTTP response (and its headers) on its protocol
    #   object after the handshake, and reads it only to send it (see abort() for `send`).
    protocol: Any = getattr(getattr(ws, "_asgi_send", None), "__self__", None)
    if getattr(protocol, "handshake_complete", False) is True and hasattr(protocol, "response"):
        protocol.response = None


_IDLE_RECEIVERS: dict[type, Any] = {}


def _idle_receiver(kind: type) -> Any:
    receiver = _IDLE_RECEIVERS.get(kind)
    if receiver is None:
        receiver = _IDLE_RECEIVERS[kind] = kind(_no_receive, 0)
    return receiver


async def _no_receive() -> dict[str, object]:
    raise RuntimeError("the idle receive buffer never receives")


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
