"""What an idle connection keeps, under real uvicorn in this process.

The memory per idle connection is measured in benchmarks/ (RSS, 10,000 connections). Part of
it is kept low by letting go of what uvicorn and Falcon hold on to after the handshake
(`transport.trim`), through their internals: this test pins those, so that an upgrade of
either that moves them fails here (the service itself then logs the saving off at start-up,
see test_transport.py).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import falcon.asgi
import pytest
import websockets

from reports_service.config import Settings
from reports_service.repository import ReportRepository

from .conftest import TOKEN
from .inprocess import uvicorn_in_process


@pytest.fixture
async def port(settings: Settings, seeded_repository: ReportRepository) -> AsyncIterator[int]:
    async with uvicorn_in_process(settings) as port:
        yield port


def websockets_served_on(port: int) -> list[falcon.asgi.WebSocket]:
    """Falcon's WebSocket objects of the connections uvicorn serves on ``port``."""
    found = []
    for o in gc.get_objects():
        if type(o) is falcon.asgi.WebSocket and not o.closed:
            protocol = getattr(o._asgi_send, "__self__", None)
            if getattr(protocol, "server", None) == ("127.0.0.1", port):
                found.append(o)
    return found


async def test_idle_connections_let_go_of_the_handshake(port: int) -> None:
    url = f"ws://127.0.0.1:{port}/reports"
    async with websockets.connect(url) as one, websockets.connect(url) as two:
        for client in (one, two):
            await client.send(TOKEN)
            await client.send("report1")
            assert await client.recv() == '{"report":"Report 1"}'
        sockets = websockets_served_on(port)
        assert len(sockets) == 2
        for ws in sockets:
            protocol: Any = ws._asgi_send.__self__  # type: ignore[attr-defined]
            assert protocol.handshake_complete and protocol.response is None
            assert not protocol.request.headers  # websockets' copy, which its parser keeps
            assert protocol.scope["headers"] == []
        # Falcon's receive buffer (unused: max_receive_queue = 0) is one for all, in the
        # event loop it was made in (its own: see test_transport.py).
        first, second = sockets
        assert first._buffered_receiver is second._buffered_receiver
        assert first._buffered_receiver._loop is asyncio.get_running_loop()
        # ... and the connections still work after all that.
        await one.send("report2")
        assert await one.recv() == '{"report":"Report 2"}'
