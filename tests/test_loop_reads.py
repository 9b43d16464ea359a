"""The reads made in the event loop's thread on SQLite (point_reader.py) answer as the pooled
reads do: the change feed's read after each commit, and a report by name."""

from __future__ import annotations

import sqlite3

import pytest

from reports_service.records import NewReport
from reports_service.repository import LOOP_CHANGES, ReportRepository


async def test_changes_read_in_the_loop_are_those_the_pool_reads(
    seeded_repository: ReportRepository, other: ReportRepository
) -> None:
    repo = seeded_repository
    for i in range(2 * LOOP_CHANGES + 3):
        await other.put_report(NewReport(f"c{i}", f"Title {i}", f"content {i}"))
    await other.put_report(NewReport("c0", "Title 0 again", "new content"))
    await other.remove_report(name="c1")
    _, latest, _ = await repo.changelog_bounds()
    # NOTE: with `upto`, the read goes through the pool (the loop's read takes none).
    pooled = await repo.changes_since(0, limit=1000, upto=latest)
    assert [c.version for c in pooled] == list(range(1, latest + 1))
    assert [c.op for c in pooled[-2:]] == ["updated", "removed"]
    assert pooled[-2].report.created_at < pooled[-2].report.updated_at
    for since in (0, 3, latest - LOOP_CHANGES - 1, latest - 2, latest):
        for limit in (0, 1, LOOP_CHANGES - 1, LOOP_CHANGES, LOOP_CHANGES + 1, 1000):
            expected = [c for c in pooled if c.version > since][:limit]
            assert await repo.changes_since(since, limit=limit) == expected, (since, limit)

    # Another process's commit is read at once: each read sees every commit made before it.
    await other.put_report(NewReport("fresh", "Fresh", ""))
    (change,) = await repo.changes_since(latest, limit=LOOP_CHANGES)
    assert (change.version, change.op, change.report.name) == (latest + 1, "added", "fresh")


async def test_a_busy_loop_read_is_answered_through_the_pool(
    seeded_repository: ReportRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's reads do not wait: when SQLite answers busy (it can, for a moment, in WAL
    mode), the same read is made where waiting is fine, and the caller gets its answer."""
    if not db_url.startswith("sqlite"):
        pytest.skip("reads in the loop's thread are SQLite's")
    repo = seeded_repository
    await repo.put_report(NewReport("late", "Late", "content"))
    _, latest, _ = await repo.changelog_bounds()
    expected = await repo.changes_since(0, limit=100, upto=latest)
    report = await repo.get_report(name="late")
    assert report is not None

    def busy(*_args: object) -> None:
        error = sqlite3.OperationalError("database is locked")
        error.sqlite_errorcode = sqlite3.SQLITE_BUSY
        raise error

    monkeypatch.setattr(repo._point_reader, "_read", busy)
    assert await repo.changes_since(0, limit=100) == expected
    assert await repo.changes_since(latest - 1, limit=LOOP_CHANGES) == expected[-1:]
    assert await repo.get_report(name="late") == report
