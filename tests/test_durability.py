"""SQLite's durability setting reaches the service's own connections: FULL unless set.

FULL syncs the WAL on every commit, so an acknowledged write survives a power failure; NORMAL
syncs only at checkpoints (README, "Durability").
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from reports_service.config import Settings, SettingsError
from reports_service.db import WRITE_OPTIONS
from reports_service.records import NewReport
from reports_service.repository import repository_for

from .databases import SQLiteTemplate

SQLITE_SYNCHRONOUS = {"NORMAL": 1, "FULL": 2}


async def synchronous_of_pooled_connections(url: str, environ: dict[str, str]) -> set[int]:
    """PRAGMA synchronous on every connection of a repository built as the app builds it,
    after it wrote (so its writer's connections are among them)."""
    repository = repository_for(Settings.from_env({"REPORTS_DATABASE_URL": url, **environ}))
    try:
        await repository.add_reports([NewReport("durable", "Durable", "")])

        async def pragma(conn: AsyncConnection) -> int:
            return int((await conn.exec_driver_sql("PRAGMA synchronous")).scalar_one())

        async with contextlib.AsyncExitStack() as stack:
            writer = repository.engine.execution_options(**WRITE_OPTIONS)
            conns = [await stack.enter_async_context(repository.engine.connect()) for _ in range(3)]
            conns.append(await stack.enter_async_context(writer.connect()))
            values = set(await asyncio.gather(*(pragma(conn) for conn in conns)))
        assert (await repository.get_report(name="durable")) is not None
        return values
    finally:
        await repository.dispose()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "FULL"),
        ({"REPORTS_SQLITE_SYNCHRONOUS": "FULL"}, "FULL"),
        ({"REPORTS_SQLITE_SYNCHRONOUS": "NORMAL"}, "NORMAL"),
        ({"REPORTS_SQLITE_SYNCHRONOUS": "normal"}, "NORMAL"),
    ],
)
async def test_synchronous_reaches_sqlite(
    sqlite_template: SQLiteTemplate, tmp_path: Path, environ: dict[str, str], expected: str
) -> None:
    url = sqlite_template.new_database(tmp_path)
    assert await synchronous_of_pooled_connections(url, environ) == {SQLITE_SYNCHRONOUS[expected]}


@pytest.mark.parametrize("value", ["OFF", "EXTRA", "2"])
def test_other_values_are_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="REPORTS_SQLITE_SYNCHRONOUS"):
        Settings.from_env({"REPORTS_SQLITE_SYNCHRONOUS": value})
