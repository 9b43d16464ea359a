from __future__ import annotations

from typing import Any

from falcon.asgi import Request

from ..access import Authenticator, Grant
from ..config import Settings
from ..protocol import Payload, rate_limited
from ..service import ReportService
from ..session import ReportsSession
from .connection import Connection
from .registry import ConnectionRegistry
from .route import WebSocketRoute


class ReportsResource(WebSocketRoute[ReportsSession]):
    """WebSocket /reports: plain queries by name, typed requests, and live subscriptions."""

    route = "/reports"

    def __init__(
        self,
        service: ReportService,
        registry: ConnectionRegistry,
        settings: Settings,
        authenticator: Authenticator,
    ) -> None:
        super().__init__(registry, settings)
        self._service = service
        self._authenticator = authenticator

    def grant_of(self, req: Request) -> Grant | None:
        # NOTE: taken off the request, which lives as long as the connection: the connection
        #   keeps it, and a refresh replaces it there.
        grant: Grant | None = getattr(req.context, "grant", None)
        if grant is not None:
            del req.context.grant
        return grant

    def open(self, req: Request, conn: Connection) -> ReportsSession:
        session = ReportsSession(
            conn,
            self._service,
            queue_size=self._settings.subscriber_queue,
            replay_limit=self._settings.replay_limit,
            authenticator=self._authenticator,
            binary=bool(getattr(req.context, "binary", False)),
        )
        conn.listener = session
        return session

    async def answer(self, state: ReportsSession, conn: Connection, payload: Payload) -> Any:
        wait = conn.throttle()
        return rate_limited(payload, wait) if wait else await state.handle(payload)

    async def finish(self, state: ReportsSession) -> None:
        await state.close()
