from __future__ import annotations

import logging
from urllib.parse import urlsplit

from falcon import WebSocketDisconnected
from falcon.asgi import Request, WebSocket

from ..codes import Close
from ..metrics import count_close

logger = logging.getLogger("reports_service.origin")


class OriginMiddleware:
    """Refuses WebSocket handshakes from browser pages of other sites (HTTP 403).

    Browsers send ``Origin``; a page on another site could otherwise open a socket with its
    visitor's credentials. The service's own pages (same host) are always allowed, and so are
    clients that send no ``Origin`` (command-line clients, servers).
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

    def allowed(self, origin: str, host: str, port: int) -> bool:
        normalized = origin.strip().rstrip("/").lower()
        if normalized in self._allowed:
            return True
        parts = urlsplit(normalized)
        if parts.scheme not in ("http", "https") or parts.hostname is None:
            return False
        default = 443 if parts.scheme == "https" else 80
        return parts.hostname == host.lower() and (parts.port or default) == port
