from __future__ import annotations

from typing import Any

from falcon.asgi import Request

from ..config import Settings
from ..protocol import Payload, rate_limited
from ..records import TokenInfo
from ..service import ReportService
from ..session import ReportsSession
from .connection import Connection
from .registry import ConnectionRegistry
from .route import WebSocketRoute


class ReportsResource(WebSocketRoute[ReportsSession]):
    """WebSocket /reports: plain queries by name, typed requests, and live subscriptions."""

    route = "/reports"

    def __init__(
        self, service: ReportService, registry: ConnectionRegistry, settings: Settings
    ) -> None:
        super().__init__(registry, settings)
        self._service = service

    def token_name(self, req: Request) -> str | None:
        token: TokenInfo | None = getattr(req.context, "token", None)
        return token.name if token else None

    def open(self, req: Request, conn: Connection) -> ReportsSession:
        # NOTE: taken off the request, which lives as long as the connection: the session and
        #   the connection keep what they need of it.
        token: TokenInfo | None = getattr(req.context, "token", None)
        if token is not None:
            del req.context.token
        return ReportsSession(
            conn,
            self._service,
            queue_size=self._settings.subscriber_queue,
            can_write=bool(token and token.can_write),
        )

    async def answer(self, state: ReportsSession, conn: Connection, payload: Payload) -> Any:
        wait = conn.throttle()
        return rate_limited(payload, wait) if wait else await state.handle(payload)

    async def finish(self, state: ReportsSession) -> None:
        await state.close()
