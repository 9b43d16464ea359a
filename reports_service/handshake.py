"""Connections before they are served: a deadline on the request head, and caps on how many
may be pending (not yet past their handshake or authentication), per process and per address.

uvicorn has no request-head timeout: a client that sends half a request and stops keeps its
connection (and a file descriptor) for ever. :func:`protocol_for` gives uvicorn an HTTP
protocol that closes such a connection after ``timeout`` seconds, and closes one over a cap at
once. A plain HTTP request stops being pending when its head is complete; a WebSocket when
the app lets it go (:func:`done`: authenticated, or a route without authentication) or it
closes. transport.check() probes the uvicorn internals used here (see PROTOCOL_OFF).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_remote_addr

logger = logging.getLogger("reports_service.transport")

SWEEP_EVERY = 1.0  # seconds; at most this often, the pending connections that closed are let go
TELL_EVERY = 1.0  # seconds; at most this often, a line says how many were refused
BUSY_TEXT = b"too many connections not yet served\n"
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 5\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
    % (len(BUSY_TEXT), BUSY_TEXT)
)


@dataclass(frozen=True, slots=True)
class Limits:
    """How long a request head may take, and how many connections may be pending."""

    timeout: float
    most: int
    per_address: int


class Pending:
    """The pending connections of this process, by their asyncio transport."""

    def __init__(self) -> None:
        self._address: dict[Any, str] = {}
        self._per_address: Counter[str] = Counter()
        self._swept = 0.0
        self._refused = 0  # NOTE: since the last line logged
        self._told = 0.0

    def __len__(self) -> int:
        return len(self._address)

    def add(self, transport: Any, address: str, limits: Limits) -> bool:
        """Counts ``transport`` until :meth:`done`; False (not counted) over a cap."""
        if self._over(address, limits):
            self._sweep()
            if self._over(address, limits):
                self._tell_refused(address)
                return False
        self._address[transport] = address
        self._per_address[address] += 1
        return True

    def done(self, transport: Any) -> None:
        """No longer counts ``transport`` (nothing if it was not counted)."""
        address = self._address.pop(transport, None)
        if address is not None:
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

    def _tell_refused(self, address: str) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._told >= TELL_EVERY:
            logger.info(
                "refused %d connection(s) over the pending caps, the last of %s",
                self._refused,
                address,
            )
            self._told, self._refused = now, 0

    def _over(self, address: str, limits: Limits) -> bool:
        return len(self._address) >= limits.most or self._per_address[address] >= limits.per_address

    def _sweep(self) -> None:
        # NOTE: a WebSocket that uvicorn refused itself (a bad Sec-WebSocket-Key) never reaches
        #   the app, which lets the others go: it is let go here once it closed.
        now = time.monotonic()
        if now - self._swept >= SWEEP_EVERY:
            self._swept = now
            for transport in [t for t in self._address if t.is_closing()]:
                self.done(transport)


PENDING = Pending()  # NOTE: one per process: the protocol and the app both reach it


def done(send: Any) -> None:
    """The connection whose ASGI ``send`` this is (uvicorn's) is no longer pending."""
    PENDING.done(getattr(getattr(send, "__self__", None), "transport", None))


class _HeadDeadline:
    """What the two protocols share: the head's timer and the pending count."""

    transport: asyncio.Transport
    _limits: Limits
    _timer: asyncio.TimerHandle | None = None

    def _made(self, transport: asyncio.Transport) -> None:
        """Counts ``transport`` as pending; over a cap, it is answered 503 and closed."""
        client = get_remote_addr(transport)
        if PENDING.add(transport, client[0] if client else "-", self._limits):
            self._head_begins()
        else:
            transport.write(BUSY)
            transport.close()

    def _head_begins(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._limits.timeout, self._head_timed_out)

    def _head_complete(self, upgrade: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not upgrade:
            PENDING.done(self.transport)

    def _head_timed_out(self) -> None:
        self._timer = None
        logger.debug("closing a connection whose request head took too long")
        PENDING.done(self.transport)
        self.transport.close()

    def _lost(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        PENDING.done(self.transport)


class H11WithDeadline(_HeadDeadline, H11Protocol):
    """uvicorn's h11 protocol with a deadline on request heads."""

    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()
        super().connection_lost(exc)

    _upgraded = False

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._head_begins()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._head_complete(self._upgraded)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._upgraded = True
        super().handle_websocket_upgrade(event)


def _httptools_class() -> type[Any] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # NOTE: httptools is optional for uvicorn
        return None

    class HttpToolsWithDeadline(_HeadDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol with a deadline on request heads."""

        def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._limits = limits

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            self._lost()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_begins()

        def on_headers_complete(self) -> None:
            self._head_complete(bool(self.parser.should_upgrade() and self._should_upgrade()))
            super().on_headers_complete()

    HttpToolsWithDeadline.__module__ = __name__
    HttpToolsWithDeadline.__qualname__ = "HttpToolsWithDeadline"
    return HttpToolsWithDeadline


HttpToolsWithDeadline = _httptools_class()


def protocol_for(limits: Limits, http: str = "auto") -> Any:
    """The ``http`` option of uvicorn.run(): a protocol factory that keeps ``limits``."""
    use_h11 = http == "h11" or HttpToolsWithDeadline is None
    cls: Any = H11WithDeadline if use_h11 else HttpToolsWithDeadline
    # NOTE: a partial of a module-level class, so uvicorn can hand it to worker processes.
    return functools.partial(cls, limits=limits)
