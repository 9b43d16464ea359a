"""Attacks before authentication on a running server: half-sent requests, pending floods, a full
server, clients that never send their token. Everyone else keeps being served."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from reports_service.config import Settings
from reports_service.repository import ReportRepository

from .clients import call, connect
from .conftest import TOKEN
from .inprocess import uvicorn_in_process
from .server import Server

HALF_HEAD = b"GET /reports HTTP/1.1\r\nHost: x\r\n"  # and then nothing more
WAIT = 10.0  # seconds a socket waits for the server: well above the timeouts set below


@contextmanager
def half_sent(
    port: int, count: int, source: str = "127.0.0.1", head: bytes = HALF_HEAD
) -> Iterator[list[socket.socket]]:
    """``count`` connections from ``source`` that sent ``head`` (half a request) and stopped."""
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(
                socket.create_connection(("127.0.0.1", port), WAIT, source_address=(source, 0))
            )
            sock.sendall(head)
            socks.append(sock)
        yield socks


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; socket.timeout if it does not within WAIT."""
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def busy(answer: bytes) -> bool:
    """Whether ``answer`` is a whole HTTP 503 response (its body as long as it says)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    length = head.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0]
    return head.startswith(b"HTTP/1.1 503 ") and int(length) == len(body) > 0


def healthy(server: Server) -> bool:
    with urllib.request.urlopen(server.http + "/healthz", timeout=WAIT) as response:
        return bool(response.status == 200)


async def test_half_sent_heads_are_closed_within_the_timeout(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(handshake_timeout="1", max_pending_per_address="1000")
    with half_sent(server.port, 200) as socks:
        assert healthy(server)  # while they are all still open
        for sock in socks:
            assert read_to_eof(sock) == b""  # closed, with nothing said: no request was made
    assert healthy(server)


async def test_a_silent_connection_is_closed_within_the_timeout(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(handshake_timeout="1")
    with socket.create_connection(("127.0.0.1", server.port), WAIT) as sock:
        assert read_to_eof(sock) == b""


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_both_http_protocols_time_out_heads(
    settings: Settings, seeded_repository: ReportRepository, http: str
) -> None:
    settings = dataclasses.replace(settings, handshake_timeout=0.5)
    async with uvicorn_in_process(settings, http=http) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # NOTE: one whole request, then half of the next on the same (kept-alive) connection
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(head.lower().partition(b"content-length:")[2].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        writer.close()
        async with websockets.connect(f"ws://127.0.0.1:{port}/reports") as ws:
            await ws.send(TOKEN)
            assert (await call(ws, {"id": 1, "type": "ping"}))["result"]["pong"] is True


async def test_pending_over_the_cap_of_an_address_are_refused_at_once(
    make_server: Callable[..., Server],
) -> None:
    # NOTE: the head timeout is far longer than the socket's wait: a refusal comes at once.
    server = make_server(handshake_timeout="60", max_pending_per_address="5")
    elsewhere = ("127.0.0.5", 0)
    served = [await connect(server, local_addr=elsewhere) for _ in range(6)]  # not pending
    async with websockets.connect(server.url + "/echo", local_addr=elsewhere) as ws:
        await ws.send("served too")
        assert "served too" in str(await asyncio.wait_for(ws.recv(), WAIT))
    for ws in served:
        await ws.close()
    with half_sent(server.port, 5) as held, half_sent(server.port, 3, head=b"") as extra:
        # NOTE: the extra ones send nothing: bytes sent after the refusal would reset it.
        for sock in extra:
            assert busy(read_to_eof(sock))
        other = ("127.0.0.2", 0)
        async with websockets.connect(server.url + "/echo", local_addr=other) as ws:
            await ws.send("hello")
            assert "hello" in str(await asyncio.wait_for(ws.recv(), WAIT))
        ws = await connect(server, local_addr=other)
        await ws.close()
        for sock in held:
            sock.close()
    ws = await connect(server)  # their address may connect again once they left
    await ws.close()


async def test_pending_over_the_cap_of_the_process_are_refused_at_once(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(handshake_timeout="60", max_pending="4")
    with half_sent(server.port, 2) as held, half_sent(server.port, 2, "127.0.0.3") as more:
        with half_sent(server.port, 1, "127.0.0.4", b"") as (extra,):
            assert busy(read_to_eof(extra))
        for sock in [*held, *more]:
            sock.close()
    ws = await connect(server, local_addr=("127.0.0.4", 0))
    await ws.close()


async def test_a_full_server_refuses_before_looking_at_tokens(
    make_server: Callable[..., Server],
) -> None:
    # NOTE: the auth timeout is far longer than the client's wait: the refusal does not wait
    #   for a token (nor look one up: the header's token is refused before the handshake).
    server = make_server(max_connections="1", auth_timeout="60")
    holder = await connect(server)
    async with websockets.connect(server.url + "/reports") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    with pytest.raises(InvalidStatus) as refused:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with websockets.connect(server.url + "/reports", additional_headers=bearer):
            pass
    assert refused.value.response.status_code == 503
    assert (await call(holder, {"id": 1, "type": "ping"}))["result"]["pong"] is True
    await holder.close()
    ws = await connect(server)  # a place is free again
    await ws.close()


async def test_auth_timeouts_do_not_lock_out_the_address(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(auth_timeout="0.5", auth_failures="2")
    for _ in range(4):  # sockets that never send their token
        async with websockets.connect(server.url + "/reports") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), WAIT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason == "authentication timed out"
    ws = await connect(server)  # another client of the same address (one office, one NAT)
    await ws.close()
    for _ in range(2):  # wrong tokens still count
        async with websockets.connect(server.url + "/reports") as ws:
            await ws.send("wrong-token-0123456789")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), WAIT)
    async with websockets.connect(server.url + "/reports") as ws:
        with pytest.raises(ConnectionClosed) as closed:  # refused before its token is sent
            await asyncio.wait_for(ws.recv(), WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.reason == "too many failed logins"
