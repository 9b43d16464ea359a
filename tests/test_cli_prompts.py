"""The `reports-client` and `echo-client` prompts across dropped connections: they connect
again by themselves (the server behind a fixed address restarted, or killed, and replaced),
answer the next line, and never show a traceback."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets
from websockets.asyncio.server import ServerConnection

from .cli_process import Cli, client_env
from .conftest import TOKEN
from .proxy import TcpProxy
from .server import Server, run_cli

pytestmark = pytest.mark.e2e

PROMPTS = {"reports-client": ("report1", "Report 1"), "echo-client": ("hello", '"hello"')}


def gone(server: Server, sig: int) -> None:
    """``server`` stopped by ``sig``: SIGTERM (it closes its connections with 1012) or
    SIGKILL (they just drop)."""
    server.process.send_signal(sig)
    server.stop()


@pytest.mark.parametrize(
    ("client", "sig", "lost"),
    [
        ("reports-client", signal.SIGTERM, "connection lost (1012 server restart)"),
        ("reports-client", signal.SIGKILL, "connection lost (1006 connection dropped)"),
        ("echo-client", signal.SIGTERM, "connection lost (1012 server restart)"),
    ],
)
async def test_a_prompt_outlives_its_server(
    make_server: Callable[..., Server], client: str, sig: int, lost: str
) -> None:
    typed, answer = PROMPTS[client]
    first = await asyncio.to_thread(make_server)
    async with TcpProxy("127.0.0.1", first.port) as proxy:
        cli = await Cli.start(client, env=client_env(f"ws://127.0.0.1:{proxy.port}", TOKEN))
        try:
            await cli.type(typed)
            await cli.said(answer)
            await asyncio.to_thread(gone, first, sig)
            line = await cli.complained(lost)
            assert "reconnecting in " in line and line.endswith(" s"), line
            # Typed while nothing answers: sent once the second server is there.
            await cli.type(typed + "2" if client == "echo-client" else "report2")
            second = await asyncio.to_thread(make_server)
            proxy.target = ("127.0.0.1", second.port)
            await cli.said('"hello2"' if client == "echo-client" else "Report 2")
            await cli.complained("reconnected")
            await cli.type("q")
            assert await cli.wait() == 0
        finally:
            await cli.kill()
    assert "Traceback" not in cli.stderr
    # The drop's reason stays in every retry's line, not the reset of a failed retry.
    assert all(lost in line for line in cli.err if "reconnecting" in line), cli.err


async def test_a_wrong_token_ends_the_prompt(server: Server) -> None:
    cli = await Cli.start("reports-client", env=client_env(server.url, "not-the-token-000"))
    try:
        await cli.type("report1")
        assert await cli.wait() == 1
    finally:
        await cli.kill()
    assert cli.err == ["connection closed by the server: 1008 (invalid token)"]


@pytest.fixture
async def drops_first_reply() -> AsyncIterator[tuple[str, list[list[str]]]]:
    """A scripted /reports peer: its first connection takes the token and one line, then drops
    without an answer (a reply lost in a drop, which a real server cannot be made to do on
    cue); later ones answer every line. Yields its URL and what each connection received."""
    received: list[list[str]] = []

    async def handler(ws: ServerConnection) -> None:
        mine: list[str] = []
        received.append(mine)
        async for message in ws:
            mine.append(str(message))
            if len(received) == 1 and len(mine) == 2:
                ws.transport.abort()
                return
            if len(mine) > 1:
                await ws.send(json.dumps({"answer": str(message)}))

    async with websockets.serve(handler, "127.0.0.1", 0) as peer:
        port = next(iter(peer.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}", received


@pytest.mark.parametrize(
    ("line", "again"),
    [
        ("report1", True),
        ('{"type":"get","id":1,"name":"report1"}', True),
        ('{"type":"put","id":1,"name":"r","title":"T"}', False),
        ('{"type":"remove","id":1,"name":"r"}', False),
    ],
)
async def test_a_lost_reply_is_asked_again_only_for_a_read(
    drops_first_reply: tuple[str, list[list[str]]], line: str, again: bool
) -> None:
    url, received = drops_first_reply
    cli = await Cli.start("reports-client", env=client_env(url, TOKEN))
    try:
        await cli.type(line)
        await cli.complained("connection lost (1006 connection dropped), reconnecting in")
        await cli.complained("reconnected")
        await cli.type("report2")
        await cli.said('{"answer": "report2"}')
        await cli.type("q")
        assert await cli.wait() == 0
    finally:
        await cli.kill()
    expected: list[Any] = [TOKEN, line, "report2"] if again else [TOKEN, "report2"]
    assert received == [[TOKEN, line], expected]
    if again:
        assert cli.out[0].endswith(json.dumps({"answer": line})), cli.out
    else:
        assert "not sent again" in cli.stderr
    assert "Traceback" not in cli.stderr


async def test_a_token_revoked_while_waiting_ends_the_prompt(
    server: Server, db_env: dict[str, str]
) -> None:
    """The drop is seen while the prompt waits for a line, not at the next one."""
    cli = await Cli.start("reports-client", env=client_env(server.url, TOKEN))
    try:
        await cli.type("report1")
        await cli.said("Report 1")
        revoked = await asyncio.to_thread(run_cli, db_env, "token", "revoke", "test")
        assert revoked.returncode == 0, revoked.stderr
        assert await cli.wait() == 1
    finally:
        await cli.kill()
    assert cli.err == ["connection closed by the server: 1008 (token revoked)"]


@pytest.mark.parametrize("client", PROMPTS)
async def test_ctrl_c_ends_a_prompt_quietly(server: Server, client: str) -> None:
    typed, answer = PROMPTS[client]
    cli = await Cli.start(client, env=client_env(server.url, TOKEN))
    try:
        await cli.type(typed)
        await cli.said(answer)
        assert await cli.stop(signal.SIGINT) == 130
    finally:
        await cli.kill()
    assert cli.err == []
