"""GET /api/changes end to end: `reports-service serve` on each backend, httpx and raw sockets.

One server per backend serves every test here (each test has its own tokens and report names).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from reports_service.config import Settings
from reports_service.repository import repository_for

from .databases import PostgresTemplate, SQLiteTemplate, backends
from .server import Server, run_cli
from .waiting import eventually

pytestmark = pytest.mark.e2e

WRITER = "sse-writer-token-0123456789"
RETENTION = 10
QUEUE = 16
# NOTE: each test reads with its own token: a stream a test closed is released only at the
#   next keep-alive, and REPORTS_MAX_CONNECTIONS_PER_TOKEN is 2.
TOKENS = {
    "seed": ["*"],
    "resume": ["*"],
    "resync": ["*"],
    "limited": ["pub-*"],
    "names": ["*"],
    "idle": ["*"],
    "slow": ["*"],
    "normal": ["*"],
    "capped": ["*"],
    "doomed": ["*"],
    "errors": ["*"],
}


def token(name: str) -> str:
    return f"sse-{name}-token-0123456789"


@dataclass
class Live:
    server: Server
    env: dict[str, str]


@pytest.fixture(scope="module", params=backends())
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """A server on a fresh database of one backend, with the tokens above; its log is checked
    for errors at the end."""
    directory = tmp_path_factory.mktemp("sse")
    postgres: PostgresTemplate | None = None
    if request.param == "sqlite":
        sqlite: SQLiteTemplate = request.getfixturevalue("sqlite_template")
        url = sqlite.new_database(directory)
    else:
        postgres = request.getfixturevalue("postgres_template")
        url = postgres.new_database()
    asyncio.run(_create_tokens(url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPORTS_")}
    env["REPORTS_DATABASE_URL"] = url
    server = Server(
        {
            **env,
            "TMPDIR": str(directory),
            "REPORTS_LOG_LEVEL": "DEBUG",
            "REPORTS_SSE_KEEPALIVE": "0.5",
            "REPORTS_CHANGELOG_RETENTION": str(RETENTION),
            "REPORTS_SUBSCRIBER_QUEUE": str(QUEUE),
            "REPORTS_SEND_TIMEOUT": "30",  # NOTE: the queue drops a slow reader first
            "REPORTS_MAX_CONNECTIONS_PER_TOKEN": "2",
            "REPORTS_MAX_MESSAGE_BYTES": str(1_100_000),
            "REPORTS_RATE_LIMIT": "0",
        }
    )
    try:
        yield Live(server, env)
    finally:
        server.stop()
        if postgres is not None:
            postgres.drop(url)
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log
    assert not [line for line in log.splitlines() if "ERROR" in line], log


async def _create_tokens(url: str) -> None:
    repo = repository_for(Settings(database_url=url))
    try:
        await repo.create_token(name="sse-writer", token=WRITER, can_write=True)
        for name, patterns in TOKENS.items():
            await repo.create_token(name=name, token=token(name), reports=patterns)
    finally:
        await repo.dispose()


# -- a small SSE client ------------------------------------------------------------------------


@dataclass
class Event:
    """One event of the stream, or a comment (``comment`` set, the rest empty)."""

    event: str = "message"
    id: str | None = None
    data: str = ""
    retry: int | None = None
    comment: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


class Stream:
    """The events of a streaming ``text/event-stream`` response, as an EventSource parses them."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def _parse(self) -> AsyncIterator[Event]:
        fields: dict[str, str] = {}
        async for line in self._lines:
            if line == "":
                if fields:
                    retry = fields.get("retry")
                    yield Event(
                        fields.get("event", "message"),
                        fields.get("id"),
                        fields.get("data", ""),
                        int(retry) if retry is not None else None,
                    )
                fields = {}
            elif line.startswith(":"):
                yield Event(event="", comment=line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data" and "data" in fields:
                    value = fields["data"] + "\n" + value
                fields[name] = value

    async def next(self, within: float = 10.0) -> Event:
        """The next event or comment."""
        if not hasattr(self, "_events"):
            self._events = self._parse()
        async with asyncio.timeout(within):
            return await anext(self._events)

    async def change(self, within: float = 10.0) -> Event:
        """The next event that is not a comment nor the opening ``retry``."""
        async with asyncio.timeout(within):
            while True:
                found = await self.next(within)
                if found.comment is None and found.data:
                    return found

    async def changes(self, count: int) -> list[Event]:
        return [await self.change() for _ in range(count)]

    async def ended(self, within: float = 10.0) -> bool:
        """Whether the server ends the stream within ``within`` seconds (events until then are
        skipped)."""
        try:
            async with asyncio.timeout(within):
                while True:
                    await self.next(within)
        except (StopAsyncIteration, httpx.RemoteProtocolError, httpx.ReadError):
            return True


@asynccontextmanager
async def stream(
    live: Live, name: str | None, *, headers: dict[str, str] | None = None, **params: str
) -> AsyncIterator[Stream]:
    """An open stream of ``token(name)`` (by bearer header): its first event already read."""
    sent = dict(headers or {})
    if name is not None:
        sent["Authorization"] = f"Bearer {token(name)}"
    async with (
        httpx.AsyncClient(base_url=live.server.http, timeout=30) as client,
        client.stream("GET", "/api/changes", params=params, headers=sent) as response,
    ):
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        opened = Stream(response)
        first = await opened.next()
        assert first.retry == 2000, first
        yield opened


async def put(live: Live, name: str, content: str = "c") -> int:
    """Write a report over the HTTP API; its new version."""
    async with httpx.AsyncClient(base_url=live.server.http, timeout=60) as client:
        response = await client.put(
            f"/api/reports/{name}",
            json={"title": f"Title of {name}", "content": content},
            headers={"Authorization": f"Bearer {WRITER}"},
        )
    assert response.status_code in (200, 201), response.text
    version: int = response.json()["version"]
    return version


async def seed(live: Live, *args: str) -> None:
    done = await asyncio.to_thread(run_cli, live.env, *args)
    assert done.returncode == 0, done.stderr


def assert_change(found: Event, kind: str, name: str, version: int | None = None) -> None:
    """``found`` is the event of the ``kind`` change of ``name`` (at ``version``)."""
    body = found.json()
    assert (found.event, body["type"], body["report"]["name"]) == (f"report.{kind}",) * 2 + (
        name,
    ), found
    assert found.id == str(body["version"]) == str(body["report"]["version"]), found
    if version is not None:
        assert body["version"] == version, found


def names_of(events: list[Event]) -> list[str]:
    return [e.json()["report"]["name"] for e in events]


def ids_of(events: list[Event]) -> list[int]:
    return [int(e.id or "0") for e in events]


# -- the tests ---------------------------------------------------------------------------------


async def test_change_committed_by_seed_script_arrives(live: Live) -> None:
    async with stream(live, "seed") as changes:
        await seed(live, "add", "seeded", "--title", "Seeded", "--content", "from seed.py")
        added = await changes.change()
        assert_change(added, "added", "seeded")
        assert added.json()["report"]["title"] == "Seeded"
        assert added.json()["report"]["content"] == "from seed.py"
        await seed(live, "add", "seeded", "--title", "Again", "--replace")
        updated = await changes.change()
        assert_change(updated, "updated", "seeded")
        await seed(live, "remove", "seeded")
        removed = await changes.change()
        assert_change(removed, "removed", "seeded")
        assert ids_of([added, updated, removed]) == sorted(ids_of([added, updated, removed]))


@pytest.mark.parametrize("resume_by", ["Last-Event-ID", "since"])
async def test_cut_stream_resumes_with_exactly_the_missed_changes(
    live: Live, resume_by: str
) -> None:
    prefix = f"resume-{resume_by.lower()}"
    async with stream(live, "resume") as changes:
        written = [await put(live, f"{prefix}-{n}") for n in range(3)]
        first = await changes.changes(2)  # NOTE: then the client cuts the stream
    assert ids_of(first) == written[:2]
    last = first[-1].id
    assert last is not None
    written.append(await put(live, f"{prefix}-3"))
    # NOTE: this one by another process
    await seed(live, "add", f"{prefix}-4", "--title", "by seed.py", "--content", "c")
    written.append(await eventually(lambda: _version_of(live, f"{prefix}-4")))

    headers = {"Last-Event-ID": last} if resume_by == "Last-Event-ID" else {}
    params = {"since": last} if resume_by == "since" else {}
    async with stream(live, "resume", headers=headers, **params) as resumed:
        missed = await resumed.changes(3)
        assert ids_of(missed) == written[2:]
        assert names_of(missed) == [f"{prefix}-{n}" for n in (2, 3, 4)]
        written.append(await put(live, f"{prefix}-5"))
        live_one = await resumed.change()
        assert_change(live_one, "added", f"{prefix}-5", written[-1])
        # NOTE: nothing replayed twice: the next event is the next write
        written.append(await put(live, f"{prefix}-5", "again"))
        assert_change(await resumed.change(), "updated", f"{prefix}-5", written[-1])


async def test_last_event_id_wins_over_since(live: Live) -> None:
    async with stream(live, "resume") as changes:
        one = await put(live, "wins-1")
        await changes.change()
    two = await put(live, "wins-2")
    async with stream(live, "resume", headers={"Last-Event-ID": str(one)}, since="0") as resumed:
        assert_change(await resumed.change(), "added", "wins-2", two)


async def _version_of(live: Live, name: str) -> int | None:
    async with httpx.AsyncClient(base_url=live.server.http) as client:
        response = await client.get(
            f"/api/reports/{name}", headers={"Authorization": f"Bearer {WRITER}"}
        )
    if response.status_code != 200:
        return None
    version: int = response.json()["version"]
    return version


async def test_resync_when_since_is_older_than_the_retention(live: Live) -> None:
    before = await put(live, "resync-0")
    latest = 0
    for n in range(RETENTION + 2):
        latest = await put(live, f"resync-{n % 3}", f"write {n}")
    for since in (str(before), "0"):
        async with stream(live, "resync", since=since) as changes:
            resync = await changes.change()
            assert (resync.event, resync.id) == ("resync", str(latest))
            assert resync.json() == {"type": "resync", "version": latest}
            latest = await put(live, f"resync-after-{since}")
            assert_change(await changes.change(), "added", f"resync-after-{since}", latest)
    async with stream(live, "resync", since=str(latest + 1000)) as ahead:
        assert (await ahead.change()).event == "resync"


async def test_reports_outside_the_token_patterns_never_appear(live: Live) -> None:
    async with stream(live, "limited") as changes:
        start = await put(live, "pub-start")
        assert_change(await changes.change(), "added", "pub-start", start)
        await put(live, "secret-a")
        await seed(live, "add", "secret-b", "--title", "hidden", "--content", "c")
        shown = await put(live, "pub-a")
        # NOTE: the next event after the hidden writes is pub-a
        assert_change(await changes.change(), "added", "pub-a", shown)
        await seed(live, "remove", "secret-b")
        removed = await put(live, "pub-a", "again")
        assert_change(await changes.change(), "updated", "pub-a", removed)
    async with stream(live, "limited", since=str(start)) as replayed:
        events = await replayed.changes(2)
        assert names_of(events) == ["pub-a", "pub-a"]
        final = await put(live, "pub-final")
        assert_change(await replayed.change(), "added", "pub-final", final)
    # NOTE: asking for a hidden name does not show it either
    async with stream(live, "limited", names="secret-a,pub-final") as named:
        await put(live, "secret-a", "again")
        last = await put(live, "pub-final", "again")
        assert_change(await named.change(), "updated", "pub-final", last)


async def test_names_narrows_live_and_replayed(live: Live) -> None:
    async with stream(live, "names", names="named-a,named-c") as changes:
        start = await put(live, "named-a")
        await put(live, "named-b")
        c = await put(live, "named-c")
        assert ids_of(await changes.changes(2)) == [start, c]
    async with stream(live, "names", since=str(start - 1), names="named-c") as replayed:
        assert_change(await replayed.change(), "added", "named-c", c)
        await put(live, "named-b", "again")
        again = await put(live, "named-c", "again")
        assert_change(await replayed.change(), "updated", "named-c", again)


async def test_keepalive_comments_on_an_idle_stream(live: Live) -> None:
    async with stream(live, "idle", names="nothing-ever") as idle:
        seen = [await idle.next() for _ in range(3)]
    assert [e.comment for e in seen] == ["keep-alive"] * 3


async def test_slow_reader_is_dropped_and_others_get_every_change(live: Live) -> None:
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", live.server.port))
    slow.sendall(
        f"GET /api/changes HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token('slow')}\r\n\r\n".encode()
    )
    try:
        async with stream(live, "normal") as normal:
            big = "x" * 1_000_000
            written: list[int] = []
            for n in range(60):
                written.append(await put(live, f"big-{n % 4}", big[:-n] if n else big))
                got = await normal.change()
                assert int(got.id or 0) == written[-1]
                assert len(got.json()["report"]["content"]) == 1_000_000 - n
                if "dropping a slow event stream" in live.server.log():
                    break
            else:
                raise AssertionError(f"the slow reader was not dropped:\n{live.server.log()}")
            # NOTE: the normal reader still gets every change
            written.append(await put(live, "big-after", "small"))
            assert_change(await normal.change(), "added", "big-after", written[-1])
        assert await asyncio.to_thread(_reaches_eof, slow)
    finally:
        slow.close()


def _reaches_eof(sock: socket.socket) -> bool:
    """Read what the server had sent, until EOF or a reset."""
    sock.settimeout(10)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    return True


async def test_streams_count_against_the_per_token_cap(live: Live) -> None:
    async with stream(live, "capped"), stream(live, "capped") as second:
        async with httpx.AsyncClient(base_url=live.server.http) as client:
            refused = await client.get(
                "/api/changes", headers={"Authorization": f"Bearer {token('capped')}"}
            )
        assert refused.status_code == 429
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["status"] == 429
        await second.next()
    # NOTE: released when the server notices the reader left: at the next keep-alive

    async def admitted() -> bool:
        async with httpx.AsyncClient(base_url=live.server.http) as client:
            headers = {"Authorization": f"Bearer {token('capped')}"}
            async with client.stream("GET", "/api/changes", headers=headers) as response:
                return response.status_code == 200

    await eventually(admitted)
    async with stream(live, "capped"):
        pass


async def test_revoking_the_token_ends_the_stream(live: Live) -> None:
    async with stream(live, "doomed") as changes:
        await seed(live, "token", "revoke", "doomed")
        assert await changes.ended()

    # NOTE: a login is refused once the service's login cache has rechecked the token, within
    #   REPORTS_TOKEN_RECHECK of its last check (which may come after the stream ended).
    async def refused() -> bool:
        async with httpx.AsyncClient(base_url=live.server.http) as client:
            again = await client.get(
                "/api/changes",
                params={"colour": "check"},  # NOTE: a 400 once admitted: never a stream
                headers={"Authorization": f"Bearer {token('doomed')}"},
            )
        assert again.status_code in (400, 401)
        return again.status_code == 401

    await eventually(refused, within=10.0)


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({"Last-Event-ID": "abc"}, {}),
        ({"Last-Event-ID": "-1"}, {}),
        ({"Last-Event-ID": "1.5"}, {}),
        ({"Last-Event-ID": "9" * 20}, {}),
        ({"Last-Event-ID": "abc"}, {"since": "1"}),
        ({}, {"since": "x"}),
        ({}, {"names": "a," + "n" * 300}),
        ({}, {"colour": "red"}),
    ],
)
async def test_bad_requests_are_400(
    live: Live, headers: dict[str, str], params: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=live.server.http) as client:
        response = await client.get(
            "/api/changes",
            params=params,
            headers={**headers, "Authorization": f"Bearer {token('errors')}"},
        )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 400
    assert response.json()["detail"]


async def test_without_a_token_is_401(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.server.http) as client:
        missing = await client.get("/api/changes")
        wrong = await client.get("/api/changes", params={"access_token": "wrong-token-000000"})
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_access_token_in_the_query(live: Live) -> None:
    async with stream(live, None, access_token=token("errors")) as changes:
        version = await put(live, "by-query-token")
        assert_change(await changes.change(), "added", "by-query-token", version)
