from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from reports_service.db import make_engine
from reports_service.migrate import downgrade, head_revision, upgrade
from reports_service.models import Base

from .databases import sqlite_url
from .server import ROOT


def _diff(url: str) -> list[object]:
    def compare(conn: Connection) -> list[object]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async def run() -> list[object]:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(compare)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _tables(url: str) -> set[str]:
    async def run() -> set[str]:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_models_and_migrations_do_not_drift(db_url: str) -> None:
    assert _diff(db_url) == []


def test_downgrade_to_base_and_back(db_url: str) -> None:
    assert {"reports", "api_tokens"} <= _tables(db_url)
    downgrade(db_url, "base")
    assert _tables(db_url) == {"alembic_version"}
    upgrade(db_url)
    assert _diff(db_url) == []


def test_alembic_command_line_uses_the_setting(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "cli.db")
    env = {**os.environ, "REPORTS_DATABASE_URL": url}
    alembic = [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini")]
    for args in (["upgrade", "head"], ["check"], ["downgrade", "base"]):
        done = subprocess.run([*alembic, *args], cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert _tables(url) == {"alembic_version"}


def test_single_head() -> None:
    assert head_revision() is not None
