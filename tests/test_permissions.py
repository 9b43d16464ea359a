"""Per-report permissions against a running server, on both backends and both kinds of token.

A token limited to some report patterns (a database token made with ``reports=...``, or a JWT
with a ``reports`` claim) must never learn that another report exists: not by ``get``, the
plain query, ``list``, ``search``, a subscription or a replay; and it writes only inside them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from reports_service.records import NewReport, utcnow
from reports_service.repository import ReportRepository

from .clients import call, connect, next_event, recv
from .conftest import TOKEN, WRITE_TOKEN
from .jwts import SECRET, claims, mint
from .server import Server, run_cli

MakeToken = Callable[..., Awaitable[str]]
_serial = itertools.count(1)


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    """A server that takes database tokens and HS256 JWTs."""
    return make_server(jwt_secret=SECRET, jwt_leeway="0")


@pytest.fixture(params=["token", "jwt"])
def limited(request: pytest.FixtureRequest, seeded_repository: ReportRepository) -> MakeToken:
    """Makes a token that sees only ``patterns``: a database token, or a JWT."""

    async def make(patterns: Sequence[str], *, write: bool = False) -> str:
        n = next(_serial)
        if request.param == "jwt":
            scope = "reports:read reports:write" if write else "reports:read"
            return mint(SECRET, claims(f"user-{n}", scope=scope, reports=list(patterns)))
        token = f"limited-token-{n}-0123456789"
        await seeded_repository.create_token(
            name=f"limited-{n}", token=token, can_write=write, reports=patterns
        )
        return token

    return make


async def plain(ws: ClientConnection, name: str) -> Any:
    """The tutorial's query: a bare report name."""
    await ws.send(name)
    return await recv(ws)


async def put(ws: ClientConnection, name: str, title: str = "t", rid: Any = "put") -> Any:
    return await call(ws, {"id": rid, "type": "put", "name": name, "title": title})


async def version(ws: ClientConnection) -> int:
    """The latest version the server has seen."""
    return int((await call(ws, {"id": "v", "type": "ping"}))["result"]["version"])


async def pages(ws: ClientConnection, request: dict[str, Any]) -> list[list[str]]:
    """The names on each page of a list or search, following ``next`` to the end."""
    found: list[list[str]] = []
    cursor = None
    while True:
        page = (await call(ws, {**request, "id": len(found), "cursor": cursor}))["result"]
        found.append([r["name"] for r in page["reports"]])
        cursor = page["next"]
        if cursor is None:
            return found
        assert len(found) < 50, found


# -- reads ---------------------------------------------------------------------------------


async def test_a_hidden_report_answers_exactly_like_a_missing_one(
    server: Server, limited: MakeToken, seeded_repository: ReportRepository
) -> None:
    await seeded_repository.add_reports(
        [NewReport("sales/q1", "Q1", "up"), NewReport("hr/pay", "Pay", "secret")]
    )
    async with await connect(server, await limited(["sales/*"])) as ws:
        hidden = await call(ws, {"id": 7, "type": "get", "name": "hr/pay"})
        missing = await call(ws, {"id": 7, "type": "get", "name": "hr/nope"})
        assert hidden["error"]["code"] == "not_found"
        assert hidden == json.loads(json.dumps(missing).replace("hr/nope", "hr/pay"))
        assert (await call(ws, {"id": 8, "type": "get", "name": "sales/q1"}))["result"][
            "title"
        ] == "Q1"
        assert (
            await plain(ws, "hr/pay") == await plain(ws, "hr/nope") == {"error": "report not found"}
        )
        assert await plain(ws, "report1") == {"error": "report not found"}  # the tutorial's
        assert await plain(ws, "sales/q1") == {"report": "Q1"}


async def test_patterns_are_case_sensitive_and_brackets_are_sets(
    server: Server, limited: MakeToken, seeded_repository: ReportRepository
) -> None:
    names = ["sales/x", "Sales/x", "SALES/y", "team-a/r", "team-b/r", "team-c/r", "team-[ab]/r"]
    await seeded_repository.add_reports([NewReport(n, n, "c") for n in names])
    async with await connect(server, await limited(["sales/*", "team-[ab]/*"])) as ws:
        readable = []
        for name in names:
            reply = await call(ws, {"id": name, "type": "get", "name": name})
            if "result" in reply:
                readable.append(name)
        assert readable == ["sales/x", "team-a/r", "team-b/r"]
        assert await pages(ws, {"type": "list", "limit": 100}) == [
            ["team-b/r", "team-a/r", "sales/x"]
        ]


