from __future__ import annotations

from falcon.asgi import Request, WebSocket

from ..config import Settings
from ..limits import ConnectionRegistry
from ..protocol import payload_type, rate_limited
from ..records import TokenInfo
from ..service import ReportService
from ..session import ReportsSession
from .connection import serving


class ReportsResource:
    """WebSocket /reports: plain queries by name, typed requests, and live subscriptions."""

    def __init__(
        self, service: ReportService, registry: ConnectionRegistry, settings: Settings
    ) -> None:
        self._service = service
        self._registry = registry
        self._settings = settings

    async def on_websocket(self, req: Request, ws: WebSocket) -> None:
        if ws.unaccepted:
            await ws.accept()
        token: TokenInfo | None = getattr(req.context, "token", None)
        name = token.name if token else None
        async with serving(ws, "/reports", self._registry, self._settings, name) as conn:
            session = ReportsSession(
                conn.tracked,
                self._service,
                queue_size=self._settings.subscriber_queue,
                send_timeout=self._settings.send_timeout,
                can_write=bool(token and token.can_write),
            )
            conn.tracked.keep_alive = session.subscribed
            try:
                while (payload := await conn.receive()) is not None:
                    wait = conn.throttle()
                    reply = rate_limited(payload, wait) if wait else await session.handle(payload)
                    if reply is not None:
                        await conn.send(reply, payload_type(payload))
            finally:
                await session.close()
