"""Expiry, refresh in band and revocation against a running server, on both backends.

A connection whose token expires is warned ``REPORTS_TOKEN_EXPIRY_WARNING`` seconds before,
then closed with 1008 ``token expired``, unless an ``auth`` request of the same subject
extended it; ``token revoke`` closes the connections it revokes within
``REPORTS_TOKEN_RECHECK``. Tokens here live a few seconds, so the tests wait that long.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from reports_service.records import utcnow
from reports_service.repository import ReportRepository

from .clients import call, connect, next_event, recv
from .conftest import TOKEN, WRITE_TOKEN
from .jwts import SECRET, claims, mint
from .server import Server, run_cli

WARNING = 2.0  # REPORTS_TOKEN_EXPIRY_WARNING
RECHECK = 0.2  # REPORTS_TOKEN_RECHECK
# NOTE: the watchdog looks twice a second; the bound leaves room for a busy machine.
CLOSE_WITHIN = 2.5
EXPIRED = (1008, "token expired")
REVOKED = (1008, "token revoked")
INVALID = (1008, "invalid token")

_serial = itertools.count(1)


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server(
        jwt_secret=SECRET,
        jwt_leeway="0",
        token_expiry_warning=str(WARNING),
        token_recheck=str(RECHECK),
    )


def jwt(sub: str, exp: float | None = None, **extra: Any) -> str:
    """An HS256 JWT of ``sub`` that reads everything, expiring at ``exp`` (default in 5 min)."""
    payload = claims(sub, **extra)
    if exp is not None:
        payload["exp"] = int(exp)
    return mint(SECRET, payload)


class Short:
    """Makes tokens of one kind ("jwt" or "token") that expire ``seconds`` from now."""

    def __init__(self, kind: str, repository: ReportRepository) -> None:
        self.kind = kind
        self._repository = repository

    async def __call__(self, subject: str, seconds: int) -> tuple[str, float]:
        """(token, its expiry as POSIX time)"""
        if self.kind == "jwt":
            exp = int(time.time()) + seconds
            return jwt(subject, exp), float(exp)
        expires_at = utcnow() + timedelta(seconds=seconds)
        token = f"short-token-{next(_serial)}-0123456789"
        await self._repository.create_token(name=subject, token=token, expires_at=expires_at)
        return token, expires_at.timestamp()


@pytest.fixture(params=["jwt", "token"])
def short(request: pytest.FixtureRequest, seeded_repository: ReportRepository) -> Short:
    return Short(request.param, seeded_repository)


async def closed(ws: ClientConnection, within: float) -> tuple[int, str]:
    """The code and reason of the close that comes next (failing if a message comes first)."""
    try:
        message = await asyncio.wait_for(ws.recv(), within)
    except ConnectionClosed as error:
        assert error.rcvd is not None, "closed without a close frame"
        return error.rcvd.code, error.rcvd.reason
    raise AssertionError(f"got {message!r} instead of a close")


async def login_refused(server: Server, token: str) -> tuple[int, str]:
    ws = await websockets.connect(server.url + "/reports")
    await ws.send(token)
    return await closed(ws, 5)


async def pong(ws: ClientConnection) -> bool:
    return bool((await call(ws, {"id": "p", "type": "ping"}))["result"]["pong"])


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


# -- expiry --------------------------------------------------------------------------------


async def test_an_expiring_token_is_warned_then_closed(server: Server, short: Short) -> None:
    token, expires = await short("brief", 4)
    async with await connect(server, token) as ws:
        await call(ws, {"id": 1, "type": "subscribe"})  # a subscriber is never idle: still closed
        warning = await recv(ws, within=expires - time.time())
        warned = time.time()
        assert set(warning) == {"type", "expires_at"} and warning["type"] == "token.expiring"
        assert at(warning["expires_at"]) == pytest.approx(expires, abs=0.001)
        assert expires - WARNING - 0.05 <= warned < expires
        assert await pong(ws)
        assert await closed(ws, within=expires + CLOSE_WITHIN - time.time()) == EXPIRED
        assert time.time() >= expires


async def test_an_expired_token_cannot_log_in(
    server: Server, seeded_repository: ReportRepository
) -> None:
    expires_at = utcnow() - timedelta(seconds=1)
    await seeded_repository.create_token(name="old", token="old-token-0123", expires_at=expires_at)
    assert await login_refused(server, "old-token-0123") == INVALID
    assert await login_refused(server, jwt("old", time.time() - 1)) == INVALID


# -- refresh -------------------------------------------------------------------------------


async def test_a_refresh_extends_the_connection(server: Server) -> None:
    old = int(time.time()) + 4
    async with await connect(server, jwt("alice", old)) as ws:
        assert at((await recv(ws, within=old - time.time()))["expires_at"]) == old
        new = old + 3
        reply = await call(ws, {"id": 1, "type": "auth", "token": jwt("alice", new)})
        assert reply["result"] == {
            "subject": "alice",
            "expires_at": reply["result"]["expires_at"],
            "read": True,
            "write": False,
            "reports": ["*"],
        }
        assert at(reply["result"]["expires_at"]) == new
        # NOTE: the next warning is due after the old expiry (new - WARNING > old).
        warning = await recv(ws, within=new - time.time())
        assert time.time() > old and at(warning["expires_at"]) == new
        assert await pong(ws)
        assert await closed(ws, within=new + CLOSE_WITHIN - time.time()) == EXPIRED
        assert time.time() >= new


async def test_a_refresh_to_a_sooner_expiry_is_warned_and_closed_by_it(
    make_server: Callable[..., Server],
) -> None:
    # NOTE: the watchdog walks every connection only every quarter of the send timeout (15 s
    #   here); a token that expires sooner than any before it is watched from its refresh on.
    server = make_server(
        jwt_secret=SECRET, jwt_leeway="0", token_expiry_warning=str(WARNING), send_timeout="60"
    )
    async with await connect(server, jwt("carol", time.time() + 300)) as ws:
        assert await pong(ws)
        await asyncio.sleep(1.0)  # NOTE: past the watchdog's first walk, which sees +300 s
        new = int(time.time()) + 4
        reply = await call(ws, {"id": 1, "type": "auth", "token": jwt("carol", new)})
        assert at(reply["result"]["expires_at"]) == new
        warning = await recv(ws, within=new - time.time())
        assert at(warning["expires_at"]) == new
        assert await closed(ws, within=new + CLOSE_WITHIN - time.time()) == EXPIRED


async def test_a_refresh_to_another_subject_is_forbidden(
    server: Server, short: Short, seeded_repository: ReportRepository
) -> None:
    token, expires = await short("carol", 4)
    # NOTE: another subject, another database token, and "carol" of the other kind.
    others = [jwt("mallory"), TOKEN]
    if short.kind == "jwt":
        await seeded_repository.create_token(name="carol", token="carol-token-0123")
        others.append("carol-token-0123")
    else:
        others.append(jwt("carol"))
    async with await connect(server, token) as ws:
        for rid, other in enumerate(others):
            reply = await call(ws, {"id": rid, "type": "auth", "token": other})
            assert reply["error"]["code"] == "forbidden", reply
        assert (await recv(ws, within=expires - time.time()))["type"] == "token.expiring"
        assert await closed(ws, within=expires + CLOSE_WITHIN - time.time()) == EXPIRED
        assert time.time() >= expires


async def test_a_refresh_with_a_bad_token_keeps_the_connection(server: Server) -> None:
    expired = jwt("alice", time.time() - 1)
    wrong_key = mint("x" * 40, claims("alice"))
    for token in (TOKEN, jwt("alice")):
        async with await connect(server, token) as ws:
            for rid, bad in enumerate(["garbage", "a.b.c", expired, wrong_key]):
                reply = await call(ws, {"id": rid, "type": "auth", "token": bad})
                assert reply["error"]["code"] == "invalid_token", reply
            assert await pong(ws)
            assert (await call(ws, {"id": 9, "type": "get", "name": "report1"}))["result"]


async def test_a_refresh_narrows_a_live_subscription(server: Server) -> None:
    async with (
        await connect(server, jwt("dave")) as ws,
        await connect(server, WRITE_TOKEN) as writer,
    ):
        await call(ws, {"id": 1, "type": "subscribe"})
        narrower = jwt("dave", reports=["a*"])
        assert (await call(ws, {"id": 2, "type": "auth", "token": narrower}))["result"][
            "reports"
        ] == ["a*"]
        for name in ("b1", "a1"):
            await call(writer, {"id": name, "type": "put", "name": name, "title": name})
        event = await next_event(ws)
        assert (event["type"], event["report"]["name"]) == ("report.added", "a1")
        assert (await call(ws, {"id": 3, "type": "get", "name": "b1"}))["error"][
            "code"
        ] == "not_found"


# -- revocation ----------------------------------------------------------------------------


async def test_revoking_a_subject_closes_its_connections(
    server: Server, db_env: dict[str, str]
) -> None:
    before = jwt("eve")
    async with (
        await connect(server, before) as eve,
        await connect(server, jwt("frank")) as frank,
    ):
        done = await asyncio.to_thread(run_cli, db_env, "token", "revoke", "--subject", "eve")
        assert done.returncode == 0, done.stderr
        assert await closed(eve, within=RECHECK + CLOSE_WITHIN) == REVOKED
        assert await login_refused(server, before) == INVALID
        found = re.search(r"issued before (\S+)$", done.stdout.strip())
        assert found is not None, done.stdout
        revoked_at = at(found.group(1))
        await until(revoked_at)  # NOTE: an `iat` in the future is refused (leeway 0)
        after = jwt("eve", iat=int(time.time()))
        async with await connect(server, after) as again:
            await asyncio.sleep(3 * RECHECK)  # a few checks for revoked subjects
            assert await pong(again)
        assert await pong(frank)


async def test_revoking_a_database_token_closes_its_connections(
    server: Server, db_env: dict[str, str]
) -> None:
    async with await connect(server, TOKEN) as ws, await connect(server, WRITE_TOKEN) as other:
        done = await asyncio.to_thread(run_cli, db_env, "token", "revoke", "test")
        assert done.returncode == 0, done.stderr
        assert await closed(ws, within=RECHECK + CLOSE_WITHIN) == REVOKED
        assert await login_refused(server, TOKEN) == INVALID
        assert await pong(other)


async def test_a_connection_authenticated_at_the_handshake_expires_and_refreshes(
    server: Server,
) -> None:
    old = int(time.time()) + 3
    bearer = {"Authorization": f"Bearer {jwt('gina', old)}"}
    async with (
        websockets.connect(server.url + "/reports", additional_headers=bearer) as kept,
        websockets.connect(server.url + "/reports", additional_headers=bearer) as left,
    ):
        reply = await call(kept, {"id": 1, "type": "auth", "token": jwt("gina")})
        assert reply["result"]["subject"] == "gina"
        assert (await recv(left, within=old - time.time()))["type"] == "token.expiring"
        assert await closed(left, within=old + CLOSE_WITHIN - time.time()) == EXPIRED
        assert time.time() >= old
        await until(old + 1)  # NOTE: watchdog ticks after the old expiry
        assert await pong(kept)
