"""The read path of one query, in process: `python -m benchmarks.readpath DB_FILE`.

Times, per query, over random names of a SQLite database made by the benchmark (e.g. the
cached 1M-report file in benchmarks/results/cache/): the bare SQLite lookup, the repository's
`get_report`, and the change feed's `report()` on a miss (no cache) and on a hit. These are
tight loops with warm CPU caches; inside a server under load a miss costs more (see the
README's Performance section).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence

from reports_service.config import Settings
from reports_service.feed import ChangeFeed
from reports_service.repository import repository_for

LOOKUP = "SELECT name, title, content, created_at, updated_at, version FROM reports WHERE name = ?"


def per_call_us(names: Sequence[str], call: Callable[[str], object]) -> float:
    started = time.perf_counter()
    for name in names:
        call(name)
    return (time.perf_counter() - started) / len(names) * 1e6


async def per_await_us(names: Sequence[str], call: Callable[[str], Awaitable[object]]) -> float:
    started = time.perf_counter()
    for name in names:
        await call(name)
    return (time.perf_counter() - started) / len(names) * 1e6


async def measure(path: str, count: int) -> None:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        (reports,) = conn.execute("SELECT count(*) FROM reports").fetchone()
        conn.execute("PRAGMA mmap_size=1073741824")  # NOTE: as the service's point reader
        rng = random.Random(1)
        names = [f"report{rng.randint(1, reports)}" for _ in range(count)]
        lookup = per_call_us(names, lambda n: conn.execute(LOOKUP, (n,)).fetchone())
        figures = {"SQLite lookup": lookup}
    repository = repository_for(Settings(database_url=f"sqlite+aiosqlite:///{path}"))
    figures["repository get"] = await per_await_us(names, lambda n: repository.get_report(name=n))
    for label, cache in (("feed, miss", 0), ("feed, hit", 1 << 30)):
        feed = ChangeFeed(repository, interval=3600, cache_bytes=cache)
        await feed.start()
        for name in names:  # NOTE: fills the cache of the second
            await feed.report(name)
        figures[label] = await per_await_us(names, feed.report)
        await feed.stop()
    await repository.dispose()
    print(f"{reports:,} reports, {count:,} random names, µs per query:")
    for label, value in figures.items():
        print(f"  {label:<16} {value:6.1f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readpath", description=__doc__)
    parser.add_argument("db_file", help="a migrated, seeded SQLite file")
    parser.add_argument("--count", type=int, default=65_536, help="queries per measurement")
    args = parser.parse_args(argv)
    asyncio.run(measure(args.db_file, args.count))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
