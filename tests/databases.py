"""Real test databases: a SQLite file or a PostgreSQL database per test, migrated by Alembic."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
from pathlib import Path

from sqlalchemy.engine import make_url

from reports_service.migrate import upgrade

POSTGRES_ENV = "REPORTS_TEST_POSTGRES_URL"
_counter = itertools.count()


def backends() -> list[str]:
    return ["sqlite", "postgresql"] if os.environ.get(POSTGRES_ENV) else ["sqlite"]


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


class SQLiteTemplate:
    """A migrated SQLite file, copied for each test so that each test gets its own database."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "template.db"
        upgrade(sqlite_url(self.path))

    def new_database(self, directory: Path) -> str:
        target = directory / "reports.db"
        shutil.copyfile(self.path, target)
        return sqlite_url(target)


class PostgresTemplate:
    """A migrated PostgreSQL template database; each test gets a fresh copy of it."""

    def __init__(self) -> None:
        self.server_url = make_url(os.environ[POSTGRES_ENV])
        self.prefix = f"reports_test_{os.getpid()}"
        self.template = f"{self.prefix}_template"
        self.created: list[str] = []
        self._admin(
            f'DROP DATABASE IF EXISTS "{self.template}"', f'CREATE DATABASE "{self.template}"'
        )
        upgrade(self.url(self.template))

    def url(self, database: str) -> str:
        return self.server_url.set(database=database).render_as_string(hide_password=False)

    def new_database(self) -> str:
        name = f"{self.prefix}_{next(_counter)}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.created.append(name)
        return self.url(name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')

    def _admin(self, *statements: str) -> None:
        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(
                host=self.server_url.host,
                port=self.server_url.port or 5432,
                user=self.server_url.username,
                password=self.server_url.password,
                database=self.server_url.database,
            )
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()

        asyncio.run(run())
