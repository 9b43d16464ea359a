"""A bare ASGI WebSocket broadcast app, no framework: the fan-out limit of uvicorn + websockets.

Each connection's first message is answered with ``{"id":1,"result":{}}`` (as the service
answers a ``subscribe``) and makes it a subscriber; every later message it sends is sent on, as
it came, to every other subscriber. There is no token, no queue and no database: what is left
is the cost of the server stack's sends. It answers the lifespan protocol too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SUBSCRIBED = '{"id":1,"result":{}}'

subscribers: set[Send] = set()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "websocket":
        try:
            await _websocket(receive, send)
        finally:
            subscribers.discard(send)
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
            if send not in subscribers:
                subscribers.add(send)
                await send({"type": "websocket.send", "text": SUBSCRIBED})
                continue
            text = message.get("text")
            out: Message = (
                {"type": "websocket.send", "text": text}
                if text is not None
                else {"type": "websocket.send", "bytes": message.get("bytes") or b""}
            )
            # NOTE: one send after another, in the publisher's task: no per-subscriber queue.
            #   A subscriber that went away meanwhile is skipped, not fatal to the publisher.
            for other in list(subscribers):
                if other is not send:
                    try:
                        await other(out)
                    except Exception:
                        subscribers.discard(other)
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
