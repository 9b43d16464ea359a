from __future__ import annotations

from falcon import WebSocketDisconnected
from falcon.asgi import Request, WebSocket

from ..protocol import payload_type
from ..service import ReportService
from ..session import ReportsSession


class ReportsResource:
    """WebSocket /reports: plain queries by name, typed requests, and live subscriptions."""

    def __init__(self, service: ReportService, *, queue_size: int) -> None:
        self._service = service
        self._queue_size = queue_size

    async def on_websocket(self, req: Request, ws: WebSocket) -> None:
        if ws.unaccepted:
            await ws.accept()
        session = ReportsSession(ws, self._service, queue_size=self._queue_size)
        try:
            while True:
                try:
                    payload = await ws.receive_media()
                except WebSocketDisconnected:
                    return
                assert isinstance(payload, str | bytes)
                reply = await session.handle(payload)
                if reply is not None:
                    await ws.send_media(reply, payload_type(payload))
        finally:
            await session.close()
