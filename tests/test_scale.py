"""Several server processes on one database: changes fan out across all of them."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .clients import PUSH_WITHIN, call, connect, next_event
from .conftest import TOKEN, WRITE_TOKEN
from .server import Server, run_cli


async def subscriber(server: Server, token: str = TOKEN, **subscribe: Any) -> ClientConnection:
    ws = await connect(server, token)
    reply = await call(ws, {"id": "s", "type": "subscribe", **subscribe})
    assert "result" in reply, reply
    return ws


async def test_two_servers_share_changes(
    make_server: Callable[..., Server], db_env: dict[str, str]
) -> None:
    first, second = make_server(), make_server()
    watcher = await subscriber(first)
    writer = await subscriber(second, WRITE_TOKEN, names=["nobody"])
    try:
        assert (
            await asyncio.to_thread(run_cli, db_env, "add", "s1", "--title", "S1")
        ).returncode == 0
        event = await next_event(watcher, PUSH_WITHIN)
        assert (event["type"], event["report"]["name"]) == ("report.added", "s1")
        await writer.send(json.dumps({"id": 1, "type": "put", "name": "s2", "title": "S2"}))
        assert json.loads(await writer.recv())["result"]["name"] == "s2"
        event = await next_event(watcher, PUSH_WITHIN)
        assert (event["report"]["name"], event["version"]) == ("s2", 6)
    finally:
        await watcher.close()
        await writer.close()


async def test_two_workers_behind_one_port(
    make_server: Callable[..., Server], db_env: dict[str, str]
) -> None:
    server = make_server(workers="2")
    clients = [await subscriber(server) for _ in range(8)]
    try:
        assert (
            await asyncio.to_thread(run_cli, db_env, "add", "w1", "--title", "W1")
        ).returncode == 0
        events = await asyncio.gather(*(next_event(ws) for ws in clients))
        assert {(e["report"]["name"], e["version"]) for e in events} == {("w1", 5)}
        metrics = await asyncio.to_thread(_get, server.http + "/metrics")
        assert 'reports_connections_open{route="/reports"} 8.0' in metrics
    finally:
        for ws in clients:
            await ws.close()


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


async def test_sigterm_closes_with_1012_and_resume_elsewhere_misses_nothing(
    make_server: Callable[..., Server], db_env: dict[str, str]
) -> None:
    grace = 3
    leaving, staying = make_server(shutdown_grace=str(grace)), make_server()
    ws = await subscriber(leaving)
    seen = 4
    started = time.monotonic()
    leaving.process.send_signal(signal.SIGTERM)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 2 * grace)
    assert closed.value.rcvd is not None and closed.value.rcvd.code in (1001, 1012)
    await asyncio.to_thread(leaving.process.wait, 2 * grace)
    assert time.monotonic() - started < 2 * grace  # the grace period, and as much in slack
    assert (await asyncio.to_thread(run_cli, db_env, "add", "gone", "--title", "G")).returncode == 0
    resumed = await subscriber(staying, since=seen)
    try:
        event = await next_event(resumed, 5)
        assert (event["report"]["name"], event["version"]) == ("gone", 5)
    finally:
        await resumed.close()


async def test_killed_listener_loses_no_change(
    make_server: Callable[..., Server], db_env: dict[str, str], db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    server = make_server()
    ws = await subscriber(server)
    try:
        url = make_url(db_url)
        conn = await asyncpg.connect(
            host=url.host, port=url.port or 5432, user=url.username, database=url.database
        )
        listeners = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'"
        )
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND query LIKE 'LISTEN%'",
                url.database,
            )
            assert killed == 1
            for n in range(3):
                done = await asyncio.to_thread(run_cli, db_env, "add", f"k{n}", "--title", "K")
                assert done.returncode == 0
            events = [await next_event(ws, 5) for _ in range(3)]
            assert [e["report"]["name"] for e in events] == ["k0", "k1", "k2"]
            assert "change listener connection lost" in server.log()
            async with asyncio.timeout(5):  # and it listens again
                while await conn.fetchval(listeners, url.database) != 1:  # noqa: ASYNC110 - polling PostgreSQL
                    await asyncio.sleep(0.05)
        finally:
            await conn.close()
    finally:
        await ws.close()


async def test_a_clean_stop_does_not_report_a_lost_listener(
    make_server: Callable[..., Server], db_url: str
) -> None:
    """Stopping the server closes its listener on purpose: the log says nothing of a lost
    database connection, which an operator would go looking for."""
    if not db_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    server = make_server()
    ws = await subscriber(server)
    await ws.close()
    await asyncio.to_thread(server.stop)
    log = server.log_path.read_text(errors="replace")
    assert "listening for changes" in log and "Application shutdown complete" in log, log
    assert "connection lost" not in log, log
