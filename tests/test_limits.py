"""Limits against hostile clients, each crossed once, in process (ASGIConductor)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import falcon
import pytest
from falcon.testing import ASGIConductor, ASGIWebSocketSimulator

from reports_service.app import create_app
from reports_service.config import Settings
from reports_service.repository import ReportRepository

from .conftest import TOKEN

StartApp = Callable[..., Awaitable[ASGIConductor]]


@pytest.fixture
async def app_with(
    settings: Settings, seeded_repository: ReportRepository
) -> AsyncIterator[StartApp]:
    """Start an app with some settings changed; it is stopped after the test."""
    async with AsyncExitStack() as apps:

        async def start(**changes: Any) -> ASGIConductor:
            fields = {
                "database_url": settings.database_url,
                "auth_timeout": settings.auth_timeout,
                **changes,
            }
            return await apps.enter_async_context(ASGIConductor(create_app(Settings(**fields))))

        yield start


def connect(
    conductor: ASGIConductor, path: str, **kwargs: Any
) -> AbstractAsyncContextManager[ASGIWebSocketSimulator]:
    """A simulated connection whose close reasons reach the client (ASGI spec 2.3 and later)."""
    return conductor.simulate_ws(path, spec_version="2.4", **kwargs)


async def refused_with(conductor: ASGIConductor, path: str) -> tuple[int | None, str | None]:
    """Close code and reason of a connection the app closes as soon as it accepts it."""
    refused = connect(conductor, path)
    with pytest.raises(falcon.WebSocketDisconnected):
        async with refused as ws:
            await ws.receive_text()
    # NOTE: the app may close it before the context is even entered: read the simulator.
    simulator: ASGIWebSocketSimulator = refused._ws  # type: ignore[attr-defined]
    return simulator.close_code, simulator.close_reason


async def closed_with(ws: ASGIWebSocketSimulator, within: float = 5.0) -> int | None:
    """Reads until the app closes the connection; its close code."""
    with pytest.raises(falcon.WebSocketDisconnected):
        async with asyncio.timeout(within):
            while True:
                await ws.receive_text()
    return ws.close_code


async def test_oversized_message_closes_1009(
    app_with: StartApp,
) -> None:
    conductor = await app_with(max_message_bytes=1000)
    async with connect(conductor, "/echo") as ws:
        await ws.send_text("é" * 400)  # 800 bytes
        assert (await ws.receive_json())["message"] == "é" * 400
        await ws.send_text("é" * 501)  # 1002 bytes, 501 characters
        assert await closed_with(ws) == 1009
    async with connect(conductor, "/reports") as ws:
        await ws.send_text(TOKEN)
        await ws.send_data(b"\x00" * 1001)
        assert await closed_with(ws) == 1009


async def test_token_revoked_while_connected_is_closed(
    app_with: StartApp, seeded_repository: ReportRepository
) -> None:
    conductor = await app_with(token_recheck=0.1)
    async with connect(conductor, "/reports") as ws:
        await ws.send_text(TOKEN)
        await ws.send_text(json.dumps({"id": 1, "type": "subscribe"}))
        assert (await ws.receive_json())["id"] == 1
        await seeded_repository.revoke_token(name="test")
        started_at = asyncio.get_running_loop().time()
        assert await closed_with(ws) == 1008
        assert ws.close_reason == "token revoked"
        assert asyncio.get_running_loop().time() - started_at < 2


async def test_repeated_failures_refuse_the_address(
    app_with: StartApp,
) -> None:
    conductor = await app_with(auth_failures=3, auth_failure_window=60)
    for _ in range(3):
        async with connect(conductor, "/reports") as ws:
            await ws.send_text("guess")
            assert await closed_with(ws) == 1008
    # Closed at once, before the token is read: even the right one, for a while.
    assert await refused_with(conductor, "/reports") == (1008, "too many failed logins")
    async with connect(conductor, "/reports", remote_addr="10.0.0.7") as ws:
        await ws.send_text(TOKEN)  # another address is not affected
        await ws.send_text("report1")
        assert await ws.receive_json() == {"report": "Report 1"}


@pytest.mark.parametrize(
    ("origin", "allowed", "accepted"),
    [
        (None, "", True),
        ("http://reports.example", "", True),  # the service's own page
        ("http://reports.example:8080", "", False),
        ("https://evil.example", "", False),
        ("null", "", False),
        ("https://dash.example", "https://dash.example, https://other.example", True),
        ("https://evil.example", "*", True),
    ],
)
async def test_origin(
    app_with: StartApp,
    origin: str | None,
    allowed: str,
    accepted: bool,
) -> None:
    conductor = await app_with(allowed_origins=allowed)
    headers = {"Origin": origin} if origin else {}
    if accepted:
        async with connect(conductor, "/echo", host="reports.example", headers=headers) as ws:
            await ws.send_text("hi")
            assert (await ws.receive_json())["message"] == "hi"
    else:
        with pytest.raises(falcon.WebSocketDisconnected):
            async with connect(conductor, "/echo", host="reports.example", headers=headers):
                pass


async def test_connection_caps(app_with: StartApp) -> None:
    conductor = await app_with(max_connections=3, max_connections_per_token=2)
    async with connect(conductor, "/reports") as a, connect(conductor, "/reports") as b:
        for ws in (a, b):
            await ws.send_text(TOKEN)
            await ws.send_text("report1")
            await ws.receive_json()
        async with connect(conductor, "/reports") as third:
            await third.send_text(TOKEN)
            assert await closed_with(third) == 1008
            assert third.close_reason == "too many connections for this token"
        async with connect(conductor, "/echo") as echo:
            await echo.send_text("x")
            await echo.receive_json()
            assert await refused_with(conductor, "/echo") == (
                1013,
                "server full: too many connections",
            )
    async with connect(conductor, "/echo") as again:  # room again once they left
        await again.send_text("x")
        assert (await again.receive_json())["message"] == "x"


async def test_rate_limit_then_close(app_with: StartApp) -> None:
    conductor = await app_with(rate_limit=5, rate_burst=5, rate_strikes=3)
    async with connect(conductor, "/reports") as ws:
        await ws.send_text(TOKEN)
        for _ in range(5):
            await ws.send_text("report1")
            assert await ws.receive_json() == {"report": "Report 1"}
        await ws.send_text("report1")
        limited = await ws.receive_json()
        assert limited["error"] == "rate limited" and 0 < limited["retry_after"] <= 0.2
        await ws.send_text(json.dumps({"id": 7, "type": "ping"}))
        typed = await ws.receive_json()
        assert typed["id"] == 7 and typed["error"]["code"] == "rate_limited"
        await asyncio.sleep(0.25)  # NOTE: the subject: time refills the bucket
        await ws.send_text("report1")
        assert await ws.receive_json() == {"report": "Report 1"}
        with pytest.raises(falcon.WebSocketDisconnected):
            for _ in range(20):
                await ws.send_text("report1")
                await ws.receive_json()
        assert ws.close_code == 1008
        assert ws.close_reason == "rate limit exceeded"


async def test_idle_timeout_spares_subscribers(
    app_with: StartApp,
) -> None:
    conductor = await app_with(idle_timeout=0.3)
    async with (
        connect(conductor, "/reports") as idle,
        connect(conductor, "/reports") as listening,
    ):
        await idle.send_text(TOKEN)
        await listening.send_text(TOKEN)
        await listening.send_text(json.dumps({"id": 1, "type": "subscribe"}))
        assert (await listening.receive_json())["id"] == 1
        assert await closed_with(idle, within=2) == 1001
        assert idle.close_reason == "idle timeout"
        await asyncio.sleep(0.5)  # NOTE: the subject: silent for longer than the idle timeout
        await listening.send_text(json.dumps({"id": 2, "type": "ping"}))
        assert (await listening.receive_json())["id"] == 2
