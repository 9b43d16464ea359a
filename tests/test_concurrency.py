"""Several writer processes and a reader at once: no write lost, no 'database is locked'."""

from __future__ import annotations

import asyncio
import sys

from reports_service.repository import ReportRepository

from .server import ROOT

WRITERS = 4
PER_WRITER = 40


async def test_concurrent_writers_and_readers_lose_nothing(
    db_url: str, seeded_repository: ReportRepository
) -> None:
    writers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.writer",
            db_url,
            f"w{n}",
            str(PER_WRITER),
            cwd=ROOT,
            stderr=asyncio.subprocess.PIPE,
        )
        for n in range(WRITERS)
    ]
    done = asyncio.gather(*(w.wait() for w in writers))
    reads = 0
    while not done.done():
        assert await seeded_repository.get_report(name="report1") is not None
        reads += 1
        await asyncio.sleep(0.005)  # NOTE: paces the reads while the writers run; waits for nothing
    await done
    errors = [(await w.stderr.read()).decode() for w in writers if w.stderr is not None]
    assert [w.returncode for w in writers] == [0] * WRITERS, errors
    stored = {r.name: r.title for r in await seeded_repository.list_reports()}
    for n in range(WRITERS):
        for i in range(PER_WRITER):
            assert stored[f"w{n}-{i}"] == f"w{n} {i} v2"
    assert len(stored) == 4 + WRITERS * PER_WRITER
    assert reads > 0
