"""Plain records the repository returns and takes: no SQLAlchemy beyond the repository."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

MAX_NAME_LENGTH = 200
MAX_TITLE_LENGTH = 500
MAX_CONTENT_LENGTH = 1_000_000
MAX_SUBJECT_LENGTH = 200  # a JWT's `sub`, as the service takes and stores it


@dataclass(frozen=True, slots=True)
class Report:
    """A stored report."""

    name: str
    title: str
    content: str
    created_at: datetime
    updated_at: datetime
    version: int


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the changelog: what happened to which report, at which version."""

    version: int
    op: str  # "added", "updated" or "removed"
    report: Report
    changed_at: datetime

    def __hash__(self) -> int:
        # NOTE: the key of event_frame's cache, looked up once per subscriber a change is
        #   pushed to: the version alone, not the generated hash of every field and the report's.
        return hash(self.version)


@dataclass(frozen=True, slots=True)
class NewReport:
    """A report to add: checked on construction, so a bad one never reaches the database."""

    name: str
    title: str
    content: str

    def __post_init__(self) -> None:
        for field, value, limit in (
            ("name", self.name, MAX_NAME_LENGTH),
            ("title", self.title, MAX_TITLE_LENGTH),
            ("content", self.content, MAX_CONTENT_LENGTH),
        ):
            if not isinstance(value, str):
                raise ValueError(f"report {field} must be a string, not {type(value).__name__}")
            if len(value) > limit:
                raise ValueError(f"report {field} is longer than {limit} characters")
            if "\x00" in value:
                raise ValueError(f"report {field} contains a NUL character")
        if not self.name.strip():
            raise ValueError("report name must not be empty")
        if self.name != self.name.strip():
            raise ValueError(f"report name {self.name!r} has leading or trailing spaces")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What is shown of a token: never the token itself."""

    name: str
    created_at: datetime
    revoked_at: datetime | None
    can_write: bool
    reports: tuple[str, ...] = ("*",)  # fnmatch patterns of the reports it may see
    expires_at: datetime | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


def hash_token(token: str) -> str:
    """The SHA-256 of a token; tokens are random, so an unsalted hash is enough."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)
