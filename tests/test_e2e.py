"""End to end: uvicorn on a free port, a real `websockets` client, seed.py in another process."""

from __future__ import annotations

import msgpack
import pytest
import websockets
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from .conftest import TOKEN
from .server import Server, run_cli


async def test_echo_and_reports(server: Server) -> None:
    async with websockets.connect(server.url + "/echo") as ws:
        await ws.send("hello")
        assert '"message":"hello"' in str(await ws.recv())
        await ws.send(msgpack.packb([1, 2]))
        reply = await ws.recv()
        assert isinstance(reply, bytes)
        assert msgpack.unpackb(reply)["message"] == [1, 2]
    async with websockets.connect(server.url + "/reports") as ws:
        await ws.send(TOKEN)
        await ws.send("report1")
        assert await ws.recv() == '{"report":"Report 1"}'
        await ws.send("missing")
        assert await ws.recv() == '{"error":"report not found"}'


async def test_report_added_by_seed_script_is_served_at_once(
    server: Server, db_env: dict[str, str]
) -> None:
    async with websockets.connect(server.url + "/reports") as ws:
        await ws.send(TOKEN)
        await ws.send("live")
        assert await ws.recv() == '{"error":"report not found"}'
        added = run_cli(db_env, "add", "live", "--title", "Live report", "--content", "c")
        assert added.returncode == 0, added.stderr
        await ws.send("live")
        assert await ws.recv() == '{"report":"Live report"}'
        replaced = run_cli(db_env, "add", "live", "--title", "Renamed", "--replace")
        assert replaced.returncode == 0, replaced.stderr
        await ws.send("live")
        assert await ws.recv() == '{"report":"Renamed"}'
        assert run_cli(db_env, "remove", "live").returncode == 0
        await ws.send("live")
        assert await ws.recv() == '{"error":"report not found"}'


async def test_wrong_token_closes_1008(server: Server) -> None:
    async with websockets.connect(server.url + "/reports") as ws:
        await ws.send("nope")
        with pytest.raises(ConnectionClosedError) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_unrouted_path_refused_at_handshake(server: Server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(server.url + "/nowhere"):
            pass
    assert refused.value.response.status_code == 403


async def test_oversized_message_closes_1009(server: Server) -> None:
    async with websockets.connect(server.url + "/echo", max_size=None) as ws:
        await ws.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosedError) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    async with websockets.connect(server.url + "/echo") as ws:
        await ws.send("x" * 60_000)
        assert len(str(await ws.recv())) > 60_000
