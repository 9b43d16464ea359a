from __future__ import annotations

import logging
from typing import Any

from falcon.asgi import Request, WebSocket

from ..logs import new_connection_id

logger = logging.getLogger("reports_service.ws")


class LoggingMiddleware:
    """Logs each WebSocket connection to a route, with its path and peer (never its messages).

    Every log line of one connection carries its id (``conn``).
    """

    async def process_request_ws(self, req: Request, ws: WebSocket) -> None:
        new_connection_id()

    async def process_resource_ws(
        self, req: Request, ws: WebSocket, resource: object, params: dict[str, Any]
    ) -> None:
        logger.info("websocket connection on %s from %s", req.path, req.remote_addr)
