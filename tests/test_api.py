"""The HTTP API end to end: `reports-service serve` on a free port, real httpx clients, on both
backends. One server per backend serves the module (each test uses names of its own); only
the per-token rate limit needs a server of its own."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from reports_service.records import MAX_TITLE_LENGTH
from reports_service.repository import ReportRepository

from .api_client import (
    AUTH_FAILURES,
    LIMIT,
    ORIGIN,
    Api,
    api_env,
    assert_problem,
    etag,
    path,
    seed,
)
from .clients import call, connect
from .conftest import TOKEN, WRITE_TOKEN
from .databases import PostgresTemplate, SQLiteTemplate, backends
from .jwts import SECRET, claims, ec_key, mint
from .server import Server

pytestmark = pytest.mark.e2e
JSON = {"Content-Type": "application/json"}
_serial = itertools.count(1)


@pytest.fixture(scope="module", params=backends())
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One server per backend for the module, on a database seeded as conftest's."""
    directory = tmp_path_factory.mktemp("api")
    template: PostgresTemplate | None = None
    if request.param == "sqlite":
        sqlite: SQLiteTemplate = request.getfixturevalue("sqlite_template")
        url = sqlite.new_database(directory)
    else:
        template = request.getfixturevalue("postgres_template")
        url = template.new_database()
    seed(url)
    env = api_env(url, directory)
    server = Server(env)
    yield Api(server, env)
    server.stop()
    if template is not None:
        template.drop(url)


@pytest.fixture
async def repo(api: Api) -> AsyncIterator[ReportRepository]:
    """The API's database, read and written directly."""
    repository = api.repository()
    yield repository
    await repository.dispose()


async def make_token(
    repo: ReportRepository, patterns: tuple[str, ...] = ("*",), *, write: bool = False
) -> str:
    n = next(_serial)
    token = f"api-token-{n}-0123456789"
    await repo.create_token(name=f"api-{n}", token=token, can_write=write, reports=patterns)
    return token


def elsewhere() -> str:
    """A loopback address of its own (all of 127/8 is loopback): failed logins from it
    throttle no other test."""
    return f"127.0.1.{next(_serial)}"


def report(title: str, content: str = "") -> dict[str, str]:
    return {"title": title, "content": content}


# -- reading and writing -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["crud", "team/q1/sales", "with space/ünïcödé ✓ 100%"])
async def test_put_get_delete_round_trip(api: Api, repo: ReportRepository, name: str) -> None:
    async with api.client(WRITE_TOKEN) as client:
        created = await client.put(path(name), json=report("One", "first"))
        assert created.status_code == 201
        assert created.headers["content-type"] == "application/json"
        assert created.json()["name"] == name and created.json()["content"] == "first"
        first = etag(created)
        got = await client.get(path(name))
        assert got.status_code == 200 and got.json() == created.json() and etag(got) == first
        not_modified = await client.get(path(name), headers={"If-None-Match": first})
        assert not_modified.status_code == 304 and not_modified.content == b""
        assert not_modified.headers["etag"] == first

        replaced = await client.put(path(name), json=report("Two", "second"))
        assert replaced.status_code == 200 and replaced.json()["title"] == "Two"
        second = etag(replaced)
        assert second != first
        stale = await client.get(path(name), headers={"If-None-Match": first})
        assert stale.status_code == 200 and stale.json()["content"] == "second"
        assert (await client.get(path(name), headers={"If-None-Match": second})).status_code == 304
        stored = await repo.get_report(name=name)
        assert stored is not None and (stored.title, stored.version) == ("Two", int(second[1:-1]))

        removed = await client.delete(path(name))
        assert removed.status_code == 204 and removed.content == b""
        assert_problem(await client.get(path(name)), 404, "not_found")
        assert_problem(await client.delete(path(name)), 404, "not_found")
    assert await repo.get_report(name=name) is None


