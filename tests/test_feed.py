"""The change feed's report cache, on a real database, with another writer committing."""

from __future__ import annotations

import asyncio

import pytest

from reports_service.config import Settings
from reports_service.feed import ENTRY_OVERHEAD, ChangeFeed
from reports_service.records import Change, NewReport
from reports_service.repository import ReportRepository
from reports_service.watch import PostgresWatcher, watcher_for

from .subscribers import Collector
from .waiting import eventually


@pytest.fixture
def notified(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The versions PostgreSQL's watchers have been notified of (NOTIFY's payload)."""
    versions: set[str] = set()
    on_notify = PostgresWatcher._on_notify

    def spy(self: PostgresWatcher, *args: object) -> None:
        on_notify(self, *args)
        versions.add(str(args[-1]))

    monkeypatch.setattr(PostgresWatcher, "_on_notify", spy)
    return versions


async def started_feed(repository: ReportRepository, cache_bytes: int) -> ChangeFeed:
    # NOTE: its own loop checks once at start and then sleeps (polling, not woken by the
    #   database): queries do every catch-up. A yield lets that check begin; a catch-up waits
    #   for the one running, and shares it.
    watcher = watcher_for(repository.engine, "poll")
    feed = ChangeFeed(repository, interval=3600, cache_bytes=cache_bytes, watcher=watcher)
    await feed.start()
    await asyncio.sleep(0)
    await feed.catch_up()
    return feed


async def noticed(settings: Settings, other: ReportRepository, notified: set[str]) -> None:
    """Wait for the feed's PostgreSQL notification of the latest commit (SQLite needs none)."""
    if settings.database_url.startswith("postgresql"):
        latest = str((await other.changelog_bounds())[1])
        await eventually(lambda: latest in notified)


async def test_queries_arriving_during_a_catch_up_share_its_read(
    seeded_repository: ReportRepository,
    other: ReportRepository,
    settings: Settings,
    notified: set[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feed = await started_feed(seeded_repository, cache_bytes=1 << 20)
    try:
        assert (await feed.report("report1")) is not None  # cached now
        await other.add_reports([NewReport("report1", "Changed", "elsewhere")], replace=True)
        await noticed(settings, other, notified)

        reads = 0
        changes_since = seeded_repository.changes_since

        async def counted(*args: object, **kwargs: object) -> object:
            nonlocal reads
            reads += 1
            return await changes_since(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(seeded_repository, "changes_since", counted)
        answers = await asyncio.gather(*(feed.report("report1") for _ in range(64)))
        # Every query started after the commit, so every one sees it ...
        assert {a.title if a else None for a in answers} == {"Changed"}
        # ... and one read of the changelog served them all: one per query (the old way)
        # queued 64 database round trips behind each other, a stall of tens of milliseconds.
        assert reads == 1
    finally:
        await feed.stop()


async def test_a_change_this_process_commits_is_pushed_at_once_also_during_a_read(
    seeded_repository: ReportRepository,
    other: ReportRepository,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write's own change reaches the subscribers as the write returns, also while the feed
    is reading the changelog (stalled here, as a slow database round trip would), and only
    once: the read skips it. A change committed elsewhere during the read follows it."""
    feed = await started_feed(seeded_repository, cache_bytes=1 << 20)
    subscriber = Collector()
    feed.add(subscriber)
    reading, release = asyncio.Event(), asyncio.Event()
    changes_since = seeded_repository.changes_since

    async def stalled(*args: object, **kwargs: object) -> object:
        reading.set()
        await release.wait()
        return await changes_since(*args, **kwargs)  # type: ignore[arg-type]

    try:
        start = feed.version
        assert start is not None
        monkeypatch.setattr(seeded_repository, "changes_since", stalled)
        read = asyncio.create_task(feed.catch_up())
        await reading.wait()
        stored, _ = await seeded_repository.put_report(NewReport("mine", "Mine", ""))
        feed.written(Change(stored.version, "added", stored, stored.updated_at))
        assert subscriber.versions() == [start + 1]
        await other.add_reports([NewReport("elsewhere", "Elsewhere", "")])
        release.set()
        await read
        assert subscriber.versions() == [start + 1, start + 2]
        assert feed.version == start + 2
    finally:
        release.set()
        await feed.stop()


async def test_cache_stays_within_its_budget_and_correct(
    seeded_repository: ReportRepository,
    other: ReportRepository,
    settings: Settings,
    notified: set[str],
) -> None:
    await seeded_repository.add_reports(
        [NewReport(f"r{i:02}", f"Title {i:02}", "x" * 20) for i in range(40)]
    )
    budget = 5 * (ENTRY_OVERHEAD + 30)  # room for about five of them
    feed = await started_feed(seeded_repository, cache_bytes=budget)
    try:
        for _ in range(2):
            for i in range(40):
                report = await feed.report(f"r{i:02}")
                assert report is not None and report.title == f"Title {i:02}"
                assert 0 < feed.cached_bytes <= budget
        assert await feed.report("nowhere") is None

        # The last ones read are cached, the first ones were evicted: both see changes.
        await other.add_reports(
            [NewReport("r39", "New 39", "y"), NewReport("r00", "New 00", "y" * 5000)],
            replace=True,
        )
        await other.remove_report(name="r38")
        await other.add_reports([NewReport("nowhere", "Now here", "")])
        await noticed(settings, other, notified)
        r39, r00 = await feed.report("r39"), await feed.report("r00")
        assert r39 is not None and r39.title == "New 39"
        assert r00 is not None and r00.title == "New 00"
        assert await feed.report("r38") is None
        now_here = await feed.report("nowhere")
        assert now_here is not None and now_here.title == "Now here"
        assert 0 < feed.cached_bytes <= budget
    finally:
        await feed.stop()


async def test_no_cache_reads_every_time(
    seeded_repository: ReportRepository,
    other: ReportRepository,
    settings: Settings,
    notified: set[str],
) -> None:
    feed = await started_feed(seeded_repository, cache_bytes=0)
    try:
        assert (await feed.report("report2")) is not None
        assert feed.cached_bytes == 0
        await other.remove_report(name="report2")
        await noticed(settings, other, notified)
        assert await feed.report("report2") is None
    finally:
        await feed.stop()
