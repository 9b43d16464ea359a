"""The only module that issues SQL: reports and tokens, read and written with SQLAlchemy Core."""

from __future__ import annotations

import functools
import hmac
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar, cast

from sqlalchemy import Table, bindparam, delete, exc, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import WRITE_OPTIONS
from .errors import DatabaseUnavailable, DuplicateReports, DuplicateToken, SchemaNotReady
from .models import ApiToken, Report, utcnow
from .records import NewReport, TokenInfo, hash_token
from .records import Report as ReportRecord

P = ParamSpec("P")
T = TypeVar("T")

reports = cast(Table, Report.__table__)
tokens = cast(Table, ApiToken.__table__)

_REPORT_COLUMNS = (
    reports.c.name,
    reports.c.title,
    reports.c.content,
    reports.c.created_at,
    reports.c.updated_at,
)
_GET_REPORT = select(*_REPORT_COLUMNS).where(reports.c.name == bindparam("name"))
_AUTHENTICATE = select(tokens.c.name, tokens.c.token_hash).where(
    tokens.c.token_hash == bindparam("token_hash"), tokens.c.revoked_at.is_(None)
)
# NOTE: SQLite allows 32766 bound parameters per statement; stay well below it.
_CHUNK = 500


def _translate_errors(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn driver errors into the service's errors, so callers never see SQLAlchemy."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except exc.DBAPIError as error:
            message = str(error.orig).lower()
            if "no such table" in message or "does not exist" in message:
                raise SchemaNotReady(
                    "the database is not migrated: run `reports-service migrate`"
                ) from error
            if isinstance(error, exc.IntegrityError):
                raise
            raise DatabaseUnavailable(f"database unavailable: {_first_line(error.orig)}") from error
        except (OSError, TimeoutError, exc.TimeoutError) as error:
            raise DatabaseUnavailable(f"database unavailable: {_first_line(error)}") from error

    return wrapper


def _first_line(error: object) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _to_report(row: Any) -> ReportRecord:
    return ReportRecord(row.name, row.title, row.content, row.created_at, row.updated_at)


class ReportRepository:
    """Reports and access tokens in a SQL database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # NOTE: writes go through an engine whose transactions start with BEGIN IMMEDIATE on
        #   SQLite; other backends ignore the option.
        self._writer = engine.execution_options(**WRITE_OPTIONS)

    # -- reports ---------------------------------------------------------------------------

    @_translate_errors
    async def get_report(self, *, name: str) -> ReportRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_GET_REPORT, {"name": name})).first()
        return None if row is None else _to_report(row)

    @_translate_errors
    async def list_reports(self, *, limit: int | None = None) -> list[ReportRecord]:
        stmt = select(*_REPORT_COLUMNS).order_by(reports.c.name).limit(limit)
        async with self.engine.connect() as conn:
            return [_to_report(row) for row in await conn.execute(stmt)]

    @_translate_errors
    async def count_reports(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(reports))).scalar_one())

    @_translate_errors
    async def add_reports(self, items: Sequence[NewReport], *, replace: bool = False) -> int:
        """Add reports in one transaction; with ``replace``, existing names are overwritten."""
        names = [item.name for item in items]
        repeated = sorted(name for name, count in Counter(names).items() if count > 1)
        if repeated:
            raise ValueError(f"report name given more than once: {', '.join(repeated[:5])}")
        now = utcnow()
        rows = [
            {
                "name": i.name,
                "title": i.title,
                "content": i.content,
                "created_at": now,
                "updated_at": now,
            }
            for i in items
        ]
        if not rows:
            return 0
        try:
            async with self._writer.begin() as conn:
                if replace:
                    await conn.execute(self._upsert(conn), rows)
                else:
                    existing = await self._existing_names(conn, names)
                    if existing:
                        raise DuplicateReports(existing)
                    await conn.execute(insert(reports), rows)
        except exc.IntegrityError as error:
            # NOTE: another writer added one of these names after our check (PostgreSQL only;
            #   SQLite's BEGIN IMMEDIATE serialises writers).
            async with self.engine.connect() as conn:
                raise DuplicateReports(await self._existing_names(conn, names)) from error
        return len(rows)

    @_translate_errors
    async def remove_report(self, *, name: str) -> bool:
        async with self._writer.begin() as conn:
            result = await conn.execute(delete(reports).where(reports.c.name == name))
        return bool(result.rowcount)

    async def _existing_names(self, conn: AsyncConnection, names: Sequence[str]) -> list[str]:
        found: list[str] = []
        for start in range(0, len(names), _CHUNK):
            chunk = names[start : start + _CHUNK]
            result = await conn.execute(select(reports.c.name).where(reports.c.name.in_(chunk)))
            found.extend(result.scalars())
        return sorted(found)

    @staticmethod
    def _upsert(conn: AsyncConnection) -> Any:
        dialect_insert = sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert
        stmt = dialect_insert(reports)
        return stmt.on_conflict_do_update(
            index_elements=[reports.c.name],
            set_={
                "title": stmt.excluded.title,
                "content": stmt.excluded.content,
                "updated_at": stmt.excluded.updated_at,
            },
        )

    # -- tokens ----------------------------------------------------------------------------

    @_translate_errors
    async def create_token(self, *, name: str, token: str) -> None:
        try:
            async with self._writer.begin() as conn:
                await conn.execute(
                    insert(tokens).values(
                        name=name, token_hash=hash_token(token), created_at=utcnow()
                    )
                )
        except exc.IntegrityError:
            raise DuplicateToken(
                f"a token named {name!r} (or with that value) exists already"
            ) from None

    @_translate_errors
    async def list_tokens(self) -> list[TokenInfo]:
        stmt = select(tokens.c.name, tokens.c.created_at, tokens.c.revoked_at).order_by(
            tokens.c.created_at, tokens.c.name
        )
        async with self.engine.connect() as conn:
            return [TokenInfo(r.name, r.created_at, r.revoked_at) for r in await conn.execute(stmt)]

    @_translate_errors
    async def revoke_token(self, *, name: str) -> bool:
        stmt = (
            update(tokens)
            .where(tokens.c.name == name, tokens.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        async with self._writer.begin() as conn:
            result = await conn.execute(stmt)
        return bool(result.rowcount)

    @_translate_errors
    async def authenticate(self, token: str) -> str | None:
        """The name of the live token ``token``, or None."""
        wanted = hash_token(token)
        async with self.engine.connect() as conn:
            row = (await conn.execute(_AUTHENTICATE, {"token_hash": wanted})).first()
        if row is None or not hmac.compare_digest(row.token_hash, wanted):
            return None
        return str(row.name)

    @_translate_errors
    async def token_active(self, *, name: str) -> bool:
        stmt = select(tokens.c.id).where(tokens.c.name == name, tokens.c.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            return (await conn.execute(stmt)).first() is not None

    # -- schema ----------------------------------------------------------------------------

    @_translate_errors
    async def schema_revision(self) -> str | None:
        """The Alembic revision the database is at, or None when it was never migrated."""
        async with self.engine.connect() as conn:
            has_table = await conn.run_sync(
                lambda sync: sync.dialect.has_table(sync, "alembic_version")
            )
            if not has_table:
                return None
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()

    async def dispose(self) -> None:
        await self.engine.dispose()


__all__ = ["ReportRepository"]
