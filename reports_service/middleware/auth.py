from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, NoReturn

from falcon import WebSocketDisconnected
from falcon.asgi import Request, WebSocket

from ..codes import Close
from ..errors import ServiceError
from ..limits import FailureThrottle
from ..metrics import AUTH_FAILURES, count_close
from ..protocol import first_message
from ..repository import ReportRepository

logger = logging.getLogger("reports_service.auth")

POLICY = Close.POLICY_VIOLATION


class AuthMiddleware:
    """First-message authentication for the routes it protects, and only those.

    The connection is accepted, the first message must be a live access token, sent within
    ``timeout`` seconds; otherwise the connection is closed with 1008 (policy
    violation) before the route runs.
    """

    def __init__(
        self,
        repository: ReportRepository,
        protected: Iterable[str],
        *,
        timeout: float,
        throttle: FailureThrottle,
    ) -> None:
        self._repository = repository
        self._protected = frozenset(protected)
        self._timeout = timeout
        self._throttle = throttle

    async def process_resource_ws(
        self, req: Request, ws: WebSocket, resource: object, params: dict[str, Any]
    ) -> None:
        # NOTE: this runs after routing, so a path with no route is refused by Falcon before
        #   anything is accepted (the tutorial accepted every path first).
        if req.uri_template not in self._protected:
            return
        await ws.accept()
        address = req.remote_addr or "-"
        if self._throttle.blocked_for(address):
            await self._reject(
                ws, req, Close.POLICY_VIOLATION, "too many failed logins", "throttled"
            )
        try:
            first = await asyncio.wait_for(ws.receive_media(), self._timeout)
        except TimeoutError:
            self._throttle.failed(address)
            await self._reject(
                ws, req, Close.POLICY_VIOLATION, "authentication timed out", "timeout"
            )
        token, _ = first_message(first)
        try:
            info = None if token is None else await self._repository.authenticate(token)
        except ServiceError:
            await self._reject(ws, req, Close.TRY_AGAIN_LATER, "service unavailable", "unavailable")
        if info is None:
            self._throttle.failed(address)
            await self._reject(ws, req, POLICY, "invalid token", "invalid_token")
        req.context.token = info
        logger.info("authenticated %s as %r", req.remote_addr, info.name)

    @staticmethod
    async def _reject(
        ws: WebSocket, req: Request, code: Close, reason: str, metric: str
    ) -> NoReturn:
        logger.info("refused %s on %s: %s", req.remote_addr, req.path, reason)
        AUTH_FAILURES.labels(metric).inc()
        count_close(code)
        await ws.close(code, reason)
        # NOTE: raising ends the request here, so the route's responder never runs.
        raise WebSocketDisconnected(code)
