"""How the change feed learns of another process's commit: woken by the database (inotify on
SQLite, LISTEN on PostgreSQL) or, with REPORTS_FEED_WAKEUP=poll or without inotify, polling.

In process, the feed's own timers are made endless, so a change that arrives at all arrived
because the database woke the feed; end to end, through a server and `seed.py`.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable

import pytest

from reports_service import watch
from reports_service.config import Settings
from reports_service.feed import ChangeFeed
from reports_service.records import NewReport
from reports_service.repository import ReportRepository
from reports_service.watch import CommitWatcher, PostgresWatcher, SQLiteWatcher, watcher_for

from .clients import PUSH_WITHIN, call, connect, next_event
from .server import Server, run_cli
from .subscribers import Collector
from .waiting import eventually

NEVER = 3600.0


@pytest.fixture
def no_safety_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watchers' rare safety read never comes: only a wake-up can deliver (on SQLite with
    the reads for a second after each write that woke it: see SQLiteWatcher)."""
    monkeypatch.setattr(SQLiteWatcher, "SAFETY_INTERVAL", NEVER)
    monkeypatch.setattr(PostgresWatcher, "SAFETY_INTERVAL", NEVER)


async def delivered_from_elsewhere(
    seeded_repository: ReportRepository,
    other: ReportRepository,
    *,
    interval: float,
    wakeup: str,
    check: Callable[[CommitWatcher], None] = lambda watcher: None,
) -> list[str]:
    """Start a feed, commit two changes through ``other``; the names its subscriber got."""
    watcher = watcher_for(seeded_repository.engine, wakeup)
    feed = ChangeFeed(seeded_repository, interval=interval, watcher=watcher)
    subscriber = Collector()
    feed.add(subscriber)
    await feed.start()
    try:
        check(watcher)
        await other.add_reports([NewReport("elsewhere", "Elsewhere", "")])
        await eventually(lambda: subscriber.names() == ["elsewhere"])
        await other.add_reports([NewReport("again", "Again", "")])
        await eventually(lambda: subscriber.names() == ["elsewhere", "again"])
        return subscriber.names()
    finally:
        await feed.stop()


@pytest.mark.usefixtures("no_safety_poll")
async def test_the_database_wakes_the_feed(
    seeded_repository: ReportRepository, other: ReportRepository, settings: Settings
) -> None:
    watcher = watcher_for(seeded_repository.engine)
    if isinstance(watcher, SQLiteWatcher):
        # The inotify path is the one in use (on Linux): nothing polls.
        await watcher.connect()
        assert watcher.watching
        await watcher.close()
    names = await delivered_from_elsewhere(seeded_repository, other, interval=NEVER, wakeup="auto")
    assert names == ["elsewhere", "again"]


async def test_polling_when_asked_to(
    seeded_repository: ReportRepository, other: ReportRepository, no_safety_poll: None
) -> None:
    def polls(watcher: CommitWatcher) -> None:
        assert not getattr(watcher, "watching", False)

    names = await delivered_from_elsewhere(
        seeded_repository, other, interval=0.01, wakeup="poll", check=polls
    )
    assert names == ["elsewhere", "again"]


async def test_polling_without_inotify(
    seeded_repository: ReportRepository,
    other: ReportRepository,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("inotify is SQLite's")

    def missing(directory: str) -> None:
        raise OSError(errno.ENOSYS, "no inotify here", directory)

    monkeypatch.setattr(watch, "DirectoryWatch", missing)
    names = await delivered_from_elsewhere(seeded_repository, other, interval=0.01, wakeup="auto")
    assert names == ["elsewhere", "again"]


@pytest.mark.parametrize("wakeup", ["auto", "poll"])
async def test_a_commit_by_seed_py_reaches_a_subscriber(
    make_server: Callable[..., Server], db_env: dict[str, str], wakeup: str
) -> None:
    server = make_server(feed_wakeup=wakeup)
    ws = await connect(server)
    try:
        assert "result" in await call(ws, {"id": 1, "type": "subscribe"})
        added = await asyncio.to_thread(run_cli, db_env, "add", "seeded", "--title", "Seeded")
        assert added.returncode == 0
        event = await next_event(ws, PUSH_WITHIN)
        assert (event["type"], event["report"]["name"]) == ("report.added", "seeded")
    finally:
        await ws.close()
    sqlite = db_env["REPORTS_DATABASE_URL"].startswith("sqlite")
    assert ("(inotify)" in server.log()) == (sqlite and wakeup == "auto")