async def test_if_match_and_if_none_match(api: Api, repo: ReportRepository) -> None:
    name = "conditional"
    async with api.client(WRITE_TOKEN) as client:
        only = await client.put(path(name), json=report("A"), headers={"If-None-Match": "*"})
        assert only.status_code == 201
        first = etag(only)
        again = await client.put(path(name), json=report("B"), headers={"If-None-Match": "*"})
        assert_problem(again, 412, "conflict")
        moved = await client.put(path(name), json=report("C"), headers={"If-Match": first})
        assert moved.status_code == 200
        assert_problem(
            await client.put(path(name), json=report("D"), headers={"If-Match": first}),
            412,
            "conflict",
        )
        for malformed in ("12", '"1", "2"', "*", '"' + "9" * 5000 + '"'):
            headers = {"If-Match": malformed}
            put = await client.put(path(name), json=report("E"), headers=headers)
            assert_problem(put, 400, "invalid_request")
            assert_problem(await client.delete(path(name), headers=headers), 400, "invalid_request")
        stale_delete = await client.delete(path(name), headers={"If-Match": first})
        assert_problem(stale_delete, 412, "conflict")
        stored = await repo.get_report(name=name)
        assert stored is not None and stored.title == "C"
        assert f'"{stored.version}"' == etag(moved)

        deleted = await client.delete(path(name), headers={"If-Match": etag(moved)})
        assert deleted.status_code == 204
    assert await repo.get_report(name=name) is None


