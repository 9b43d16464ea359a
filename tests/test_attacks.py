"""Attacks on a running server (uvicorn on a free port): it keeps serving everyone else."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from reports_service.records import NewReport
from reports_service.repository import ReportRepository

from .clients import open_connections, unsent_bytes
from .conftest import TOKEN, WRITE_TOKEN
from .rawws import open_ws
from .server import Server
from .waiting import eventually

SEND_TIMEOUT = 4.0  # seconds; generous, so that the others' replies come well within it


def rss_kib(server: Server) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


async def test_origin_of_other_sites_is_refused(server: Server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        evil = Origin("https://evil.example")
        async with websockets.connect(server.url + "/echo", origin=evil):
            pass
    assert refused.value.response.status_code == 403
    own = Origin(f"http://127.0.0.1:{server.port}")
    async with websockets.connect(server.url + "/echo", origin=own) as ws:
        await ws.send("page")
        assert "page" in str(await ws.recv())
    async with websockets.connect(server.url + "/echo") as ws:  # no Origin: not a browser
        await ws.send("cli")
        assert "cli" in str(await ws.recv())


async def test_dead_peer_is_dropped_by_pings(make_server: Callable[..., Server]) -> None:
    server = make_server(ws_ping_interval="0.3", ws_ping_timeout="0.3")
    with open_ws(server.port):  # a peer that never answers anything, not even pings
        await eventually(lambda: open_connections(server, "/echo") == 1)
        await eventually(lambda: open_connections(server, "/echo") == 0)


async def test_oversized_frames_do_not_grow_memory(server: Server) -> None:
    async with websockets.connect(server.url + "/echo") as ws:
        await ws.send("warm up")
        await ws.recv()
    before = rss_kib(server)
    for _ in range(20):
        try:
            async with websockets.connect(server.url + "/echo", max_size=None) as ws:
                await ws.send(b"\x00" * 4_000_000)
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
        except (ConnectionClosed, OSError):
            pass  # reset by the server mid-send: also a refusal
    assert rss_kib(server) - before < 8 * 1024
    async with websockets.connect(server.url + "/echo") as ws:
        await ws.send("still serving")
        assert "still serving" in str(await ws.recv())


async def test_client_that_never_reads_is_dropped(
    make_server: Callable[..., Server], seeded_repository: ReportRepository
) -> None:
    await seeded_repository.add_reports([NewReport("big", "Big", "x" * 60_000)])
    server = make_server(send_timeout=str(SEND_TIMEOUT), rate_limit="0")
    stalled = await websockets.connect(server.url + "/reports", max_queue=1, max_size=None)
    await stalled.send(TOKEN)
    request = json.dumps({"type": "get", "name": "big"})
    for _ in range(500):  # ~30 MB of replies it never reads
        await stalled.send(request)
    healthy = await websockets.connect(server.url + "/reports")
    try:
        await healthy.send(TOKEN)
        started = time.monotonic()
        for _ in range(20):
            await healthy.send("report1")
            reply = await asyncio.wait_for(healthy.recv(), SEND_TIMEOUT)
            assert reply == '{"report":"Report 1"}'
        # NOTE: had they waited on the stalled client's sends, they would have taken longer
        #   than its send timeout, after which it is dropped.
        assert time.monotonic() - started < SEND_TIMEOUT
        await eventually(lambda: open_connections(server, "/reports") == 1, SEND_TIMEOUT + 10)
        assert "dropping a connection that stopped reading" in server.log()
    finally:
        await healthy.close()
        stalled.transport.abort()


async def test_sigterm_with_a_stalled_client_still_exits(
    make_server: Callable[..., Server], seeded_repository: ReportRepository
) -> None:
    await seeded_repository.add_reports([NewReport("big", "Big", "x" * 60_000)])
    grace = 3
    server = make_server(send_timeout="1", shutdown_grace=str(grace), rate_limit="0")
    stalled = await websockets.connect(server.url + "/reports", max_queue=1, max_size=None)
    await stalled.send(TOKEN)
    for _ in range(500):
        await stalled.send(json.dumps({"type": "get", "name": "big"}))
    await eventually(lambda: unsent_bytes(stalled) > 64 * 1024)  # the server is stuck on it
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(server.process.wait, 4 * grace)
    assert time.monotonic() - started < 2 * grace  # the grace period, and as much in slack
    stalled.transport.abort()


async def test_sigterm_loses_no_acknowledged_write(
    make_server: Callable[..., Server], seeded_repository: ReportRepository
) -> None:
    server = make_server(shutdown_grace="3")
    acknowledged: list[str] = []
    async with websockets.connect(server.url + "/reports") as ws:
        await ws.send(WRITE_TOKEN)
        for n in range(200):
            await ws.send(json.dumps({"id": n, "type": "put", "name": f"p{n}", "title": "P"}))
        first = json.loads(await ws.recv())
        acknowledged.append(first["result"]["name"])
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if "result" in reply:
                    acknowledged.append(reply["result"]["name"])
    assert closed.value.rcvd is None or closed.value.rcvd.code in (1001, 1012)
    await asyncio.to_thread(server.process.wait, 10)
    stored = {r.name for r in await seeded_repository.list_reports()}
    assert set(acknowledged) <= stored


async def test_no_token_in_logs_even_at_debug(make_server: Callable[..., Server]) -> None:
    server = make_server(log_level="DEBUG")
    async with websockets.connect(server.url + "/reports") as ws:
        await ws.send(TOKEN)
        await ws.send("report1")
        await ws.recv()
    async with websockets.connect(server.url + "/reports") as ws:
        await ws.send("wrong-" + TOKEN[:10])
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    await eventually(lambda: ": invalid token" in server.log())  # the last line logged
    log = server.log()
    assert "authenticated 127.0.0.1 as 'test'" in log
    assert TOKEN not in log and TOKEN[:10] not in log


async def test_oversized_frame_is_refused_at_its_header(server: Server) -> None:
    # Only the header and 1 KB of a 10 MB frame are sent: the server must not wait for (and
    # buffer) the rest before closing with 1009.
    def attack() -> None:
        with open_ws(server.port) as ws:
            header = struct.pack("!BBQ", 0x82, 0x80 | 127, 10_000_000) + b"\x01\x02\x03\x04"
            ws.send_raw(header + b"\x00" * 1024)
            ws.expect_failure(1009, reset_ok=True)

    await asyncio.wait_for(asyncio.to_thread(attack), 10)
