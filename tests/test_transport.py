"""The adapter to uvicorn's and Falcon's internals: what it says at start-up and per connection.

tests/test_memory.py pins the internals themselves; these tests pin what the service does when
they are not where the adapter expects them: one clear line, and it still serves.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.asgi
import falcon.asgi.ws
import msgpack
import pytest
import websockets
from falcon.testing import ASGIConductor

from reports_service import transport
from reports_service.app import create_app
from reports_service.config import Settings
from reports_service.records import NewReport
from reports_service.repository import ReportRepository

from .conftest import TOKEN
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


def test_a_websockets_that_no_longer_frames_as_it_did_is_told(
    logged: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push is framed once for all its subscribers by appending to websockets'
    `Protocol.writes`: a release without it is told."""
    words = transport._code_words
    monkeypatch.setattr(transport, "_code_words", lambda cls: words(cls) - {"writes"})
    assert transport.check() == [transport.FRAME_ONCE_OFF]
    assert logged.warnings() == [f"WARNING {transport.FRAME_ONCE_OFF}"]


async def test_a_push_framed_once_reaches_every_kind_of_subscriber_and_compressed_ones_compress(
    settings: Settings, seeded_repository: ReportRepository
) -> None:
    """Each change is framed once for the subscribers it goes to in a row (transport._framed),
    but a connection that frames its own (compression, as a server run under its own uvicorn
    options may allow) still does: a JSON, a MessagePack and a compressed subscriber each get
    every change whole, and the compressed one receives a fraction of the bytes."""
    big = "all work and no play " * 5_000  # 105,000 characters: a frame with a 64-bit length
    received = {"plain": 0, "packed": 0}
    async with uvicorn_in_process(settings, ws_per_message_deflate=True) as port:
        url = f"ws://127.0.0.1:{port}/reports"
        clients = {
            "plain": await websockets.connect(url, compression=None, max_size=None),
            "binary": await websockets.connect(url, compression=None, max_size=None),
            "packed": await websockets.connect(url, compression="deflate", max_size=None),
        }
        for key, client in clients.items():
            if key in received:
                receive = client.protocol.receive_data

                def counting(data: bytes, key: str = key, receive: Any = receive) -> None:
                    received[key] += len(data)
                    receive(data)

                client.protocol.receive_data = counting  # type: ignore[assignment,method-assign]
            await client.send(TOKEN)
            subscribe = {"id": 1, "type": "subscribe"}
            await client.send(
                msgpack.packb(subscribe) if key == "binary" else json.dumps(subscribe)
            )
            await asyncio.wait_for(client.recv(), 5)
        before = dict(received)
        sizes = [10, 125, 126, 65_535, 65_536, len(big)]
        reports = [NewReport(f"r{n}", "T", big[:size]) for n, size in enumerate(sizes)]
        await seeded_repository.add_reports(reports[:3])
        await seeded_repository.add_reports(reports[3:])
        for key, client in clients.items():
            frames = [await asyncio.wait_for(client.recv(), 5) for _ in sizes]
            events = [msgpack.unpackb(f) if isinstance(f, bytes) else json.loads(f) for f in frames]
            assert [e["report"]["name"] for e in events] == [r.name for r in reports], key
            assert [e["report"]["content"] for e in events] == [r.content for r in reports], key
            assert all(isinstance(f, bytes if key == "binary" else str) for f in frames), key
            await client.close()
    plain, packed = (received[k] - before[k] for k in ("plain", "packed"))
    assert plain > sum(sizes) and packed < plain / 10, (plain, packed)


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
