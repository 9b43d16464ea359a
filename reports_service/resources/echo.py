from __future__ import annotations

from falcon import WebSocketDisconnected
from falcon.asgi import Request, WebSocket

from ..protocol import ProtocolError, echo_reply, payload_type


class EchoResource:
    """WebSocket /echo: each message back as {message, date}, in the format it came in."""

    async def on_websocket(self, req: Request, ws: WebSocket) -> None:
        await ws.accept()
        while True:
            try:
                payload = await ws.receive_media()
            except WebSocketDisconnected:
                return
            assert isinstance(payload, str | bytes)
            try:
                reply = echo_reply(payload)
            except ProtocolError as error:
                reply = {"error": str(error)}
            await ws.send_media(reply, payload_type(payload))
