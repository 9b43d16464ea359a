from __future__ import annotations

import asyncio
import logging

import falcon.testing
import msgpack
import pytest
from falcon.testing import ASGIConductor

from reports_service.app import create_app
from reports_service.config import Settings
from reports_service.records import NewReport
from reports_service.repository import ReportRepository

from .conftest import TOKEN


async def test_query_by_name(conductor: ASGIConductor) -> None:
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text(TOKEN)
        for n in range(1, 5):
            await ws.send_text(f"report{n}")
            assert await ws.receive_json() == {"report": f"Report {n}"}


async def test_unknown_report_keeps_connection(conductor: ASGIConductor) -> None:
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text(TOKEN)
        await ws.send_text("report9")
        assert await ws.receive_json() == {"error": "report not found"}
        await ws.send_text("report1")
        assert await ws.receive_json() == {"report": "Report 1"}


async def test_binary_query_gets_msgpack(conductor: ASGIConductor) -> None:
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_data(msgpack.packb(TOKEN))
        await ws.send_data(msgpack.packb("report2"))
        assert msgpack.unpackb(await ws.receive_data()) == {"report": "Report 2"}
        await ws.send_data(msgpack.packb(42))
        assert msgpack.unpackb(await ws.receive_data()) == {
            "error": "a binary query must be a MessagePack string"
        }
        await ws.send_text("report3")
        assert await ws.receive_json() == {"report": "Report 3"}


async def test_wrong_token_closes_1008(conductor: ASGIConductor) -> None:
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text("not the token")
        with pytest.raises(falcon.WebSocketDisconnected):
            await ws.receive_text()
        assert ws.close_code == 1008


async def test_revoked_token_closes_1008(
    conductor: ASGIConductor, seeded_repository: ReportRepository
) -> None:
    assert await seeded_repository.revoke_token(name="test")
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text(TOKEN)
        with pytest.raises(falcon.WebSocketDisconnected):
            await ws.receive_text()
        assert ws.close_code == 1008


async def test_no_token_in_time_closes_1008(
    settings: Settings, seeded_repository: ReportRepository
) -> None:
    app = create_app(Settings(database_url=settings.database_url, auth_timeout=0.2))
    async with ASGIConductor(app) as conductor, conductor.simulate_ws("/reports") as ws:
        started = asyncio.get_running_loop().time()
        with pytest.raises(falcon.WebSocketDisconnected):
            await ws.receive_text()
        assert ws.close_code == 1008
        assert asyncio.get_running_loop().time() - started < 2


async def test_echo_needs_no_token(conductor: ASGIConductor) -> None:
    async with conductor.simulate_ws("/echo") as ws:
        await ws.send_text(TOKEN)
        assert (await ws.receive_json())["message"] == TOKEN


async def test_path_without_route_is_never_accepted(conductor: ASGIConductor) -> None:
    with pytest.raises(falcon.WebSocketPathNotFound):
        async with conductor.simulate_ws("/reportsX"):
            pass


async def test_reads_the_database_every_time(
    conductor: ASGIConductor, seeded_repository: ReportRepository
) -> None:
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text(TOKEN)
        await ws.send_text("fresh")
        assert await ws.receive_json() == {"error": "report not found"}
        await seeded_repository.add_reports([NewReport("fresh", "Fresh report", "new")])
        await ws.send_text("fresh")
        assert await ws.receive_json() == {"report": "Fresh report"}
        await seeded_repository.add_reports([NewReport("fresh", "Changed", "x")], replace=True)
        await ws.send_text("fresh")
        assert await ws.receive_json() == {"report": "Changed"}
        assert await seeded_repository.remove_report(name="fresh")
        await ws.send_text("fresh")
        assert await ws.receive_json() == {"error": "report not found"}


async def test_connections_logged_without_tokens(
    conductor: ASGIConductor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text(TOKEN)
        await ws.send_text("report1")
        await ws.receive_json()
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text("wrong-" + TOKEN)
        with pytest.raises(falcon.WebSocketDisconnected):
            await ws.receive_text()
    async with conductor.simulate_ws("/echo") as ws:
        await ws.send_text("x")
        await ws.receive_json()
    messages = [r.getMessage() for r in caplog.records]
    opened = [m for m in messages if "websocket connection on" in m]
    assert sum("/reports" in m for m in opened) == 2
    assert sum("/echo" in m for m in opened) == 1
    assert not any(TOKEN in m for m in messages)
