"""A /reports client that speaks JSON text frames or MessagePack binary frames alike."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
from falcon.testing import ASGIWebSocketSimulator


class Epoch(str):
    """Equal to any database epoch: 32 lowercase hex digits (see test_epoch for its value)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and len(other) == 32 and set(other) <= set("0123456789abcdef")

    __hash__ = str.__hash__


EPOCH = Epoch("<epoch>")


class Wire:
    """Typed requests over an ASGIConductor WebSocket, in the format under test."""

    def __init__(self, ws: ASGIWebSocketSimulator, binary: bool) -> None:
        self.ws = ws
        self.binary = binary

    async def send(self, message: Any) -> None:
        if self.binary:
            await self.ws.send_data(msgpack.packb(message))
        else:
            await self.ws.send_text(json.dumps(message))

    async def recv(self, within: float = 5.0) -> Any:
        if self.binary:
            return msgpack.unpackb(await asyncio.wait_for(self.ws.receive_data(), within))
        return json.loads(await asyncio.wait_for(self.ws.receive_text(), within))

    async def call(self, message: Any) -> Any:
        await self.send(message)
        return await self.recv()
