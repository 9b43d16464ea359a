from __future__ import annotations

from falcon.asgi import Request, WebSocket

from .. import transport
from ..protocol import payload_type
from ..service import ReportService
from ..session import ReportsSession
from .connection import receive, tracked


class ReportsResource:
    """WebSocket /reports: plain queries by name, typed requests, and live subscriptions."""

    def __init__(self, service: ReportService, *, queue_size: int, send_timeout: float) -> None:
        self._service = service
        self._queue_size = queue_size
        self._send_timeout = send_timeout

    async def on_websocket(self, req: Request, ws: WebSocket) -> None:
        if ws.unaccepted:
            await ws.accept()
        token = getattr(req.context, "token", None)
        session = ReportsSession(
            ws,
            self._service,
            queue_size=self._queue_size,
            send_timeout=self._send_timeout,
            can_write=bool(token and token.can_write),
        )
        with tracked("/reports"):
            try:
                while (payload := await receive(ws)) is not None:
                    reply = await session.handle(payload)
                    if reply is not None:
                        await transport.send(ws, reply, payload_type(payload), self._send_timeout)
            except transport.SendTimeout:
                return
            finally:
                await session.close()
