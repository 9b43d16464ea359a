from __future__ import annotations

import logging
from urllib.parse import urlsplit

from falcon import WebSocketDisconnected
from falcon.asgi import Request, Response, WebSocket

from ..codes import Close
from ..metrics import count_close

logger = logging.getLogger("reports_service.origin")


API_PREFIX = "/api/"
CORS_METHODS = "GET, PUT, DELETE"
CORS_HEADERS = "Authorization, Content-Type, If-Match, If-None-Match, Last-Event-ID"
CORS_EXPOSED = "ETag, Retry-After, WWW-Authenticate"


class OriginMiddleware:
    """Refuses WebSocket handshakes from browser pages of other sites (HTTP 403), and lets
    only the allowed ones call the HTTP API (CORS).

    Browsers send ``Origin``; a page on another site could otherwise open a socket with its
    visitor's credentials. The service's own pages (same host) are always allowed, and so are
    clients that send no ``Origin`` (command-line clients, servers). Over HTTP, a browser
    enforces the policy itself: an origin not allowed gets no CORS headers, so its page cannot
    read the answer (nor send a preflighted request).
    """

    def __init__(self, allowed: str) -> None:
        entries = {entry.strip().rstrip("/").lower() for entry in allowed.split(",")}
        self._any = "*" in entries
        self._allowed = entries - {"", "*"}

    async def process_request_ws(self, req: Request, ws: WebSocket) -> None:
        origin = req.get_header("Origin")
        if origin is None or self._any or self.allowed(origin, req.host, req.port):
            return
        logger.info("refused a handshake from origin %.100r", origin)
        count_close("403")
        await ws.close()  # NOTE: before accept, so the client gets HTTP 403
        raise WebSocketDisconnected(Close.POLICY_VIOLATION)

    async def process_response(
        self, req: Request, resp: Response, resource: object, req_succeeded: bool
    ) -> None:
        origin = req.get_header("Origin")
        if origin is None or not req.path.startswith(API_PREFIX):
            return
        resp.append_header("Vary", "Origin")
        if not (self._any or self.allowed(origin, req.host, req.port)):
            return
        resp.set_header("Access-Control-Allow-Origin", "*" if self._any else origin)
        resp.set_header("Access-Control-Expose-Headers", CORS_EXPOSED)
        if req.method == "OPTIONS" and req.get_header("Access-Control-Request-Method"):
            resp.delete_header("Allow")
            resp.set_header("Access-Control-Allow-Methods", CORS_METHODS)
            resp.set_header("Access-Control-Allow-Headers", CORS_HEADERS)
            resp.set_header("Access-Control-Max-Age", "600")

    def allowed(self, origin: str, host: str, port: int) -> bool:
        normalized = origin.strip().rstrip("/").lower()
        if normalized in self._allowed:
            return True
        parts = urlsplit(normalized)
        if parts.scheme not in ("http", "https") or parts.hostname is None:
            return False
        default = 443 if parts.scheme == "https" else 80
        return parts.hostname == host.lower() and (parts.port or default) == port
