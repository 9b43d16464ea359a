"""The open WebSocket connections of this process: caps, the watchdog, revoked tokens."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter

from .. import metrics, tasks, transport
from ..access import Kind
from ..codes import Close
from ..config import Settings
from ..errors import ServiceError
from ..limits import Refused
from ..metrics import CONNECTIONS
from ..repository import ReportRepository
from .connection import ANONYMOUS, Member, Soonest

logger = logging.getLogger("reports_service.limits")


class ConnectionRegistry:
    """The open WebSocket connections and event streams of this process, capped in all and per
    token.

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
        expiry_warning: float = 30.0,
    ) -> None:
        self.max_total = max_total
        self.max_per_token = max_per_token
        self._idle_timeout = idle_timeout
        self._send_timeout = send_timeout
        self._expiry_warning = expiry_warning
        self._open: set[Member] = set()
        self._per_token: Counter[str] = Counter()
        # NOTE: kept as connections come and go, so that neither the token guard nor the
        #   watchdog's tick walks every connection: with 10,000 idle ones, those walks were
        #   most of an idle server's CPU (see benchmarks/, idle).
        self._identities: Counter[tuple[Kind, str]] = Counter()
        self._soonest = Soonest()
        self._watchdog: asyncio.Task[None] | None = None
        self._admitted = asyncio.Event()  # NOTE: wakes the watchdog, asleep while none is open
        self._server: object = None  # NOTE: the uvicorn server, to learn when it stops

    def full(self) -> bool:
        return len(self._open) >= self.max_total

    def admit(self, conn: Member) -> None:
        """Counts ``conn`` until :meth:`release`; raises Refused over a limit."""
        if self.full():
            raise Refused(Close.TRY_AGAIN_LATER, "server full: too many connections")
        token = conn.token
        if token is not None and self._per_token[token] >= self.max_per_token:
            raise Refused(Close.POLICY_VIOLATION, "too many connections for this token")
        self._open.add(conn)
        self._identities[conn.identity] += 1
        conn.soonest = self._soonest
        self._soonest.lower(conn.grant.expires)
        self._admitted.set()
        if token is not None:
            self._per_token[token] += 1
        CONNECTIONS.labels(conn.route).inc()

    def release(self, conn: Member) -> None:
        """No longer counts ``conn`` (admitted before)."""
        CONNECTIONS.labels(conn.route).dec()
        self._open.remove(conn)
        conn.soonest = None
        self._identities[conn.identity] -= 1
        if not self._identities[conn.identity]:
            del self._identities[conn.identity]
        token = conn.token
        if token is not None:
            self._per_token[token] -= 1
            if not self._per_token[token]:
                del self._per_token[token]

    def subjects(self, kind: Kind) -> list[str]:
        """The subjects open connections use, of tokens of ``kind`` (a database token's name,
        a JWT's ``sub``)."""
        return [subject for of, subject in self._identities if of == kind]

    def with_identity(self, kind: Kind, subject: str) -> list[Member]:
        if (kind, subject) not in self._identities:
            return []
        return [c for c in self._open if c.grant.identity == (kind, subject)]

    async def occupied(self) -> None:
        """Return once a connection is open (at once if one is)."""
        if not self._open:
            self._admitted.clear()
            await self._admitted.wait()

    async def start(self) -> None:
        if self._watchdog is None:
            self._watchdog = tasks.spawn(self._watch(), name="connection-watchdog")
            self._server = transport.uvicorn_server()

    async def stop(self) -> None:
        if self._watchdog is not None:
            await tasks.cancel(self._watchdog)
            self._watchdog = None

    async def _watch(self) -> None:
        limits = [t for t in (self._idle_timeout, self._send_timeout) if t > 0]
        # NOTE: idle and stuck connections are looked for every quarter of the shorter limit;
        #   expired tokens every half second at most, so an expired token's connection is
        #   closed within one second of its expiry even when the loop is busy. That check is
        #   one comparison per connection: 10,000 idle connections cost little each tick.
        scan = max(0.05, min(limits, default=1.0) / 4)
        tick = min(0.5, scan)
        next_scan = 0.0
        while True:
            if not self._open:
                # NOTE: nothing to watch: no timer at all until a connection is admitted.
                metrics.flush()
                await self.occupied()
            await asyncio.sleep(tick)
            now, wall = time.monotonic(), time.time()
            if transport.exiting(self._server):
                self._server = None
                for conn in list(self._open):
                    conn.server_stopping()
            if now >= next_scan:
                next_scan = now + scan
                soonest = math.inf
                for conn in list(self._open):
                    self._check(conn, now)
                    if conn.grant.expires < soonest:
                        soonest = conn.grant.expires
                self._soonest.expires = soonest
            soon = wall + self._expiry_warning
            if soon >= self._soonest.expires:
                for conn in [c for c in self._open if c.grant.expires <= soon]:
                    self._check_expiry(conn, wall)
            metrics.flush()  # NOTE: housekeeping of the same kind: every worker, every tick

    def _check(self, conn: Member, now: float) -> None:
        if conn.sending_since and now - conn.sending_since > self._send_timeout > 0:
            conn.sending_since = 0.0
            conn.abort()
        elif (
            self._idle_timeout > 0
            and now - conn.last_seen > self._idle_timeout
            and not conn.subscribed
        ):
            conn.last_seen = now
            logger.info("closing an idle connection on %s", conn.route)
            closing = conn.close(Close.GOING_AWAY, "idle timeout")
            tasks.spawn(closing, name="close-idle")

    def _check_expiry(self, conn: Member, wall: float) -> None:
        grant = conn.grant
        if wall >= grant.ends:
            logger.info("closing a connection of %r: token expired", grant.subject)
            conn.refreshed(ANONYMOUS)  # NOTE: nothing more is answered or pushed meanwhile
            closing = conn.close(Close.POLICY_VIOLATION, "token expired")
            tasks.spawn(closing, name="close-expired")
        elif not conn.expiry_warned and conn.listener is not None:
            conn.expiry_warned = True
            conn.listener.token_expiring()


