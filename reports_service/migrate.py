"""Alembic, driven from code: the migrations shipped inside the package, wherever it is."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from .errors import SchemaNotReady, ServiceError

if TYPE_CHECKING:
    from .repository import ReportRepository

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class MigrationsMissing(ServiceError):
    """The package's migration scripts are not where they were installed."""


def alembic_config(database_url: str) -> Config:
    """A Config built in code: no alembic.ini, no dependence on the working directory."""
    if not (MIGRATIONS / "env.py").is_file():
        raise MigrationsMissing(
            f"the migrations directory {MIGRATIONS} is missing: reinstall reports-service"
        )
    cfg = Config()
    # NOTE: '%' is interpolation syntax in Alembic's options; a path may contain one.
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    # NOTE: passed as an attribute, not a main option, so that '%' in a password survives.
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database to ``revision``; call it outside a running event loop."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


@functools.cache
def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def require_head(repository: ReportRepository) -> str | None:
    """The database's revision; SchemaNotReady unless it is the latest migration."""
    revision, head = await repository.schema_revision(), head_revision()
    if revision != head:
        raise SchemaNotReady(
            f"database at migration {revision or 'none'}, expected {head}: "
            "run `reports-service migrate`"
        )
    return revision
