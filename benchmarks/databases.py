"""The databases the service is benchmarked on, built with the service's own CLI (`seed.py`).

* a SQLite file with the tutorial's four reports (fresh each run);
* a SQLite file with report1 .. reportN (N = 1,000,000 by default): `seed.py migrate`, then a
  bulk insert through the service's own repository (so that it follows schema changes; the
  benchmark issues no SQL of its own), cached under the cache directory and reused while it
  has N reports, the head migration (in its file name) and the benchmark token;
* a PostgreSQL database (``reports_bench`` by default) on the server given by
  ``REPORTS_BENCH_POSTGRES_URL``, recreated each run and dropped at the end.

Every database gets the benchmark token (``benchmarks.TOKEN``) through `seed.py token create`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks import ROOT, TOKEN
from benchmarks.procs import BenchError, log, python, run_checked
from reports_service.db import make_engine
from reports_service.errors import ServiceError
from reports_service.migrate import head_revision
from reports_service.records import NewReport
from reports_service.repository import ReportRepository

TOKEN_NAME = "bench"
BULK_CHUNK = 100_000
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path.resolve()}"


def seed_py(env: Mapping[str, str], url: str, *args: str, timeout: float = 120.0) -> str:
    """Run `python seed.py ARGS` on the database ``url``; its stdout."""
    result = run_checked(
        python(str(ROOT / "seed.py"), *args),
        env={**env, "REPORTS_DATABASE_URL": url},
        timeout=timeout,
        what=f"seed.py {' '.join(args[:2])}",
    )
    return result.stdout


def migrated(env: Mapping[str, str], url: str, *, tutorial: bool, token: bool) -> str:
    """Migrate ``url``; then the tutorial's reports and the benchmark token, if asked."""
    seed_py(env, url, "migrate")
    if tutorial:
        seed_py(env, url, "seed")
    if token:
        seed_py(env, url, "token", "create", TOKEN_NAME, "--value", TOKEN)
    return url


def tutorial_sqlite(env: Mapping[str, str], directory: Path) -> str:
    """A fresh SQLite file with the four tutorial reports and the token."""
    return migrated(env, sqlite_url(directory / "tutorial.db"), tutorial=True, token=True)


# -- the big SQLite database ---------------------------------------------------------------


def big_sqlite(env: Mapping[str, str], cache_dir: Path, count: int, *, rebuild: bool) -> str:
    """A SQLite file with report1..reportCOUNT and the token, built once and cached.

    The file name carries the schema's head revision, so a new migration builds a new file.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"reports-{count}-rev{head_revision()}.db"
    if not rebuild and path.exists() and asyncio.run(_big_is_valid(sqlite_url(path), count)):
        log(f"reusing {path}")
        return sqlite_url(path)
    building = path.with_name(path.name + ".building")
    for stale in _sqlite_files(path) + _sqlite_files(building):
        stale.unlink(missing_ok=True)
    started = time.monotonic()
    log(f"building {path} with {count:,} reports (once; later runs reuse it)")
    url = migrated(env, sqlite_url(building), tutorial=False, token=True)
    asyncio.run(_bulk_insert(url, count))
    for leftover in _sqlite_files(building)[1:]:
        leftover.unlink(missing_ok=True)
    building.replace(path)
    if not asyncio.run(_big_is_valid(sqlite_url(path), count)):
        raise BenchError(f"{path} was built but does not check out")
    log(f"built {path} in {time.monotonic() - started:.1f}s")
    return sqlite_url(path)


def _sqlite_files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


async def _bulk_insert(url: str, count: int) -> None:
    """report1..reportCOUNT through the service's own repository, a transaction per chunk."""
    repository = ReportRepository(make_engine(url))
    try:
        for first in range(1, count + 1, BULK_CHUNK):
            last = min(count, first + BULK_CHUNK - 1)
            await repository.add_reports(
                [
                    NewReport(f"report{n}", f"Report {n}", f"This is the content of report {n}")
                    for n in range(first, last + 1)
                ]
            )
            if last % 200_000 == 0 or last == count:
                log(f"  {last:,} / {count:,} reports")
    finally:
        await repository.dispose()


async def _big_is_valid(url: str, count: int) -> bool:
    repository = ReportRepository(make_engine(url))
    try:
        return (
            await repository.schema_revision() == head_revision()
            and await repository.count_reports() == count
            and await repository.authenticate(TOKEN) is not None
        )
    except ServiceError:
        return False
    finally:
        await repository.dispose()


# -- PostgreSQL ----------------------------------------------------------------------------


def postgres_database_url(server_url: str, database: str) -> str:
    if not _IDENTIFIER.match(database):
        raise BenchError(f"{database!r} is not a plain PostgreSQL database name")
    url = make_url(server_url)
    if url.get_backend_name() != "postgresql":
        raise BenchError("REPORTS_BENCH_POSTGRES_URL must be a postgresql+asyncpg:// URL")
    if url.host not in (None, "localhost", "::1") and not str(url.host).startswith("127."):
        raise BenchError(f"PostgreSQL at {url.host}: benchmarks talk to loopback only")
    return url.set(drivername="postgresql+asyncpg", database=database).render_as_string(
        hide_password=False
    )


def _admin(server_url: str, *statements: str) -> None:
    """Run statements outside a transaction on the server's own database (as CREATE needs)."""

    async def run() -> None:
        url = make_url(server_url).set(drivername="postgresql+asyncpg")
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        try:
            async with asyncio.timeout(60), engine.connect() as conn:
                for statement in statements:
                    await conn.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run())


def postgres(env: Mapping[str, str], server_url: str, database: str) -> str:
    """A fresh database ``database`` with the tutorial's reports and the token."""
    url = postgres_database_url(server_url, database)
    drop_postgres(server_url, database)
    _admin(server_url, f'CREATE DATABASE "{database}"')
    return migrated(env, url, tutorial=True, token=True)


def drop_postgres(server_url: str, database: str) -> None:
    postgres_database_url(server_url, database)  # NOTE: checks the name before using it
    _admin(server_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
