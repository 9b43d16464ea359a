from __future__ import annotations

from falcon.asgi import Request, WebSocket

from ..config import Settings
from ..limits import ConnectionRegistry
from ..protocol import ProtocolError, echo_reply, payload_type
from .connection import serving


class EchoResource:
    """WebSocket /echo: each message back as {message, date}, in the format it came in."""

    def __init__(self, registry: ConnectionRegistry, settings: Settings) -> None:
        self._registry = registry
        self._settings = settings

    async def on_websocket(self, req: Request, ws: WebSocket) -> None:
        await ws.accept()
        async with serving(ws, "/echo", self._registry, self._settings) as conn:
            while (payload := await conn.receive()) is not None:
                if wait := conn.throttle():
                    reply = {"error": "rate limited", "retry_after": round(wait, 3)}
                else:
                    try:
                        reply = echo_reply(payload)
                    except ProtocolError as error:
                        reply = {"error": str(error)}
                await conn.send(reply, payload_type(payload))
