from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgpack
from falcon.testing import ASGIConductor


def assert_recent(date: str) -> None:
    moment = datetime.fromisoformat(date)
    assert moment.tzinfo is not None
    assert abs(datetime.now(UTC) - moment) < timedelta(seconds=5)


async def test_text_gets_json(conductor: ASGIConductor) -> None:
    async with conductor.simulate_ws("/echo") as ws:
        await ws.send_text("Hi")
        reply = await ws.receive_json()
        assert reply["message"] == "Hi"
        assert_recent(reply["date"])
        await ws.send_text('{"not": "parsed"}')
        assert (await ws.receive_json())["message"] == '{"not": "parsed"}'


async def test_binary_gets_msgpack(conductor: ASGIConductor) -> None:
    async with conductor.simulate_ws("/echo") as ws:
        await ws.send_data(msgpack.packb({"a": [1, 2.5, "x"]}))
        reply = msgpack.unpackb(await ws.receive_data())
        assert reply["message"] == {"a": [1, 2.5, "x"]}
        assert_recent(reply["date"])


async def test_bad_msgpack_gets_error_and_stays_open(conductor: ASGIConductor) -> None:
    async with conductor.simulate_ws("/echo") as ws:
        await ws.send_data(b"\xc1")  # never used in MessagePack
        assert msgpack.unpackb(await ws.receive_data()) == {"error": "invalid MessagePack"}
        await ws.send_text("still here")
        assert (await ws.receive_json())["message"] == "still here"
