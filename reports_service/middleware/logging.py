from __future__ import annotations

import logging
from typing import Any

from falcon.asgi import Request, WebSocket

logger = logging.getLogger("reports_service.ws")


class LoggingMiddleware:
    """Logs each WebSocket connection to a route, with its path and peer (never its messages)."""

    async def process_resource_ws(
        self, req: Request, ws: WebSocket, resource: object, params: dict[str, Any]
    ) -> None:
        logger.info("websocket connection on %s from %s", req.path, req.remote_addr)
