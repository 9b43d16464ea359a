"""A bare ASGI WebSocket echo app, no framework: the limit of uvicorn + websockets-sansio.

Every frame comes back as it came in; there is no token and no lookup. It answers the
lifespan protocol too, since the production uvicorn options run with ``lifespan="on"``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "websocket":
        await _websocket(receive, send)
    elif kind == "lifespan":
        await _lifespan(receive, send)
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _websocket(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        event = message["type"]
        if event == "websocket.receive":
            text = message.get("text")
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
        elif event == "websocket.connect":
            await send({"type": "websocket.accept"})
        else:  # websocket.disconnect
            return


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