async def test_if_match_race_has_one_winner(api: Api, repo: ReportRepository) -> None:
    name = "race/if-match"
    async with api.client(WRITE_TOKEN) as client:
        tag = etag(await client.put(path(name), json=report("start")))
    before = int(tag[1:-1])
    clients = [api.client(WRITE_TOKEN) for _ in range(8)]
    try:
        answers = await asyncio.gather(
            *(
                c.put(path(name), json=report(f"writer {n}"), headers={"If-Match": tag})
                for n, c in enumerate(clients)
            )
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [412] * 7, statuses
    winner = next(a for a in answers if a.status_code == 200)
    for loser in (a for a in answers if a.status_code == 412):
        assert_problem(loser, 412, "conflict")
    stored = await repo.get_report(name=name)
    assert stored is not None and stored.title == winner.json()["title"]
    changes = await repo.changes_since(before, limit=100, names=[name])
    assert [(c.op, c.report.title) for c in changes] == [("updated", winner.json()["title"])]


async def test_create_only_race_has_one_winner(api: Api, repo: ReportRepository) -> None:
    name = "race/create-only"
    clients = [api.client(WRITE_TOKEN) for _ in range(8)]
    try:
        answers = await asyncio.gather(
            *(
                c.put(path(name), json=report(f"creator {n}"), headers={"If-None-Match": "*"})
                for n, c in enumerate(clients)
            )
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    assert sorted(a.status_code for a in answers) == [201] + [412] * 7
    winner = next(a for a in answers if a.status_code == 201)
    stored = await repo.get_report(name=name)
    assert stored is not None and stored.title == winner.json()["title"]
    assert [c.op for c in await repo.changes_since(0, limit=100, names=[name])] == ["added"]


# -- bodies ----------------------------------------------------------------------------------


def body_of(size: int) -> bytes:
    """A valid report body of exactly ``size`` bytes."""
    empty = json.dumps(report("limit", "")).encode()
    return json.dumps(report("limit", "x" * (size - len(empty)))).encode()


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1000):
        yield data[start : start + 1000]


async def test_body_at_the_limit_is_taken_one_byte_over_is_413(
    api: Api, repo: ReportRepository
) -> None:
    assert len(body_of(LIMIT)) == LIMIT
    async with api.client(WRITE_TOKEN, headers=JSON) as client:
        assert (await client.put(path("big/exact"), content=body_of(LIMIT))).status_code == 201
        over = await client.put(path("big/over"), content=body_of(LIMIT + 1))
        assert str(LIMIT) in assert_problem(over, 413, "invalid_request")["detail"]
        # NOTE: no Content-Length: the server must count what it reads
        chunked = await client.put(path("big/chunked"), content=chunks(body_of(LIMIT + 1)))
        assert_problem(chunked, 413, "invalid_request")
        exact = await client.put(path("big/chunked"), content=chunks(body_of(LIMIT)))
        assert exact.status_code == 201
    stored = await repo.get_report(name="big/exact")
    assert stored is not None and len(stored.content) == LIMIT - len(body_of(0))
    assert await repo.get_report(name="big/over") is None


@pytest.mark.parametrize(
    ("headers", "content", "status", "detail"),
    [
        ({"Content-Type": "text/plain"}, b'{"title": "t"}', 415, "application/json"),
        ({}, b'{"title": "t"}', 415, "application/json"),
        ({"Content-Type": "Application/JSON"}, b'{"title"', 400, "not valid JSON"),
        (JSON, b'{"title": "t"', 400, "not valid JSON"),
        (JSON, b"[" * 4000, 400, "object"),
        (JSON, b'{"title": "t", "owner": "me"}', 400, "owner"),
        (JSON, b'{"content": "no title"}', 400, "title"),
        (JSON, b'{"title": 5}', 400, "title"),
        (JSON, json.dumps(report("t" * (MAX_TITLE_LENGTH + 1))).encode(), 400, "title"),
    ],
)
async def test_bad_bodies_are_refused_and_change_nothing(
    api: Api,
    repo: ReportRepository,
    headers: dict[str, str],
    content: bytes,
    status: int,
    detail: str,
) -> None:
    async with api.client(WRITE_TOKEN) as client:
        answer = await client.put(path("refused"), content=content, headers=headers)
    body = assert_problem(answer, status, "invalid_request")
    assert detail in body["detail"]
    assert await repo.get_report(name="refused") is None


# -- who may do what -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        (None, "Bearer"),
        ("Basic dXNlcjpwYXNz", "Bearer"),
        ("Bearer", "Bearer"),
        ("Bearer not-a-token-0123456789", 'Bearer error="invalid_token"'),
    ],
)
async def test_missing_or_bad_token_is_401(
    api: Api, authorization: str | None, challenge: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with api.client(None, headers=headers, local_address=elsewhere()) as client:
        for answer in (
            await client.get(path("report1")),
            await client.get("/api/reports"),
            await client.put(path("report1"), json=report("x")),
        ):
            assert_problem(answer, 401, "invalid_token")
            assert answer.headers["www-authenticate"] == challenge


async def test_writes_need_permission_and_patterns(api: Api, repo: ReportRepository) -> None:
    sales = await make_token(repo, ("sales/*",), write=True)
    async with api.client(TOKEN) as reader:
        assert_problem(await reader.put(path("report1"), json=report("x")), 403, "forbidden")
        assert_problem(await reader.delete(path("report1")), 403, "forbidden")
    async with api.client(sales) as client:
        assert (await client.put(path("sales/q1"), json=report("Q1"))).status_code == 201
        assert_problem(await client.put(path("report1"), json=report("x")), 403, "forbidden")
        assert_problem(await client.put(path("hr/new"), json=report("x")), 403, "forbidden")
        assert_problem(await client.delete(path("report1")), 403, "forbidden")
    stored = await repo.get_report(name="report1")
    assert stored is not None and stored.title == "Report 1"
    assert await repo.get_report(name="hr/new") is None


async def test_reports_outside_the_patterns_are_not_found(api: Api, repo: ReportRepository) -> None:
    token = await make_token(repo, ("seen/*",))
    async with api.client(WRITE_TOKEN) as writer:
        for name in ("seen/a", "hidden/a"):
            assert (await writer.put(path(name), json=report("secret " + name))).status_code == 201
    async with api.client(token) as client:
        assert (await client.get(path("seen/a"))).json()["title"] == "secret seen/a"
        hidden = assert_problem(await client.get(path("hidden/a")), 404, "not_found")
        missing = assert_problem(await client.get(path("hidden/b")), 404, "not_found")
        assert hidden["detail"] == missing["detail"].replace("hidden/b", "hidden/a")
        listed = (await client.get("/api/reports", params={"limit": 100})).json()
        assert [r["name"] for r in listed["reports"]] == ["seen/a"]
        found = (await client.get("/api/reports", params={"q": "secret"})).json()
        assert [r["name"] for r in found["reports"]] == ["seen/a"]


async def test_a_jwt_is_a_bearer_token_and_an_expired_one_is_401(
    api: Api, repo: ReportRepository
) -> None:
    writer = mint(SECRET, claims("jwt-writer", scope="reports:read reports:write"))
    expired = mint(SECRET, claims("jwt-late", scope="reports:read reports:write", lifetime=-60))
    async with api.client(writer) as client:
        assert (await client.get(path("report2"))).json()["title"] == "Report 2"
        assert (await client.put(path("jwt/made"), json=report("by jwt"))).status_code == 201
    async with api.client(expired, local_address=elsewhere()) as client:
        refused = await client.put(path("jwt/late"), json=report("late"))
        assert_problem(refused, 401, "invalid_token")
        assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert await repo.get_report(name="jwt/made") is not None
    assert await repo.get_report(name="jwt/late") is None


async def test_a_token_that_cannot_be_checked_is_503_and_no_failed_login(api: Api) -> None:
    unverifiable = mint(ec_key(), claims("jwks-user"), kid="ec-1")
    async with api.client(unverifiable, local_address=elsewhere()) as client:
        for _ in range(AUTH_FAILURES + 1):
            answer = await client.get(path("report1"))
            assert_problem(answer, 503, "unavailable")
            assert answer.headers["retry-after"] == "5"
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        assert (await client.get(path("report1"))).json()["title"] == "Report 1"


async def test_failed_logins_from_one_address_are_throttled(api: Api) -> None:
    address = elsewhere()
    async with api.client("wrong-token-0123456789", local_address=address) as client:
        for _ in range(AUTH_FAILURES):
            assert_problem(await client.get(path("report1")), 401, "invalid_token")
        throttled = await client.get(path("report1"))
        body = assert_problem(throttled, 429, "rate_limited")
        assert int(throttled.headers["retry-after"]) >= 1
        assert body["retry_after"] == int(throttled.headers["retry-after"])
    async with api.client(TOKEN, local_address=address) as client:
        assert_problem(await client.get(path("report1")), 429, "rate_limited")
    with pytest.raises(InvalidStatus) as refused:  # the same throttle as the WebSocket's
        async with websockets.connect(
            api.server.url + "/reports",
            additional_headers={"Authorization": f"Bearer {TOKEN}"},
            local_addr=(address, 0),
        ):
            pass
    assert refused.value.response.status_code == 429
    async with api.client(TOKEN) as client:
        assert (await client.get(path("report1"))).status_code == 200


async def test_rate_limit_per_token(api: Api, repo: ReportRepository) -> None:
    other = await make_token(repo)
    env = {**api.env, "REPORTS_RATE_LIMIT": "0.01", "REPORTS_RATE_BURST": "2"}
    server = Server(env)
    try:
        limited = Api(server, env, api.secrets)
        async with limited.client(TOKEN) as client:
            for _ in range(2):
                assert (await client.get(path("report1"))).status_code == 200
            refused = await client.get(path("report1"))
            body = assert_problem(refused, 429, "rate_limited")
            assert int(refused.headers["retry-after"]) >= 1
            assert body["retry_after"] == int(refused.headers["retry-after"])
            assert "www-authenticate" not in refused.headers
        async with limited.client(other) as client:
            assert (await client.get(path("report1"))).status_code == 200
        log = server.log()
    finally:
        server.stop()
    assert "Traceback" not in log
    assert TOKEN not in log and other not in log


# -- lists -----------------------------------------------------------------------------------


async def http_pages(client: httpx.AsyncClient, **params: Any) -> list[list[dict[str, Any]]]:
    found: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        answer = await client.get("/api/reports", params=query)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        found.append(page["reports"])
        cursor = page["next"]
        if cursor is None:
            return found


async def ws_pages(api: Api, token: str, **request: Any) -> list[list[dict[str, Any]]]:
    found: list[list[dict[str, Any]]] = []
    async with await connect(api.server, token) as ws:
        cursor = None
        while True:
            page = (await call(ws, {**request, "id": len(found), "cursor": cursor}))["result"]
            found.append(page["reports"])
            cursor = page["next"]
            if cursor is None:
                return found


async def test_paging_is_the_websocket_list(api: Api, repo: ReportRepository) -> None:
    token = await make_token(repo, ("page/*",))
    async with api.client(WRITE_TOKEN) as writer:
        for n in range(7):
            content = "Needle" if n % 2 else "hay"
            answer = await writer.put(path(f"page/{n}"), json=report(f"p{n}", content))
            assert answer.status_code == 201
        await writer.put(path("other/needle"), json=report("needle", "needle"))
    async with api.client(token) as client:
        listed = await http_pages(client, limit=3)
        assert [[r["name"] for r in page] for page in listed] == [
            ["page/6", "page/5", "page/4"],
            ["page/3", "page/2", "page/1"],
            ["page/0"],
        ]
        assert listed == await ws_pages(api, token, type="list", limit=3)
        found = await http_pages(client, q="needle", limit=2)
        assert [[r["name"] for r in page] for page in found] == [["page/5", "page/3"], ["page/1"]]
        assert found == await ws_pages(api, token, type="search", q="needle", limit=2)
        default = (await client.get("/api/reports")).json()
        assert len(default["reports"]) == 7 and default["next"] is None


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("cursor=nonsense", "bad_cursor"),
        ("cursor=" + "9" * 5000, "bad_cursor"),
        ("limit=0", "invalid_request"),
        ("limit=101", "invalid_request"),
        ("limit=ten", "invalid_request"),
        ("q=", "invalid_request"),
        ("sort=name", "invalid_request"),
        ("limit=1&limit=2", "invalid_request"),
    ],
)
async def test_bad_list_parameters_are_400(api: Api, query: str, code: str) -> None:
    async with api.client(TOKEN) as client:
        assert_problem(await client.get("/api/reports?" + query), 400, code)


