"""The Python client library against real servers: requests, typed errors, and changes() that
yields every change once, in order, across restarts, expiries, a slow consumer and new epochs."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing

import pytest
from sqlalchemy import text

from reports_service.client import (
    AuthenticationError,
    Conflict,
    ConnectionLost,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    ReportsClient,
    Resync,
    Status,
    Unavailable,
)
from reports_service.migrate import downgrade, upgrade
from reports_service.protocol import ReportEvent
from reports_service.records import NewReport
from reports_service.repository import ReportRepository

from .clients import connect
from .conftest import TOKEN, TUTORIAL, WRITE_TOKEN
from .jwts import SECRET, claims, mint
from .server import Server
from .waiting import eventually

Item = ReportEvent | Resync


class Statuses(list[Status]):
    """An on_status callback that keeps every status."""

    def __call__(self, status: Status) -> None:
        self.append(status)

    def states(self, state: str) -> list[Status]:
        return [s for s in self if s.state == state]


@pytest.fixture
def start_again() -> Iterator[Callable[[Server], Server]]:
    """Start a stopped server again, on the same port, database and settings."""
    started: list[Server] = []

    def again(server: Server) -> Server:
        started.append(server.again())
        return started[-1]

    yield again
    for server in started:
        server.stop()


def client(server: Server | list[str], token: str = TOKEN, **options: object) -> ReportsClient:
    options.setdefault("backoff_base", 0.05)
    options.setdefault("backoff_cap", 0.5)
    options.setdefault("request_timeout", 20.0)
    url = server.url if isinstance(server, Server) else server
    return ReportsClient(url, token=token, **options)  # type: ignore[arg-type]


async def take(changes: AsyncIterator[Item], count: int, within: float = 30.0) -> list[Item]:
    """The next ``count`` items of changes(), failing (not hanging) when they do not come."""
    found: list[Item] = []
    async with asyncio.timeout(within):
        while len(found) < count:
            found.append(await anext(changes))
    return found


async def write(repository: ReportRepository, *names: str) -> None:
    for name in names:
        await repository.add_reports([NewReport(name, name.upper(), "c")], replace=True)


def versions(items: list[Item]) -> list[int]:
    return [i.version for i in items]


# -- requests and errors -------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
async def test_each_request_returns_its_typed_result(server: Server, binary: bool) -> None:
    async with client(server, WRITE_TOKEN, binary=binary) as reports:
        pong = await reports.ping()
        assert pong.pong is True and pong.version == 4 and pong.epoch
        report = await reports.get("report1")
        assert (report.title, report.version, report.created_at.tzinfo is not None) == (
            "Report 1",
            1,
            True,
        )
        first = await reports.list(limit=3)
        assert [r.name for r in first.reports] == ["report4", "report3", "report2"]
        rest = await reports.list(limit=3, cursor=first.next)
        assert [r.name for r in rest.reports] == ["report1"] and rest.next is None
        found = await reports.search("report 3")
        assert [r.name for r in found.reports] == ["report3"]
        put = await reports.put("new", "New", "fresh")
        assert (put.name, put.title, put.content, put.version) == ("new", "New", "fresh", 5)
        again = await reports.put("new", "Newer", if_version=5)
        assert (again.title, again.version) == ("Newer", 6)
        removed = await reports.remove("new", if_version=6)
        assert (removed.name, removed.version) == ("new", 7)
        assert (await reports.remove("report1")).version == 8


async def test_each_error_reply_is_a_typed_error(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(rate_limit="5", rate_burst="5")
    async with client(server, TOKEN) as reader, client(server, WRITE_TOKEN) as writer:
        with pytest.raises(NotFound, match="report9"):
            await reader.get("report9")
        with pytest.raises(Forbidden):
            await reader.put("w", "W")
        with pytest.raises(Conflict) as conflict:
            await writer.put("report1", "Mine", if_version=3)
        assert conflict.value.retried is False and conflict.value.code == "conflict"
        with pytest.raises(Conflict):
            await writer.remove("report1", if_version=0)
        with pytest.raises(NotFound):
            await writer.remove("report9")
        with pytest.raises(InvalidRequest, match="cursor"):
            await reader.list(cursor="not-a-cursor")
        with pytest.raises(InvalidRequest):
            await reader.list(limit=0)
        with pytest.raises(RateLimited) as limited:
            for _ in range(50):
                await reader.ping()
        assert limited.value.retry_after > 0


async def test_an_invalid_token_fails_at_once_without_reconnecting(server: Server) -> None:
    statuses = Statuses()
    with pytest.raises(AuthenticationError, match="invalid token"):
        async with client(server, "wrong-token-0123456789", on_status=statuses):
            pass
    assert len(statuses.states("connecting")) == 1
    assert statuses.states("reconnecting") == []


async def test_a_request_waits_for_the_server_to_come_back(
    server: Server, start_again: Callable[[Server], Server]
) -> None:
    statuses = Statuses()
    async with client(server, on_status=statuses) as reports:
        server.stop()
        await eventually(lambda: statuses.states("reconnecting"))
        pending = asyncio.create_task(reports.get("report2"))
        await eventually(lambda: len(statuses.states("reconnecting")) >= 2)
        assert not pending.done()
        start_again(server)
        assert (await pending).title == "Report 2"


async def test_a_full_server_is_tried_again_until_it_has_room(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(max_connections="1")
    statuses = Statuses()

    async def first_report() -> int:
        async with client(server, on_status=statuses) as reports:
            return (await reports.get("report1")).version

    holder = await connect(server)
    entering = asyncio.create_task(first_report())
    await eventually(lambda: len([s for s in statuses if s.code == 1013]) >= 2)
    assert not entering.done()
    await holder.close()
    assert await entering == 1


async def test_a_request_gives_up_after_request_timeout(server: Server) -> None:
    async with client(server, request_timeout=0.5) as reports:
        server.stop()
        with pytest.raises(Unavailable, match="no connection"):
            await reports.get("report1")


async def test_an_unconditional_remove_whose_reply_is_lost_is_not_sent_again(
    server: Server, start_again: Callable[[Server], Server], seeded_repository: ReportRepository
) -> None:
    """The server is frozen (SIGSTOP) with the requests in its socket, then killed: the client
    cannot know whether the remove happened, and says so instead of sending it twice."""
    async with client(server, WRITE_TOKEN) as reports:
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            removing = asyncio.create_task(reports.remove("report1"))
            putting = asyncio.create_task(reports.put("report2", "Put again"))
            conditional = asyncio.create_task(reports.put("report3", "If", if_version=3))
            await eventually(lambda: len(reports._pending) == 3)
        finally:
            os.kill(server.process.pid, signal.SIGKILL)
        start_again(server)
        with pytest.raises(ConnectionLost, match="may or may not"):
            await removing
        assert (await putting).title == "Put again"  # NOTE: the same content: sent again
        assert (await conditional).title == "If"  # NOTE: refused if the first one had done it
        assert (await reports.get("report1")).title == "Report 1"
    assert await seeded_repository.get_report(name="report1") is not None


# -- changes -------------------------------------------------------------------------------


async def test_changes_yields_every_change_once_across_restarts(
    server: Server, start_again: Callable[[Server], Server], seeded_repository: ReportRepository
) -> None:
    statuses = Statuses()
    async with (
        client(server, on_status=statuses) as reports,
        aclosing(reports.changes(since=4)) as changes,
    ):
        await write(seeded_repository, "a", "b")
        seen = await take(changes, 2)
        for round in range(3):
            server.stop()  # NOTE: SIGTERM: the server closes with 1012
            await write(seeded_repository, f"down{round}", "a")
            server = start_again(server)
            await write(seeded_repository, f"up{round}")
            seen += await take(changes, 3)
        assert versions(seen) == list(range(5, 5 + 11))
        assert all(isinstance(i, ReportEvent) for i in seen)
        names = [i.report.name for i in seen if isinstance(i, ReportEvent)]
        assert names[:5] == ["a", "b", "down0", "a", "up0"]
    assert any(s.code == 1012 for s in statuses.states("reconnecting"))


async def test_changes_follow_the_database_to_another_server(
    make_server: Callable[..., Server],
    start_again: Callable[[Server], Server],
    seeded_repository: ReportRepository,
) -> None:
    first, second = make_server(), make_server()
    second.stop()
    urls = [first.url, second.url]
    async with client(urls) as reports, aclosing(reports.changes(since=4)) as changes:
        await write(seeded_repository, "a")
        seen = await take(changes, 1)
        first.stop()
        await write(seeded_repository, "b")
        second = start_again(second)
        await write(seeded_repository, "c")
        seen += await take(changes, 2)
        assert reports.url == second.url + "/reports"
    assert versions(seen) == [5, 6, 7]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
async def test_since_replays_the_missed_changes_then_goes_on_live(
    server: Server, seeded_repository: ReportRepository, binary: bool
) -> None:
    async with client(server, binary=binary) as reports:
        async with aclosing(reports.changes(since=2)) as changes:
            replayed = await take(changes, 2)
            assert [(i.report.name, i.version) for i in replayed if isinstance(i, ReportEvent)] == [
                ("report3", 3),
                ("report4", 4),
            ]
            await write(seeded_repository, "live")
            assert versions(await take(changes, 1)) == [5]
        async with aclosing(reports.changes(["report4", "live"], since=2)) as changes:
            assert versions(await take(changes, 2)) == [4, 5]


async def test_a_new_database_epoch_yields_resync(
    server: Server, start_again: Callable[[Server], Server], seeded_repository: ReportRepository
) -> None:
    """The database behind the server is another one (restored, replaced): its versions are
    not the ones the client saw, so the client says Resync instead of resuming."""
    async with client(server) as reports, aclosing(reports.changes(since=4)) as changes:
        await write(seeded_repository, "a")
        assert versions(await take(changes, 1)) == [5]
        server.stop()
        async with seeded_repository.engine.begin() as conn:
            await conn.execute(text("UPDATE database_epoch SET epoch = 'restored'"))
        await write(seeded_repository, "b")
        server = start_again(server)
        assert await take(changes, 1) == [Resync(6, "restored")]
        await write(seeded_repository, "c")
        assert versions(await take(changes, 1)) == [7]
        assert (await reports.ping()).epoch == "restored"


async def test_a_database_replaced_by_a_fresh_one_yields_resync(
    server: Server,
    start_again: Callable[[Server], Server],
    seeded_repository: ReportRepository,
    db_url: str,
) -> None:
    """The database is dropped and made again (Alembic down to base, up to head, seeded):
    its versions start again and reach past the client's, which a resume by version alone
    would take for changes it has seen. The new epoch says otherwise: Resync."""
    async with client(server) as reports, aclosing(reports.changes(since=4)) as changes:
        old = (await reports.ping()).epoch
        await write(seeded_repository, "a")
        assert versions(await take(changes, 1)) == [5]
        server.stop()
        await seeded_repository.engine.dispose()
        await asyncio.to_thread(downgrade, db_url, "base")
        await asyncio.to_thread(upgrade, db_url)
        await seeded_repository.add_reports(TUTORIAL)
        await seeded_repository.create_token(name="test", token=TOKEN)
        await write(seeded_repository, "x", "y")  # NOTE: versions 5 and 6 of the new database
        server = start_again(server)
        [resync] = await take(changes, 1)
        assert isinstance(resync, Resync) and resync.version == 6 and resync.epoch != old
        await write(seeded_repository, "z")
        assert versions(await take(changes, 1)) == [7]


async def test_resync_when_the_changelog_no_longer_reaches_back(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(changelog_retention="3")
    async with client(server, WRITE_TOKEN) as reports:
        for n in range(5):
            await reports.put(f"h{n}", f"H{n}")  # NOTE: the server keeps the last 3 changes
        epoch = (await reports.ping()).epoch
        async with aclosing(reports.changes(since=2)) as changes:
            assert await take(changes, 1) == [Resync(9, epoch)]
            await reports.put("after", "After")
            assert versions(await take(changes, 1)) == [10]


@pytest.fixture
def jwt_server(make_server: Callable[..., Server]) -> Server:
    return make_server(jwt_secret=SECRET, jwt_leeway="0", token_expiry_warning="2")


def short_jwt(seconds: int = 3) -> str:
    return mint(SECRET, claims("alice", lifetime=seconds))


async def test_a_token_provider_refreshes_before_the_expiry_without_a_drop(
    jwt_server: Server, seeded_repository: ReportRepository
) -> None:
    calls: list[float] = []

    async def provider() -> str:
        calls.append(time.time())
        return short_jwt()

    statuses = Statuses()
    async with (
        ReportsClient(jwt_server.url, token_provider=provider, on_status=statuses) as reports,
        aclosing(reports.changes(since=4)) as changes,
    ):
        seen = []
        for n in range(3):
            await write(seeded_repository, f"r{n}")
            seen += await take(changes, 1)
            count = len(calls)
            await eventually(lambda count=count: len(calls) > count, within=10)  # type: ignore[misc]
        await write(seeded_repository, "last")
        seen += await take(changes, 1)
        assert versions(seen) == [5, 6, 7, 8]
        assert (await reports.get("report1")).version == 1
    assert len(statuses.states("connected")) == 1  # NOTE: refreshed in band, never dropped


async def test_a_token_provider_too_slow_for_the_expiry_gets_a_new_connection(
    jwt_server: Server, seeded_repository: ReportRepository
) -> None:
    """The refresh comes too late (1008 token expired): the client logs in again with a fresh
    token and resumes, missing nothing."""
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        if calls == 2:  # NOTE: the first refresh, on token.expiring
            await asyncio.sleep(5)
        return short_jwt()

    statuses = Statuses()
    async with (
        ReportsClient(jwt_server.url, token_provider=provider, on_status=statuses) as reports,
        aclosing(reports.changes(since=4)) as changes,
    ):
        await write(seeded_repository, "a")
        seen = await take(changes, 1)
        await eventually(lambda: [s for s in statuses if s.reason == "token expired"])
        await write(seeded_repository, "b")
        seen += await take(changes, 1)
        assert versions(seen) == [5, 6]
    assert len(statuses.states("connected")) >= 2


async def test_an_expiring_token_without_a_provider_ends_changes(jwt_server: Server) -> None:
    statuses = Statuses()
    async with ReportsClient(jwt_server.url, token=short_jwt(), on_status=statuses) as reports:
        with pytest.raises(AuthenticationError, match="token expired"):
            async with aclosing(reports.changes()) as changes:
                await take(changes, 1)
        with pytest.raises(AuthenticationError):
            await reports.ping()
    assert len(statuses.states("connecting")) == 1


async def test_a_failing_token_provider_ends_changes(jwt_server: Server) -> None:
    tokens = [short_jwt()]

    async def provider() -> str:
        if not tokens:
            raise RuntimeError("the identity provider is down")
        return tokens.pop()

    async with ReportsClient(jwt_server.url, token_provider=provider) as reports:
        with pytest.raises(AuthenticationError, match="identity provider is down"):
            async with aclosing(reports.changes()) as changes:
                await take(changes, 1)


async def test_a_slow_consumer_is_resumed_without_loss(
    make_server: Callable[..., Server], seeded_repository: ReportRepository
) -> None:
    """A consumer that stops taking changes stops the client reading: the server closes it
    (4001); the client reconnects and resumes with since, and the server replays what was
    missed in paced batches, fifteen times what its queue holds (REPORTS_SUBSCRIBER_QUEUE):
    every change once, in order, and no Resync."""
    server = make_server(subscriber_queue="20", send_timeout="5")
    statuses = Statuses()
    async with (
        client(server, on_status=statuses, max_buffered=1) as reports,
        aclosing(reports.changes(since=4)) as changes,
    ):
        await write(seeded_repository, "first")
        seen = await take(changes, 1)
        for b in range(30):
            batch = [NewReport(f"big{b}-{i}", "Big", "x" * 50_000) for i in range(10)]
            await seeded_repository.add_reports(batch)
        await eventually(lambda: "closing slow subscriber" in server.log(), within=30)
        assert (await reports.get("report1")).version == 1  # NOTE: the reader is blocked
        async with asyncio.timeout(60):
            while versions(seen)[-1] < 305:
                seen.append(await anext(changes))
        await write(seeded_repository, "after")
        seen += await take(changes, 1)
    assert not [i for i in seen if isinstance(i, Resync)]
    assert versions(seen) == list(range(5, 307))
    assert statuses.states("reconnecting")
