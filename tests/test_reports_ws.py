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

from .clients import PUSH_WITHIN
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


async def test_answers_follow_commits_of_another_writer(
    conductor: ASGIConductor, seeded_repository: ReportRepository, db_url: str
) -> None:
    """Another process's commit is seen by the next query on SQLite (``PRAGMA data_version``);
    on PostgreSQL once its notification has arrived, well before the 5 s safety read."""
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text(TOKEN)

        async def answer_becomes(expected: dict[str, str]) -> None:
            within = 0.0 if db_url.startswith("sqlite") else PUSH_WITHIN
            deadline = asyncio.get_running_loop().time() + within
            while True:
                await ws.send_text("fresh")
                answer = await ws.receive_json()
                if answer == expected or asyncio.get_running_loop().time() >= deadline:
                    break
                await asyncio.sleep(0.01)
            assert answer == expected

        await answer_becomes({"error": "report not found"})
        await seeded_repository.add_reports([NewReport("fresh", "Fresh report", "new")])
        await answer_becomes({"report": "Fresh report"})
        await seeded_repository.add_reports([NewReport("fresh", "Changed", "x")], replace=True)
        await answer_becomes({"report": "Changed"})
        assert await seeded_repository.remove_report(name="fresh")
        await answer_becomes({"error": "report not found"})


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