class TokenGuard:
    """Closes connections whose token was revoked, within ``interval`` seconds."""

    def __init__(
        self,
        repository: ReportRepository,
        registry: ConnectionRegistry,
        *,
        interval: float,
    ) -> None:
        self._repository = repository
        self._registry = registry
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None and self._interval > 0:
            self._task = tasks.spawn(self._run(), name="token-guard")

    async def stop(self) -> None:
        if self._task is not None:
            await tasks.cancel(self._task)
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._registry.occupied()
            await asyncio.sleep(self._interval)
            names, subjects = self._registry.subjects("token"), self._registry.subjects("jwt")
            try:
                revoked = await self._repository.revoked_tokens(names) if names else []
                since = await self._repository.revoked_subjects(subjects) if subjects else {}
            except ServiceError as error:
                logger.warning("cannot check for revoked tokens: %s", error)
                continue
            doomed = [c for name in revoked for c in self._registry.with_identity("token", name)]
            for subject, at in since.items():
                doomed.extend(
                    conn
                    for conn in self._registry.with_identity("jwt", subject)
                    if conn.grant.issued_at is None or conn.grant.issued_at < at
                )
            await self._close(doomed)

    async def _close(self, doomed: list[Member]) -> None:
        # NOTE: all at once: one peer that does not read its close frame must not hold up the
        #   others for a send timeout each.
        closing = []
        for conn in doomed:
            logger.info("closing a connection of revoked %r", conn.grant.subject)
            conn.refreshed(ANONYMOUS)
            closing.append(conn.close(Close.POLICY_VIOLATION, "token revoked"))
        await asyncio.gather(*closing)


def registry_for(settings: Settings) -> ConnectionRegistry:
    return ConnectionRegistry(
        max_total=settings.max_connections,
        max_per_token=settings.max_connections_per_token,
        idle_timeout=settings.idle_timeout,
        send_timeout=settings.send_timeout,
        expiry_warning=settings.token_expiry_warning,
    )
