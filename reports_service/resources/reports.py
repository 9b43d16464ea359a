from __future__ import annotations

import logging
from typing import Any

from falcon import WebSocketDisconnected
from falcon.asgi import Request, WebSocket

from ..errors import ServiceError
from ..protocol import UNAVAILABLE, ProtocolError, payload_type, report_name, report_reply
from ..repository import ReportRepository

logger = logging.getLogger("reports_service.reports")


class ReportsResource:
    """WebSocket /reports: a report name in, its title out; the database is read every time."""

    def __init__(self, repository: ReportRepository) -> None:
        self._repository = repository

    async def on_websocket(self, req: Request, ws: WebSocket) -> None:
        if ws.unaccepted:
            await ws.accept()
        while True:
            try:
                payload = await ws.receive_media()
            except WebSocketDisconnected:
                return
            assert isinstance(payload, str | bytes)
            await ws.send_media(await self._answer(payload), payload_type(payload))

    async def _answer(self, payload: str | bytes) -> dict[str, Any]:
        try:
            report = await self._repository.get_report(name=report_name(payload))
        except ProtocolError as error:
            return {"error": str(error)}
        except ServiceError as error:
            logger.warning("query failed: %s", error)
            return UNAVAILABLE
        return report_reply(report)
