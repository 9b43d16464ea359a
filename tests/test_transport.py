"""The adapter to uvicorn's and Falcon's internals: what it says at start-up and per connection.

tests/test_memory.py pins the internals themselves; these tests pin what the service does when
they are not where the adapter expects them: one clear line, and it still serves.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.asgi
import falcon.asgi.ws
import pytest
import websockets
from falcon.testing import ASGIConductor

from reports_service import transport
from reports_service.app import create_app
from reports_service.config import Settings

from .databases import SQLiteTemplate
from .inprocess import uvicorn_in_process


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")

    def warnings(self) -> list[str]:
        return [line for line in self.lines if not line.startswith(("INFO ", "DEBUG "))]


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lines]:
    """What the adapter logs during the test (from a clean slate of announced lines)."""
    monkeypatch.setattr(transport, "_announced", set())
    logger, handler = logging.getLogger("reports_service.transport"), Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def settings(sqlite_template: SQLiteTemplate, tmp_path: Path) -> Settings:
    """The adapter does not care for the database: SQLite only."""
    return Settings(database_url=sqlite_template.new_database(tmp_path))


async def echo(ws: Any, text: str) -> dict[str, Any]:
    await ws.send_text(text)
    reply: dict[str, Any] = await ws.receive_json()
    return reply


async def test_the_installed_versions_pass_the_check_silently(
    settings: Settings, logged: Lines
) -> None:
    async with (
        uvicorn_in_process(settings) as port,  # its start-up runs the check
        websockets.connect(f"ws://127.0.0.1:{port}/echo") as client,
    ):
        await client.send("hi")
        assert '"message":"hi"' in str(await client.recv())
    assert logged.lines == []
    assert transport.check() == []


def test_a_uvicorn_that_no_longer_keeps_the_handshake_request_is_told(
    logged: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The headers saving reads uvicorn's `protocol.request`: a release without it is told."""
    words = transport._code_words
    monkeypatch.setattr(transport, "_code_words", lambda cls: words(cls) - {"request"})
    assert transport.check() == [transport.HANDSHAKE_KEPT]
    assert logged.warnings() == [f"WARNING {transport.HANDSHAKE_KEPT}"]


class MovedReceiver:
    """Falcon's receive buffer as a later release might keep it: its fields renamed."""

    def __init__(self, receive: Any, max_queue: int) -> None:
        self.queue_limit, self.pump = max_queue, None
        self.client_disconnected, self.client_disconnected_code = False, None

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


async def test_a_moved_internal_is_logged_once_and_the_service_still_serves(
    settings: Settings, logged: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(falcon.asgi.ws, "_BufferedReceiver", MovedReceiver)
    async with ASGIConductor(create_app(settings)) as conductor:
        assert logged.warnings() == [f"WARNING {transport.RECEIVER_KEPT}"]
        for _ in range(2):
            async with conductor.simulate_ws("/echo") as ws:
                assert (await echo(ws, "still here"))["message"] == "still here"
    assert logged.warnings() == [f"WARNING {transport.RECEIVER_KEPT}"]


async def test_a_shape_seen_after_a_passed_check_is_logged_once(
    settings: Settings, logged: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ASGIConductor(create_app(settings)) as conductor:
        assert logged.warnings() == []
        monkeypatch.setattr(falcon.asgi.ws, "_BufferedReceiver", MovedReceiver)
        async with conductor.simulate_ws("/echo") as one, conductor.simulate_ws("/echo") as two:
            assert (await echo(one, "1"))["message"] == "1"
            assert (await echo(two, "2"))["message"] == "2"
    assert logged.warnings() == [f"WARNING {transport.RECEIVER_KEPT}"]


def falcon_websocket_of(simulated: Any) -> falcon.asgi.WebSocket:
    """The app's WebSocket object for a connection that falcon.testing simulates."""
    for o in gc.get_objects():
        if type(o) is falcon.asgi.WebSocket and o._asgi_send.__self__ is simulated:  # type: ignore[attr-defined]
            return o
    raise AssertionError("no WebSocket object for this connection")


async def receiver_of_two_connections(settings: Settings) -> Any:
    """The receive buffer two idle /echo connections of one event loop share."""
    async with (
        ASGIConductor(create_app(settings)) as conductor,
        conductor.simulate_ws("/echo") as one,
        conductor.simulate_ws("/echo") as two,
    ):
        await echo(one, "1")
        await echo(two, "2")
        first, second = falcon_websocket_of(one), falcon_websocket_of(two)
        assert first._buffered_receiver is second._buffered_receiver
        receiver = first._buffered_receiver
        assert receiver._loop is asyncio.get_running_loop()
        return receiver


def test_the_idle_receive_buffer_is_one_per_event_loop(settings: Settings) -> None:
    first = asyncio.run(receiver_of_two_connections(settings))
    second = asyncio.run(receiver_of_two_connections(settings))
    assert first is not second
    assert first._loop is not second._loop
