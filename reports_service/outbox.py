"""One connection's bounded queue of outgoing messages, and the task that sends them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from falcon import WebSocketDisconnected
from falcon.constants import WebSocketPayloadType

from . import tasks
from .access import Grant
from .codes import Close

logger = logging.getLogger("reports_service.session")

TEXT = WebSocketPayloadType.TEXT
BINARY = WebSocketPayloadType.BINARY


class Peer(Protocol):
    """The connection a session talks to (resources.connection.Connection)."""

    subscribed: bool
    grant: Grant

    def refreshed(self, grant: Grant) -> None: ...

    async def send(self, message: object, kind: WebSocketPayloadType) -> None: ...

    def send_now(self, frame: str | bytes) -> bool:
        """Send an encoded frame at once if that needs no waiting; False: nothing was sent."""

    async def close(self, code: Close, reason: str) -> None: ...


class Outbox:
    """Messages waiting to be sent, in order, by a task of its own; at most ``size``.

    When full, the connection is closed with 4001 (slow consumer) rather than waited for.
    """

    __slots__ = ("_gone", "_peer", "_queue", "_sender", "_sending", "closed_slow")

    def __init__(self, peer: Peer, size: int, gone: Callable[[], None]) -> None:
        self._peer = peer
        self._queue: asyncio.Queue[tuple[Any, bool]] = asyncio.Queue(size)
        self._sender: asyncio.Task[None] | None = None
        self._gone = gone  # called when the peer has disconnected
        self._sending = False  # NOTE: the sender has a message out of the queue, not yet sent
        self.closed_slow = False

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def push(self, message: Any, binary: bool) -> bool:
        """Queue ``message``; False when the outbox is full (the caller calls close_slow)."""
        if self.closed_slow:
            return True
        # NOTE: an encoded frame with nothing before it goes out at once when the connection
        #   takes it without waiting; else, and for the rest, in order through the queue.
        if (
            isinstance(message, str | bytes)
            and not self._sending
            and self._queue.empty()
            and self._peer.send_now(message)
        ):
            return True
        if self._sender is None or self._sender.done():
            self._sender = tasks.spawn(self._send_loop(), name="session-sender")
        try:
            self._queue.put_nowait((message, binary))
        except asyncio.QueueFull:
            return False
        return True

    def close_slow(self) -> None:
        # NOTE: a subscriber that cannot keep up is dropped, not waited for: the feed must
        #   never block on one connection. It reconnects and resumes with `since`.
        self.closed_slow = True
        logger.info("closing slow subscriber (%d messages queued)", self.depth)
        if self._sender is not None:
            self._sender.cancel()
        reason = "too slow: reconnect and resume with since"
        tasks.spawn(self._peer.close(Close.SLOW_CONSUMER, reason), name="close-slow")

    async def drained(self) -> None:
        """Wait until every message pushed so far is sent, or the sender has stopped."""
        if self._sender is None or self._sender.done():
            return
        sent = asyncio.ensure_future(self._queue.join())
        try:
            await asyncio.wait([sent, self._sender], return_when=asyncio.FIRST_COMPLETED)
        finally:
            sent.cancel()

    async def _send_loop(self) -> None:
        while True:
            message, binary = await self._queue.get()
            self._sending = True
            try:
                await self._peer.send(message, BINARY if binary else TEXT)
            except WebSocketDisconnected:
                self._gone()
                return
            finally:
                self._sending = False
                self._queue.task_done()

    async def close(self) -> None:
        if self._sender is not None:
            await tasks.cancel(self._sender)
