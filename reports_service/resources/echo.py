from __future__ import annotations

from typing import Any

from falcon.asgi import Request

from ..protocol import Payload, ProtocolError, echo_reply, plain_rate_limited
from .connection import Connection
from .route import WebSocketRoute


class EchoResource(WebSocketRoute[None]):
    """WebSocket /echo: each message back as {message, date}, in the format it came in."""

    route = "/echo"

    def open(self, req: Request, conn: Connection) -> None:
        return None

    async def answer(self, state: None, conn: Connection, payload: Payload) -> Any:
        if wait := conn.throttle():
            return plain_rate_limited(wait)
        try:
            return echo_reply(payload)
        except ProtocolError as error:
            return {"error": str(error)}
