"""Health, readiness, metrics and structured logs: what an operator sees."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import falcon.testing
import pytest
import websockets
from falcon.testing import ASGIConductor
from sqlalchemy import text
from websockets.exceptions import ConnectionClosed

from reports_service.app import create_app
from reports_service.config import Settings
from reports_service.errors import DatabaseUnavailable
from reports_service.migrate import downgrade
from reports_service.repository import ReportRepository, repository_for

from .conftest import TOKEN
from .server import Server
from .waiting import eventually


async def test_healthz(conductor: ASGIConductor) -> None:
    result = await conductor.simulate_get("/healthz")
    assert (result.status_code, result.json) == (200, {"status": "ok"})


async def test_readyz_when_ready(conductor: ASGIConductor) -> None:
    result = await conductor.simulate_get("/readyz")
    assert result.status_code == 200
    assert result.json["status"] == "ready"


async def test_readyz_503_when_behind_migrations(settings: Settings, db_url: str) -> None:
    await asyncio.to_thread(downgrade, db_url, "0002")
    async with ASGIConductor(create_app(settings)) as conductor:
        result = await conductor.simulate_get("/readyz")
    assert result.status_code == 503
    assert "database at migration 0002" in result.json["reason"]
    assert "reports-service migrate" in result.json["reason"]


async def test_readyz_503_when_database_is_down(db_url: str) -> None:
    down = (
        "sqlite+aiosqlite:////nonexistent-directory/reports.db"
        if db_url.startswith("sqlite")
        else "postgresql+asyncpg://postgres@127.0.0.1:1/test"
    )
    async with ASGIConductor(create_app(Settings(database_url=down))) as conductor:
        result = await conductor.simulate_get("/readyz")
        assert (await conductor.simulate_get("/healthz")).status_code == 200
    assert result.status_code == 503
    assert result.json["reason"].startswith("database unavailable")


async def test_metrics(conductor: ASGIConductor) -> None:
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text("wrong")
        with pytest.raises(falcon.WebSocketDisconnected):
            await ws.receive_text()
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text(TOKEN)
        await ws.send_text("report1")
        await ws.receive_json()
        await ws.send_text('{"type": "get", "name": "nope"}')
        await ws.receive_json()
        text = (await conductor.simulate_get("/metrics")).text
    assert 'reports_connections_open{route="/reports"} 1.0' in text
    assert 'reports_auth_failures_total{reason="invalid_token"}' in text
    assert 'reports_messages_total{kind="plain"}' in text
    assert 'reports_messages_total{kind="get"}' in text
    assert 'reports_replies_total{outcome="not_found"}' in text
    assert 'reports_closes_total{code="1008"}' in text
    for name in (
        "reports_query_seconds_bucket",
        "reports_feed_lag_seconds",
        "reports_subscriber_queue_depth",
        "reports_subscribers",
    ):
        assert name in text


async def test_json_logs_tag_each_connection(make_server: Callable[..., Server]) -> None:
    server = make_server(log_format="json", log_level="INFO")
    for _ in range(2):
        async with websockets.connect(server.url + "/reports") as ws:
            await ws.send(TOKEN)
            await ws.send("report1")
            await ws.recv()
    async with websockets.connect(server.url + "/reports") as ws:
        await ws.send("not-" + TOKEN)
        with pytest.raises(ConnectionClosed):
            await ws.recv()

    def all_logged() -> bool:  # the last line of each connection
        log = server.log()
        return log.count("websocket closed on /reports") == 2 and ": invalid token" in log

    await eventually(all_logged)
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    ours = [line for line in lines if line["logger"].startswith("reports_service.")]
    # NOTE: HTTP requests (the fixture's GET /hello) get ids of their own, one line each.
    requests = [line for line in ours if line["logger"] == "reports_service.http"]
    assert requests and all(line["conn"] != "-" for line in requests)
    assert len({line["conn"] for line in requests}) == len(requests)
    by_conn: dict[str, list[str]] = {}
    for line in ours:
        if line["conn"] != "-" and line not in requests:
            by_conn.setdefault(line["conn"], []).append(line["message"])
    assert len(by_conn) == 3
    for messages in by_conn.values():
        assert any(m.startswith("websocket connection on /reports") for m in messages)
    assert sum(any("authenticated" in m for m in ms) for ms in by_conn.values()) == 2
    assert sum(any("invalid token" in m for m in ms) for ms in by_conn.values()) == 1
    assert TOKEN not in server.log()


async def test_pool_exhaustion_is_an_error_not_a_hang(
    settings: Settings, seeded_repository: ReportRepository
) -> None:
    small = repository_for(
        Settings(database_url=settings.database_url, pool_size=1, pool_timeout=0.2)
    )
    try:
        async with small.engine.connect() as held:
            await held.execute(text("SELECT 1"))
            started = asyncio.get_running_loop().time()
            with pytest.raises(DatabaseUnavailable):  # NOTE: a query that takes a pooled connection
                await small.recent_reports(limit=1)
            assert asyncio.get_running_loop().time() - started < 2
        assert len(await small.recent_reports(limit=1)) == 1
    finally:
        await small.dispose()