async def test_names_with_sql_wildcards_match_as_fnmatch_says(
    server: Server, limited: MakeToken, seeded_repository: ReportRepository
) -> None:
    patterns = ["100%/*", "a_b/*", "back\\slash/*", "lit[/*", "[!x]y/*", "[]]z", "q?/[a-c]"]
    names = [
        "100%/r", "1000/r", "a_b/r", "axb/r", "back\\slash/r", "backslash/r", "lit[/r",
        "lit/r", "ay/r", "xy/r", "]z", "z", "q1/b", "q1/d", "Q1/b", "%", "_", "a_b",
    ]  # fmt: skip
    await seeded_repository.add_reports([NewReport(n, n, "c") for n in names])
    expected = [n for n in reversed(names) if any(fnmatchcase(n, p) for p in patterns)]
    assert len(expected) == 7
    async with await connect(server, await limited(patterns)) as ws:
        assert await pages(ws, {"type": "list", "limit": 3}) == [
            expected[i : i + 3] for i in range(0, len(expected), 3)
        ]


async def test_list_and_search_page_past_hidden_reports(
    server: Server, limited: MakeToken, seeded_repository: ReportRepository
) -> None:
    # NOTE: hidden names of three kinds: ones SQL LIKE already leaves out (other/), ones it
    #   keeps on both backends (sales/c: `[ab]` becomes `_`), and ones SQLite's
    #   case-insensitive LIKE keeps (Sales/a); the server must page past all of them.
    hidden = itertools.cycle(["other/{}", "sales/c{}", "Sales/a{}"])
    items, visible = [], []
    for group in range(5):
        for i in range(6):
            items.append(NewReport(next(hidden).format(f"{group}-{i}"), "Hidden", "quarterly"))
        visible.append(f"sales/{'ab'[group % 2]}{group}")
        items.append(NewReport(visible[-1], "Visible", "quarterly"))
    items.append(NewReport("other/last", "Hidden", "quarterly"))  # the newest is hidden
    await seeded_repository.add_reports(items)
    newest_first = visible[::-1]
    async with await connect(server, await limited(["sales/[ab]*"])) as ws:
        for request in (
            {"type": "list", "limit": 2},
            {"type": "search", "q": "QUARTERLY", "limit": 2},
        ):
            found = await pages(ws, request)
            assert found == [newest_first[0:2], newest_first[2:4], newest_first[4:]]
        assert await pages(ws, {"type": "list", "limit": 5}) == [newest_first]
        assert await pages(ws, {"type": "search", "q": "hidden"}) == [[]]


async def test_subscriptions_and_replays_deliver_only_readable_reports(
    server: Server, limited: MakeToken
) -> None:
    # NOTE: sales/c and Sales/a pass the SQL LIKE the replay narrows by (`sales/_%`, and
    #   SQLite's LIKE ignores case): only the pattern check keeps them out.
    token = await limited(["sales/[ab]*"])
    async with (
        await connect(server, token) as everything,
        await connect(server, token) as named,
        await connect(server, WRITE_TOKEN) as writer,
    ):
        since = (await call(everything, {"id": 1, "type": "subscribe"}))["result"]["version"]
        names = ["sales/a", "sales/c", "Sales/a", "hr/x", "report1", "sales/b-end"]
        await call(named, {"id": 1, "type": "subscribe", "names": names})
        for name in ("hr/x", "sales/c", "sales/a", "Sales/a", "report1", "other/y"):
            await put(writer, name)
        await call(writer, {"id": "rm", "type": "remove", "name": "hr/x"})
        await put(writer, "sales/b-end")  # the marker: every change before it was delivered
        expected = [("report.added", "sales/a"), ("report.added", "sales/b-end")]
        for ws in (everything, named):
            events = [await next_event(ws), await next_event(ws)]
            assert [(e["type"], e["report"]["name"]) for e in events] == expected
        for request in (
            {"id": 2, "type": "subscribe", "since": since},
            {"id": 2, "type": "subscribe", "since": since, "names": names},
        ):
            async with await connect(server, token) as resumed:
                assert (await call(resumed, request))["result"]["version"] == since + 8
                events = [await next_event(resumed), await next_event(resumed)]
                assert [(e["type"], e["report"]["name"]) for e in events] == expected
                assert (await call(resumed, {"id": 3, "type": "ping"}))["id"] == 3


