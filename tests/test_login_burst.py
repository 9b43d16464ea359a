"""Logins in bursts on a running server with a small pool: none refused while the database is
healthy, and the tokens kept in memory stay correct (revoked, expired, new)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from reports_service.records import utcnow
from reports_service.repository import ReportRepository

from .clients import call, connect
from .conftest import TOKEN
from .server import Server
from .waiting import eventually

BURST = 500
WAIT = 30.0  # seconds one login of the burst may wait, on a loaded 2-core machine


async def login(server: Server, token: str, *, header: bool) -> None:
    """One /reports login that must succeed, by the Authorization header or the first message."""
    if not header:
        ws = await connect(server, token, open_timeout=WAIT)
    else:
        bearer = {"Authorization": f"Bearer {token}"}
        ws = await websockets.connect(
            server.url + "/reports", additional_headers=bearer, open_timeout=WAIT
        )
        assert (await call(ws, {"id": 1, "type": "ping"}, WAIT))["result"]["pong"] is True
    await ws.close()


async def refused(server: Server, token: str) -> bool:
    """Whether a login with ``token`` is refused as invalid (1008)."""
    async with websockets.connect(server.url + "/reports") as ws:
        await ws.send(token)
        try:
            await call(ws, {"id": 1, "type": "ping"})
        except ConnectionClosed as closed:
            return closed.rcvd is not None and closed.rcvd.code == 1008
    return False


async def test_a_burst_of_logins_on_a_small_pool_is_all_admitted(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(
        pool_size="2",
        pool_timeout="0.5",
        max_connections_per_token="1000",
        max_pending="2000",
        max_pending_per_address="2000",
    )
    await asyncio.gather(*(login(server, TOKEN, header=n % 2 == 0) for n in range(BURST)))
    log = server.log()
    assert "QueuePool" not in log
    assert "login not checked" not in log
    assert "service unavailable" not in log


async def test_a_revoked_token_is_refused_within_the_recheck_interval(
    make_server: Callable[..., Server], seeded_repository: ReportRepository
) -> None:
    server = make_server(token_recheck="1")
    await login(server, TOKEN, header=False)  # now known to the server
    await seeded_repository.revoke_token(name="test")
    await eventually(lambda: refused(server, TOKEN), within=5)
    with pytest.raises(InvalidStatus) as denied:
        await login(server, TOKEN, header=True)
    assert denied.value.response.status_code == 401


async def test_an_expired_token_is_never_admitted(
    make_server: Callable[..., Server], seeded_repository: ReportRepository
) -> None:
    server = make_server(token_recheck="60")  # NOTE: kept far longer than the token lives
    expires = utcnow() + timedelta(seconds=2)
    await seeded_repository.create_token(name="brief", token="brief-0123456789", expires_at=expires)
    await login(server, "brief-0123456789", header=False)
    await eventually(lambda: utcnow() > expires, within=5)
    assert await refused(server, "brief-0123456789")


async def test_a_new_token_works_at_once_after_it_was_refused(
    make_server: Callable[..., Server], seeded_repository: ReportRepository
) -> None:
    server = make_server(token_recheck="60")
    assert await refused(server, "later-0123456789")
    await seeded_repository.create_token(name="later", token="later-0123456789")
    await login(server, "later-0123456789", header=True)
