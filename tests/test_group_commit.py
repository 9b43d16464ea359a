"""Group commit: writes queued behind a running transaction commit together, in savepoints.

The properties under test, on real databases: every acknowledged write is stored, at distinct
consecutive versions in commit order, with a complete changelog; a write of a batch that fails
(a version conflict, a duplicate) fails alone while the others of its batch commit; a commit
that fails fails every write of its batch and leaves nothing of them behind.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy import exc
from sqlalchemy.engine import make_url

from reports_service.config import Settings
from reports_service.errors import DatabaseUnavailable, DuplicateReports, VersionConflict
from reports_service.records import NewReport
from reports_service.repository import ReportRepository, repository_for

from .waiting import eventually

WRITE_LOCK_KEY = 0x7265706F72747300  # NOTE: the advisory lock the repository's writers take


def report(name: str, title: str = "t") -> NewReport:
    return NewReport(name, title, f"content of {name}")


@pytest.fixture
async def repo(settings: Settings) -> AsyncIterator[ReportRepository]:
    repository = repository_for(settings)
    yield repository
    await repository.dispose()


@asynccontextmanager
async def writers_blocked(url: str) -> AsyncIterator[None]:
    """Hold the database's write lock (as another process would) until the block ends."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database is not None
        holder = sqlite3.connect(parsed.database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", WRITE_LOCK_KEY)
        yield
    finally:
        await conn.close()  # NOTE: releases the session's advisory lock


async def one_batch(
    repo: ReportRepository, url: str, writes: list[Awaitable[Any]]
) -> tuple[Any, list[Any]]:
    """Run a leader write, then ``writes`` queued behind it, so that they form one batch:
    (the leader's answer, the answers or exceptions of ``writes``)."""
    async with writers_blocked(url):
        batches = repo.batches
        leader = asyncio.ensure_future(repo.put_report(report("leader")))
        # NOTE: the leader's transaction has begun: it waits for the lock
        await eventually(lambda: repo.batches == batches + 1 and repo.queued_writes == 0)
        batch = [asyncio.ensure_future(write) for write in writes]
        await eventually(lambda: repo.queued_writes == len(writes))
    answers = await asyncio.gather(*batch, return_exceptions=True)
    assert repo.largest_batch == len(writes)
    return await leader, answers


async def test_concurrent_puts_are_all_stored_in_commit_order(
    repo: ReportRepository, db_url: str
) -> None:
    first, _ = await repo.put_report(report("first"))
    count = 150  # NOTE: more than MAX_BATCH, so that batches follow one another
    names = [f"r{n % 40}" for n in range(count)]  # NOTE: the same names again: updates too
    answers = await asyncio.gather(
        *(repo.put_report(report(name, f"title {n}")) for n, name in enumerate(names))
    )
    versions = [stored.version for stored, _ in answers]
    assert sorted(versions) == list(range(first.version + 1, first.version + 1 + count))
    assert repo.largest_batch > 1
    changes = await repo.changes_since(first.version, limit=1000)
    assert [c.version for c in changes] == sorted(versions)
    by_version = {stored.version: stored for stored, _ in answers}
    for change in changes:
        assert change.report.title == by_version[change.version].title
        assert change.report.name == by_version[change.version].name
    # NOTE: each name's last version is what is stored, as the caller was told
    latest: dict[str, Any] = {}
    for stored, _ in sorted(answers, key=lambda answer: answer[0].version):
        latest[stored.name] = stored
    for name, stored in latest.items():
        assert await repo.get_report(name=name) == stored
    assert (await repo.changelog_bounds())[1] == first.version + count


async def test_a_failing_write_fails_alone_in_its_batch(
    repo: ReportRepository, db_url: str
) -> None:
    seeded, _ = await repo.put_report(report("seeded"))
    await repo.add_reports([report("taken")])
    leader, answers = await one_batch(
        repo,
        db_url,
        [
            repo.put_report(report("a")),
            repo.put_report(report("seeded", "not written"), if_version=seeded.version + 5),
            repo.put_report(report("b")),
            repo.add_reports([report("c"), report("taken")]),
            repo.put_report(report("d")),
            repo.remove_report(name="seeded", if_version=0),
        ],
    )
    a, conflict, b, duplicate, d, removal_conflict = answers
    assert isinstance(conflict, VersionConflict)
    assert isinstance(duplicate, DuplicateReports) and "taken" in str(duplicate)
    assert isinstance(removal_conflict, VersionConflict)
    # NOTE: the failed writes took no version: the others follow the leader without a gap
    assert [a[0].version, b[0].version, d[0].version] == [leader[0].version + n for n in (1, 2, 3)]
    assert await repo.get_report(name="seeded") == seeded
    assert await repo.get_report(name="c") is None
    changes = await repo.changes_since(leader[0].version - 1, limit=100)
    assert [(c.version, c.report.name) for c in changes] == [
        (leader[0].version, "leader"),
        (a[0].version, "a"),
        (b[0].version, "b"),
        (d[0].version, "d"),
    ]


POISON = {
    # NOTE: a deferred constraint is checked at COMMIT: the statements succeed, the commit fails.
    "sqlite": [
        "CREATE TABLE poison_parent (id INTEGER PRIMARY KEY)",
        "CREATE TABLE poison_child (parent INTEGER"
        " REFERENCES poison_parent (id) DEFERRABLE INITIALLY DEFERRED)",
        "CREATE TRIGGER poison AFTER INSERT ON reports WHEN NEW.name LIKE 'poison%'"
        " BEGIN INSERT INTO poison_child VALUES (1); END",
    ],
    "postgresql": [
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'poisoned'; END $$",
        "CREATE CONSTRAINT TRIGGER poison AFTER INSERT ON reports"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.name LIKE 'poison%')"
        " EXECUTE FUNCTION poison()",
    ],
}


async def test_a_failing_commit_fails_every_write_of_its_batch(
    repo: ReportRepository, db_url: str
) -> None:
    async with repo.engine.begin() as conn:
        for statement in POISON[conn.dialect.name]:
            await conn.exec_driver_sql(statement)
    before, _ = await repo.put_report(report("before"))
    leader, answers = await one_batch(
        repo,
        db_url,
        [
            repo.put_report(report("a")),
            repo.put_report(report("poison")),
            repo.put_report(report("before", "not written")),
        ],
    )
    for answer in answers:
        assert isinstance(answer, DatabaseUnavailable | exc.IntegrityError), answer
    for name in ("a", "poison"):
        assert await repo.get_report(name=name) is None
    assert await repo.get_report(name="before") == before
    assert await repo.get_report(name="leader") == leader[0]
    # NOTE: the writes go on, at the next version: the failed batch left no trace
    after, _ = await repo.put_report(report("after"))
    assert after.version == leader[0].version + 1
    changes = await repo.changes_since(before.version - 1, limit=100)
    assert [c.report.name for c in changes] == ["before", "leader", "after"]
