"""One connection's bounded queue of outgoing messages, and the task that sends them."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
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
    """Messages waiting to be sent, in order, by a task of its own while any wait; at most
    ``size``. An encoded frame with nothing before it is sent at once when the connection takes
    it without waiting.

    When full, the connection is closed with 4001 (slow consumer) rather than waited for.
    """

    __slots__ = ("_gone", "_peer", "_queue", "_sender", "_size", "closed_slow")

    def __init__(self, peer: Peer, size: int, gone: Callable[[], None]) -> None:
        self._peer = peer
        self._size = size
        # NOTE: a deque and a task only while something waits: most subscribers' pushes go
        #   out at once, and an idle subscriber keeps neither an asyncio.Queue (3 KiB) nor a
        #   waiting task (1 KiB).
        self._queue: deque[tuple[Any, bool]] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._gone = gone  # called when the peer has disconnected
        self.closed_slow = False

    @property
    def depth(self) -> int:
        return len(self._queue)

    def push(self, message: Any, binary: bool) -> bool:
        """Send or queue ``message``; False when the outbox is full (the caller calls
        close_slow)."""
        if self.closed_slow:
            return True
        idle = self._sender is None or self._sender.done()
        if idle and isinstance(message, str | bytes) and self._peer.send_now(message):
            return True
        if len(self._queue) - (0 if idle else 1) >= self._size:  # NOTE: not the one being sent
            return False
        self._queue.append((message, binary))
        if idle:
            self._sender = tasks.spawn(self._send_loop(), name="session-sender")
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
        if self._sender is not None and not self._sender.done():
            await asyncio.wait([self._sender])

    async def _send_loop(self) -> None:
        """Send what is queued, in order (a message leaves the queue once sent); then end."""
        queue = self._queue
        while queue:
            message, binary = queue[0]
            try:
                await self._peer.send(message, BINARY if binary else TEXT)
            except WebSocketDisconnected:
                queue.clear()
                self._gone()
                return
            queue.popleft()

    async def close(self) -> None:
        if self._sender is not None:
            await tasks.cancel(self._sender)
