from __future__ import annotations

from falcon.asgi import Request, WebSocket

from ..protocol import ProtocolError, echo_reply, payload_type
from .connection import receive, tracked


class EchoResource:
    """WebSocket /echo: each message back as {message, date}, in the format it came in."""

    async def on_websocket(self, req: Request, ws: WebSocket) -> None:
        await ws.accept()
        with tracked("/echo"):
            while (payload := await receive(ws)) is not None:
                try:
                    reply = echo_reply(payload)
                except ProtocolError as error:
                    reply = {"error": str(error)}
                await ws.send_media(reply, payload_type(payload))
