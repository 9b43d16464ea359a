"""Limits that hold against hostile clients: connection caps, message rates, auth failures."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict, deque

from falcon.asgi import WebSocket
from falcon.constants import WebSocketPayloadType

from . import metrics, tasks, transport
from .config import Settings
from .errors import ServiceError
from .metrics import CLOSES, CONNECTIONS
from .repository import ReportRepository

logger = logging.getLogger("reports_service.limits")

GOING_AWAY = 1001
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


class Refused(Exception):
    """A connection refused by a limit: close it with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Tracked:
    """One open connection, as the registry's watchdog sees it.

    One of these lives as long as each connection: slots, no callables (memory per idle
    connection is a budget, see benchmarks/).
    """

    __slots__ = ("keep_alive", "last_seen", "route", "sending_since", "token", "ws")

    def __init__(self, ws: WebSocket, route: str, token: str | None = None) -> None:
        self.ws = ws
        self.route = route
        self.token = token
        self.last_seen = time.monotonic()
        self.sending_since = 0.0  # 0: no send under way
        self.keep_alive = False  # True: not idle, even without messages (a subscription)

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


class ConnectionRegistry:
    """The open WebSocket connections of this process, capped in all and per token.

    A watchdog closes connections idle for ``idle_timeout`` (1001) and drops those whose
    peer stopped reading for ``send_timeout``.
    """

    def __init__(
        self,
        *,
        max_total: int,
        max_per_token: int,
        idle_timeout: float = 0.0,
        send_timeout: float = 10.0,
    ) -> None:
        self.max_total = max_total
        self.max_per_token = max_per_token
        self._idle_timeout = idle_timeout
        self._send_timeout = send_timeout
        self._open: set[Tracked] = set()
        self._per_token: Counter[str] = Counter()
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def total(self) -> int:
        return len(self._open)

    def full(self) -> bool:
        return len(self._open) >= self.max_total

    def admit(self, tracked: Tracked) -> None:
        """Counts ``tracked`` until :meth:`release`; raises Refused over a limit."""
        if self.full():
            raise Refused(TRY_AGAIN_LATER, "server full: too many connections")
        token = tracked.token
        if token is not None and self._per_token[token] >= self.max_per_token:
            raise Refused(POLICY_VIOLATION, "too many connections for this token")
        self._open.add(tracked)
        if token is not None:
            self._per_token[token] += 1
        CONNECTIONS.labels(tracked.route).inc()

    def release(self, tracked: Tracked) -> None:
        """No longer counts ``tracked`` (admitted before)."""
        CONNECTIONS.labels(tracked.route).dec()
        self._open.remove(tracked)
        token = tracked.token
        if token is not None:
            self._per_token[token] -= 1
            if not self._per_token[token]:
                del self._per_token[token]

    async def start(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="connection-watchdog")

    async def stop(self) -> None:
        if self._watchdog is not None:
            await tasks.cancel(self._watchdog)
            self._watchdog = None

    async def _watch(self) -> None:
        limits = [t for t in (self._idle_timeout, self._send_timeout) if t > 0]
        tick = min(1.0, max(0.05, min(limits, default=1.0) / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for tracked in list(self._open):
                self._check(tracked, now)
            metrics.flush()  # NOTE: housekeeping of the same kind: every worker, every tick

    def _check(self, tracked: Tracked, now: float) -> None:
        if tracked.sending_since and now - tracked.sending_since > self._send_timeout > 0:
            tracked.sending_since = 0.0
            transport.abort(tracked.ws)
        elif (
            self._idle_timeout > 0
            and now - tracked.last_seen > self._idle_timeout
            and not tracked.keep_alive
        ):
            tracked.last_seen = now
            logger.info("closing an idle connection on %s", tracked.route)
            CLOSES.labels(str(GOING_AWAY)).inc()
            asyncio.get_running_loop().create_task(
                transport.close(tracked.ws, GOING_AWAY, "idle timeout", self._send_timeout)
            )

    def tokens(self) -> list[str]:
        return list(self._per_token)

    def with_token(self, token: str) -> list[WebSocket]:
        return [tracked.ws for tracked in self._open if tracked.token == token]


class RateLimiter:
    """A token bucket per connection: ``rate`` messages a second, bursts up to ``burst``."""

    __slots__ = ("_allowance", "_burst", "_last", "_rate", "refused_in_a_row")

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._allowance = self._burst
        self._last = time.monotonic()
        self.refused_in_a_row = 0

    def check(self) -> float:
        """0 when the message may go ahead, else seconds until one may."""
        if self._rate <= 0:
            return 0.0
        now = time.monotonic()
        self._allowance = min(self._burst, self._allowance + (now - self._last) * self._rate)
        self._last = now
        if self._allowance >= 1:
            self._allowance -= 1
            self.refused_in_a_row = 0
            return 0.0
        self.refused_in_a_row += 1
        return (1 - self._allowance) / self._rate


class FailureThrottle:
    """Refuses a client address for ``window`` seconds after ``limit`` failed logins in it."""

    MAX_ADDRESSES = 100_000

    def __init__(self, *, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def blocked_for(self, address: str) -> float:
        """Seconds this address stays refused; 0 when it may try."""
        failures = self._recent(address)
        if self._limit <= 0 or len(failures) < self._limit:
            return 0.0
        return max(0.0, failures[-1] + self._window - time.monotonic())

    def failed(self, address: str) -> None:
        self._recent(address).append(time.monotonic())
        self._failures.move_to_end(address)
        while len(self._failures) > self.MAX_ADDRESSES:
            self._failures.popitem(last=False)

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.setdefault(address, deque(maxlen=max(self._limit, 1)))
        horizon = time.monotonic() - self._window
        while failures and failures[0] < horizon:
            failures.popleft()
        return failures


class TokenGuard:
    """Closes connections whose token was revoked, within ``interval`` seconds."""

    def __init__(
        self,
        repository: ReportRepository,
        registry: ConnectionRegistry,
        *,
        interval: float,
        send_timeout: float,
    ) -> None:
        self._repository = repository
        self._registry = registry
        self._interval = interval
        self._send_timeout = send_timeout
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None and self._interval > 0:
            self._task = asyncio.create_task(self._run(), name="token-guard")

    async def stop(self) -> None:
        if self._task is not None:
            await tasks.cancel(self._task)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            names = self._registry.tokens()
            if not names:
                continue
            try:
                revoked = await self._repository.revoked_tokens(names)
            except ServiceError as error:
                logger.warning("cannot check for revoked tokens: %s", error)
                continue
            for name in revoked:
                for ws in self._registry.with_token(name):
                    logger.info("closing a connection of revoked token %r", name)
                    CLOSES.labels(str(POLICY_VIOLATION)).inc()
                    await transport.close(ws, POLICY_VIOLATION, "token revoked", self._send_timeout)


def registry_for(settings: Settings) -> ConnectionRegistry:
    return ConnectionRegistry(
        max_total=settings.max_connections,
        max_per_token=settings.max_connections_per_token,
        idle_timeout=settings.idle_timeout,
        send_timeout=settings.send_timeout,
    )
