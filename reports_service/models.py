"""The schema, as declarative models: the metadata Alembic's autogenerate compares against."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, MetaData, String, Text, TypeDecorator, false
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .records import utcnow

EVERY_REPORT_JSON = '["*"]'  # api_tokens.reports of a token that may see every report

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is UTC:
            return value
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(UTC)")
        return value.astimezone(UTC)

    @staticmethod
    def from_sqlite(stored: str) -> datetime:
        """The value as read back from SQLite, which keeps the UTC time as text, without a zone."""
        return datetime.fromisoformat(stored).replace(tzinfo=UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# NOTE: INTEGER on SQLite so that a primary key stays an alias of the rowid.
Version = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Report(Base):
    """A report, looked up by its unique name."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    title: Mapped[str] = mapped_column(String(500))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    version: Mapped[int] = mapped_column(Version, unique=True, index=True, server_default="0")


class ApiToken(Base):
    """An access token for /reports: only the SHA-256 of the token is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    can_write: Mapped[bool] = mapped_column(server_default=false(), default=False)
    # NOTE: a JSON array of fnmatch patterns: the reports the token may see.
    reports: Mapped[str] = mapped_column(Text, server_default=EVERY_REPORT_JSON)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class RevokedSubject(Base):
    """A JWT subject whose tokens issued before ``revoked_at`` are refused."""

    __tablename__ = "revoked_subjects"

    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReportChange(Base):
    """The changelog: one row per change to ``reports``, written in the same transaction.

    ``version`` grows by one per change across all reports; subscribers resume from it. The row
    keeps the report as it was after the change (before it, for a removal).
    """

    __tablename__ = "report_changes"

    version: Mapped[int] = mapped_column(Version, primary_key=True, autoincrement=False)
    op: Mapped[str] = mapped_column(String(10))
    name: Mapped[str] = mapped_column(String(200), index=True)
    title: Mapped[str] = mapped_column(String(500))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DatabaseEpoch(Base):
    """One row: a random id made once per database by migration 0005.

    Versions say where a client is in one database's changelog; the epoch says which database.
    A database restored from a backup or replaced by a fresh one has another epoch, so a
    resume from a version of the old one gets ``resync`` instead of skipping or repeating.
    """

    __tablename__ = "database_epoch"

    epoch: Mapped[str] = mapped_column(String(32), primary_key=True)