async def test_a_token_without_read_scope_reads_nothing(server: Server) -> None:
    writes_only = mint(SECRET, claims("w", scope="reports:write"))
    async with (
        await connect(server, writes_only) as ws,
        await connect(server, TOKEN) as watcher,
    ):
        assert (await call(ws, {"id": 1, "type": "get", "name": "report1"}))["error"][
            "code"
        ] == "not_found"
        assert await plain(ws, "report1") == {"error": "report not found"}
        assert await pages(ws, {"type": "list"}) == [[]]
        assert await pages(ws, {"type": "search", "q": "report"}) == [[]]
        await call(ws, {"id": 2, "type": "subscribe"})
        await call(watcher, {"id": 2, "type": "subscribe"})
        assert "result" in await put(ws, "written")
        assert (await next_event(watcher))["report"]["name"] == "written"
        # NOTE: the feed pushed to every subscriber at once; the next message is the pong.
        assert (await call(ws, {"id": 3, "type": "ping"}))["result"]["pong"] is True
        with pytest.raises(TimeoutError):
            await recv(ws, within=0.5)


# -- writes --------------------------------------------------------------------------------


async def test_a_read_only_token_may_not_write(server: Server, limited: MakeToken) -> None:
    for token in (TOKEN, await limited(["*"])):
        async with await connect(server, token) as ws:
            before = await version(ws)
            reply = await put(ws, "report1", "overwritten")
            assert reply["error"]["code"] == "forbidden"
            reply = await call(ws, {"id": 1, "type": "remove", "name": "report1"})
            assert reply["error"]["code"] == "forbidden"
            assert await plain(ws, "report1") == {"report": "Report 1"}
            assert await version(ws) == before


async def test_a_write_outside_the_patterns_is_forbidden_and_changes_nothing(
    server: Server, limited: MakeToken, seeded_repository: ReportRepository
) -> None:
    async with (
        await connect(server, await limited(["sales/*"], write=True)) as ws,
        await connect(server, TOKEN) as reader,
    ):
        before = await version(reader)
        for name in ("other/new", "report1", "Sales/x"):
            assert (await put(ws, name, "nope"))["error"]["code"] == "forbidden"
            remove = {"id": name, "type": "remove", "name": name}
            assert (await call(ws, remove))["error"]["code"] == "forbidden"
        assert await version(reader) == before
        assert await plain(reader, "report1") == {"report": "Report 1"}
        assert await plain(reader, "other/new") == {"error": "report not found"}
        assert (await put(ws, "sales/new", "Yes"))["result"]["title"] == "Yes"
        assert await plain(reader, "sales/new") == {"report": "Yes"}
        removed = await call(ws, {"id": 1, "type": "remove", "name": "sales/new"})
        assert removed["result"]["name"] == "sales/new"
        assert await plain(reader, "sales/new") == {"error": "report not found"}


async def test_a_jwt_with_read_scope_only_may_not_write(server: Server) -> None:
    async with await connect(server, mint(SECRET, claims("r", reports=["sales/*"]))) as ws:
        assert (await put(ws, "sales/x"))["error"]["code"] == "forbidden"
        remove = {"id": 1, "type": "remove", "name": "report1"}
        assert (await call(ws, remove))["error"]["code"] == "forbidden"
        assert (await call(ws, {"id": 2, "type": "get", "name": "sales/x"}))["error"][
            "code"
        ] == "not_found"


# -- database tokens made on the command line ----------------------------------------------


async def test_a_token_created_on_the_command_line_sees_only_its_reports(
    server: Server, db_env: dict[str, str], seeded_repository: ReportRepository
) -> None:
    await seeded_repository.add_reports([NewReport("sales/q1", "Q1", "c")])
    made = await asyncio.to_thread(
        run_cli, db_env, "token", "create", "sales", "--reports", "sales/*", "--expires", "1h"
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    async with await connect(server, token) as ws:
        reply = await call(ws, {"id": 1, "type": "auth", "token": token})
        assert reply["result"]["subject"] == "sales"
        assert reply["result"]["reports"] == ["sales/*"]
        assert reply["result"]["write"] is False
        left = datetime.fromisoformat(reply["result"]["expires_at"]) - utcnow()
        assert timedelta(minutes=59) < left <= timedelta(hours=1)
        assert await plain(ws, "sales/q1") == {"report": "Q1"}
        assert await plain(ws, "report1") == {"error": "report not found"}
        assert await pages(ws, {"type": "list"}) == [["sales/q1"]]
        assert (await put(ws, "sales/q2"))["error"]["code"] == "forbidden"
