from __future__ import annotations

import logging
from typing import Any

from falcon.asgi import Request, Response, WebSocket

from ..logs import new_connection_id
from ..metrics import HTTP_REQUESTS

logger = logging.getLogger("reports_service.ws")
http_logger = logging.getLogger("reports_service.http")
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # polled: logged at DEBUG


class LoggingMiddleware:
    """Logs each WebSocket connection to a route, with its path and peer (never its messages),
    and each HTTP request, with its path and status (never its query: it may hold a token);
    counts HTTP requests by route and status.

    Every log line of one connection or request carries its id (``conn``).
    """

    async def process_request(self, req: Request, resp: Response) -> None:
        new_connection_id()

    async def process_response(
        self, req: Request, resp: Response, resource: object, req_succeeded: bool
    ) -> None:
        status = resp.status_code
        HTTP_REQUESTS.labels(req.uri_template or "unrouted", str(status)).inc()
        level = logging.DEBUG if req.path in QUIET_PATHS else logging.INFO
        http_logger.log(level, "%s %s %d from %s", req.method, req.path, status, req.remote_addr)

    async def process_request_ws(self, req: Request, ws: WebSocket) -> None:
        new_connection_id()

    async def process_resource_ws(
        self, req: Request, ws: WebSocket, resource: object, params: dict[str, Any]
    ) -> None:
        logger.info("websocket connection on %s from %s", req.path, req.remote_addr)
