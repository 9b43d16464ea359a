"""Every setting of the service: its environment variable, default and meaning, in one place."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "REPORTS_"
MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class Bounds:
    """The values a number may take: ``low <= value <= high``; ``value > low`` if ``open``."""

    low: float
    high: float = math.inf
    open: bool = False

    def problem(self, value: float) -> str | None:
        """Why ``value`` is out of range, or None when it is in range."""
        if not math.isfinite(value):
            return "must be a finite number"
        if math.isfinite(self.high) and not self.low <= value <= self.high:
            return f"must be between {self.low:g} and {self.high:g}"
        if self.open and value <= self.low:
            return f"must be more than {self.low:g}"
        if value < self.low:
            return f"must be at least {self.low:g}"
        return None


POSITIVE = Bounds(0, open=True)
AT_LEAST_ONE = Bounds(1)
NON_NEGATIVE = Bounds(0)
PORT = Bounds(1, 65535)


def setting(default: Any, doc: str, bounds: Bounds | None = None, *, secret: bool = False) -> Any:
    """A dataclass field that carries its one-line documentation and, for a number, its range;
    a ``secret`` one is left out of the settings' repr."""
    return field(default=default, repr=not secret, metadata={"doc": doc, "bounds": bounds})


@dataclass(frozen=True, slots=True)
class Settings:
    """Settings read from ``REPORTS_*`` environment variables (field ``x`` <- ``REPORTS_X``)."""

    database_url: str = setting(
        "sqlite+aiosqlite:///reports.db",
        "SQLAlchemy URL: sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB",
    )
    auth_timeout: float = setting(
        10.0, "seconds a /reports client has to send its token before it is closed (1008)", POSITIVE
    )
    handshake_timeout: float = setting(
        5.0, "seconds a client has to send a request's head before it is closed", POSITIVE
    )
    max_pending: int = setting(
        1000,
        "connections one process holds before their handshake or token is done; more get 503",
        AT_LEAST_ONE,
    )
    max_pending_per_address: int = setting(
        100, "of those, connections from one client address; more get 503", AT_LEAST_ONE
    )
    sqlite_busy_timeout: float = setting(
        5.0,
        "seconds a SQLite writer waits for another writer's lock before giving up",
        NON_NEGATIVE,
    )
    sqlite_synchronous: str = setting(
        "FULL",
        "FULL: an acknowledged write survives a power failure; NORMAL: only a crash of the "
        "process (faster)",
    )
    max_message_bytes: int = setting(
        65536, "largest WebSocket message accepted; a larger one is closed with 1009", AT_LEAST_ONE
    )
    host: str = setting("127.0.0.1", "address `reports-service serve` listens on")
    port: int = setting(8000, "port `reports-service serve` listens on", PORT)
    workers: int = setting(1, "uvicorn worker processes for `reports-service serve`", AT_LEAST_ONE)
    ws_ping_interval: float = setting(20.0, "seconds between server pings to each client", POSITIVE)
    ws_ping_timeout: float = setting(
        20.0, "seconds to wait for a pong before dropping a client", POSITIVE
    )
    changelog_retention: int = setting(
        10_000,
        "changes kept for resuming subscribers; older ones get a `resync` event",
        AT_LEAST_ONE,
    )
    feed_interval: float = setting(
        0.01,
        "seconds between checks for changes committed by other processes, when polling",
        POSITIVE,
    )
    feed_wakeup: str = setting(
        "auto",
        "auto: the database wakes the change feed (SQLite: inotify, where the OS has it, else "
        "polling; PostgreSQL: LISTEN); poll: it checks every feed_interval",
    )
    cache_mb: float = setting(
        64.0,
        "MiB of reports each process keeps in memory for queries (0: none); "
        "kept correct by the changelog",
        NON_NEGATIVE,
    )
    subscriber_queue: int = setting(
        1000, "messages queued for one slow subscriber before it is closed (4001)", AT_LEAST_ONE
    )
    replay_limit: int = setting(
        100_000,
        "versions a resume with since may reach back (sent in paced batches); further back, "
        "the subscribe fails and the client fetches again",
        AT_LEAST_ONE,
    )
    sse_keepalive: float = setting(
        15.0, "seconds between keep-alive comments on an idle /api/changes stream", POSITIVE
    )
    send_timeout: float = setting(
        10.0,
        "seconds a send may wait on a client that stopped reading before it is dropped",
        POSITIVE,
    )
    max_connections: int = setting(
        10_000, "WebSocket connections one process accepts; more are closed with 1013", AT_LEAST_ONE
    )
    max_connections_per_token: int = setting(
        100,
        "connections one access token may hold at once; more are closed with 1008",
        AT_LEAST_ONE,
    )
    rate_limit: float = setting(
        100.0,
        "messages a second one connection may send (0: no limit); more get an error",
        NON_NEGATIVE,
    )
    rate_burst: float = setting(
        200.0, "messages one connection may send at once, in a burst", AT_LEAST_ONE
    )
    rate_strikes: int = setting(
        50,
        "messages refused in a row for rate before the connection is closed (1008)",
        AT_LEAST_ONE,
    )
    idle_timeout: float = setting(
        300.0,
        "seconds without a message before a connection with no subscription is closed (0: never)",
        NON_NEGATIVE,
    )
    token_recheck: float = setting(
        2.0, "seconds between checks that closes connections of revoked tokens (1008)", POSITIVE
    )
    auth_failures: int = setting(
        5,
        "failed logins from one address before it is refused for auth_failure_window (0: no limit)",
        NON_NEGATIVE,
    )
    auth_failure_window: float = setting(
        60.0, "seconds failed logins are remembered, and an address refused for", NON_NEGATIVE
    )
    allowed_origins: str = setting(
        "", "comma-separated Origins browsers may connect from (the service's own always; *: any)"
    )
    pool_size: int = setting(
        10, "database connections each process keeps in its pool", AT_LEAST_ONE
    )
    pool_timeout: float = setting(
        5.0,
        "seconds a query waits for a free pooled connection before it fails (unavailable)",
        NON_NEGATIVE,
    )
    shutdown_grace: int = setting(
        10,
        "seconds `serve` waits for connections to close on SIGTERM before it exits",
        NON_NEGATIVE,
    )
    jwt_secret: str = setting(
        "",
        "shared secret (at least 32 bytes) that HS256 JWTs are signed with (empty: none)",
        secret=True,
    )
    jwt_jwks: str = setting(
        "", "JWKS of the keys RS256/PS256/ES256/EdDSA JWTs are signed with: a file or http(s) URL"
    )
    jwt_jwks_ttl: float = setting(
        300.0, "seconds a fetched JWKS is used before it is fetched again", POSITIVE
    )
    jwt_audience: str = setting("", "when set, a JWT's `aud` must include it")
    jwt_issuer: str = setting("", "when set, a JWT's `iss` must be it")
    jwt_leeway: float = setting(
        30.0, "seconds of clock skew allowed on a JWT's `exp`, `nbf` and `iat`", NON_NEGATIVE
    )
    token_expiry_warning: float = setting(
        30.0, "seconds before a token expires that `token.expiring` is pushed", NON_NEGATIVE
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = setting("text", "text, or json for one JSON object a line")

    def __post_init__(self) -> None:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(self.database_url)
        except ArgumentError:
            # NOTE: the value is not shown: it may hold a password.
            raise SettingsError(
                f"{ENV_PREFIX}DATABASE_URL is not a URL: use sqlite+aiosqlite:///FILE or "
                "postgresql+asyncpg://USER@HOST/DB"
            ) from None
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problem = self.problem(f.name, value)
            if problem is not None:
                raise SettingsError(f"{ENV_PREFIX}{f.name.upper()}={value}: {problem}")
        if self.jwt_secret and len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            # NOTE: the value is not shown: it is a secret.
            raise SettingsError(
                f"{ENV_PREFIX}JWT_SECRET is {len(self.jwt_secret.encode())} bytes: "
                f"use at least {MIN_SECRET_BYTES} random bytes"
            )
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"{ENV_PREFIX}LOG_LEVEL={self.log_level!r}: use DEBUG, INFO, ...")
        if self.sqlite_synchronous.upper() not in ("FULL", "NORMAL"):
            raise SettingsError(
                f"{ENV_PREFIX}SQLITE_SYNCHRONOUS={self.sqlite_synchronous!r}: use FULL or NORMAL"
            )
        if self.feed_wakeup not in ("auto", "poll"):
            raise SettingsError(f"{ENV_PREFIX}FEED_WAKEUP={self.feed_wakeup!r}: use auto or poll")
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"{ENV_PREFIX}LOG_FORMAT={self.log_format!r}: use text or json")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); unknown values fail loudly."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw, type(f.default))
        return cls(**values)

    @classmethod
    def problem(cls, name: str, value: Any) -> str | None:
        """Why ``value`` is out of the range of setting ``name``, or None when it may be used."""
        bounds: Bounds | None = cls.__dataclass_fields__[name].metadata["bounds"]
        return None if bounds is None else bounds.problem(value)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(environment variable, default, doc) for every setting."""
        return [
            (ENV_PREFIX + f.name.upper(), str(f.default), f.metadata["doc"])
            for f in dataclasses.fields(cls)
        ]

    def masked_database_url(self) -> str:
        """The database URL with any password replaced, safe to log."""
        from sqlalchemy.engine import make_url

        return make_url(self.database_url).render_as_string(hide_password=True)


class SettingsError(ValueError):
    """A setting's value cannot be used."""


def _convert(name: str, raw: str, kind: type) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}"
        ) from None
    return value