# -- browsers ----------------------------------------------------------------------------------


async def test_cors_for_allowed_origins_only(api: Api) -> None:
    own = api.server.http
    async with api.client(TOKEN) as client:
        for origin in (ORIGIN, own):
            answer = await client.get(path("report1"), headers={"Origin": origin})
            assert answer.status_code == 200
            assert answer.headers["access-control-allow-origin"] == origin
            assert "ETag" in answer.headers["access-control-expose-headers"]
            assert "Origin" in answer.headers["vary"]
        refused = await client.get(path("missing"), headers={"Origin": ORIGIN})
        assert refused.headers["access-control-allow-origin"] == ORIGIN  # errors readable too
        foreign = await client.get(path("report1"), headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in foreign.headers
        assert "access-control-expose-headers" not in foreign.headers
        assert "Origin" in foreign.headers["vary"]
        plain = await client.get(path("report1"))
        assert "access-control-allow-origin" not in plain.headers

    preflight = {
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "if-match",
    }
    async with api.client(None) as browser:  # NOTE: a preflight never carries credentials
        allowed = await browser.options(path("report1"), headers={"Origin": ORIGIN, **preflight})
        assert allowed.status_code in (200, 204)
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "PUT" in allowed.headers["access-control-allow-methods"]
        assert "If-Match" in allowed.headers["access-control-allow-headers"]
        assert "Authorization" in allowed.headers["access-control-allow-headers"]
        assert int(allowed.headers["access-control-max-age"]) > 0
        listing = await browser.options("/api/reports", headers={"Origin": ORIGIN, **preflight})
        assert listing.headers["access-control-allow-origin"] == ORIGIN
        evil = {"Origin": "https://evil.example", **preflight}
        denied = await browser.options(path("report1"), headers=evil)
        assert "access-control-allow-origin" not in denied.headers
        assert "access-control-allow-methods" not in denied.headers


# -- operations ----------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, str], float]:
    found = re.findall(
        r'^reports_http_requests_total\{route="([^"]*)",status="(\d+)"\} (\S+)$', text, re.M
    )
    return {(route, status): float(value) for route, status, value in found}


async def test_metrics_count_requests_by_route_template_and_status(api: Api) -> None:
    async with api.client(TOKEN) as client:
        before = samples((await client.get("/metrics")).text)
        await client.get(path("metrics/a"))
        await client.get(path("metrics/b"))
        await client.get("/api/reports")
        after = samples((await client.get("/metrics")).text)
    template = "/api/reports/{name:path}"
    assert after[(template, "404")] - before.get((template, "404"), 0) == 2
    assert after[("/api/reports", "200")] - before.get(("/api/reports", "200"), 0) == 1
    assert not any("metrics/a" in route for route, _ in after)


async def test_the_log_has_no_token_and_no_traceback(api: Api, repo: ReportRepository) -> None:
    secret = await make_token(repo)
    async with (
        api.client(None) as client,
        client.stream("GET", "/api/changes", params={"access_token": secret}) as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
    async with api.client(None, local_address=elsewhere()) as client:
        refused = await client.get("/api/changes", params={"access_token": "leaked-0123456789"})
        assert_problem(refused, 401, "invalid_token")
    api.secrets.update({secret, "leaked-0123456789"})
    log = api.server.log()
    assert "/api/changes" in log
    assert "Traceback" not in log
    assert [s for s in api.secrets if s in log] == []


async def test_a_server_stopped_with_a_stream_open_ends_the_stream(api: Api) -> None:
    """SIGTERM ends an open event stream (its EventSource reconnects elsewhere with
    Last-Event-ID) instead of holding the shutdown for the whole grace time and then being
    cancelled with a traceback."""
    server = Server({**api.env, "REPORTS_SHUTDOWN_GRACE": "60"})
    try:
        async with (
            Api(server, api.env).client(TOKEN) as client,
            client.stream("GET", "/api/changes") as stream,
        ):
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert await anext(lines) == "retry: 2000"
            server.process.terminate()
            # NOTE: the stream ends (the iterator runs out) well before the 60 s grace
            rest = [line async for line in lines]
            assert all(not line.startswith("event:") for line in rest)
        # NOTE: uvicorn raises the signal again once it has stopped: killed by SIGTERM
        assert await asyncio.to_thread(server.process.wait, 30) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "server stopping" in log
    assert "Finished server process" in log
    assert "Traceback" not in log
