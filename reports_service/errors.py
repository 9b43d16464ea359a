"""Errors a user can meet; each message is one line meant for people."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of the errors this service reports to users."""


def first_line(error: object) -> str:
    """The first line of an error's text (drivers' messages run on), or its type's name."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class DatabaseUnavailable(ServiceError):
    """The database cannot be reached or is locked; retrying later can succeed."""

    @classmethod
    def from_error(cls, error: object) -> DatabaseUnavailable:
        return cls(f"database unavailable: {first_line(error)}")


class SchemaNotReady(ServiceError):
    """The database has not been migrated to the schema this code needs."""


def from_driver(error: object) -> ServiceError:
    """The service's error for a driver's error: a missing table means no migration yet."""
    message = str(error).lower()
    if "no such table" in message or "does not exist" in message:
        return SchemaNotReady("the database is not migrated: run `reports-service migrate`")
    return DatabaseUnavailable.from_error(error)


class DuplicateReports(ServiceError):
    """Reports with these names exist already."""

    def __init__(self, names: list[str]) -> None:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        super().__init__(f"report already exists: {shown} (use --replace to overwrite)")


class DuplicateToken(ServiceError):
    """A token with this name exists already."""


class VersionConflict(Exception):
    """A conditional write found the report at another version (None: no such report).

    Not a ServiceError: it is the answer to the request, not a failure of the service.
    """

    def __init__(self, name: str, current: int | None) -> None:
        at = f"is at version {current}" if current is not None else "does not exist"
        super().__init__(f"report {name!r} {at}")
        self.current = current
