"""Who may see what: the grant a token carries, one model for database tokens and JWTs.

A :class:`Grant` says who a connection is (``subject``), whether it may read and write, and
which reports (``fnmatch`` patterns, matched case-sensitively). :class:`Authenticator` turns a
token into a grant: a JWT-shaped token is verified as a JWT, anything else is looked up as a
database token. What the database answers is kept for a short while (:class:`Recent`), so a
burst of logins does not need a pooled connection each.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, Literal, Protocol, TypeVar

from .records import TokenInfo, hash_token, utcnow

EVERY_REPORT = ("*",)
MAX_TOKEN_BYTES = 8192
MAX_PATTERNS = 100
MAX_PATTERN_LENGTH = 200

# NOTE: three base64url segments (the third, the signature, empty for `alg: none`); database
#   tokens are token_urlsafe(), which has no dots.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

Kind = Literal["token", "jwt", "none"]  # none: a route that does not authenticate


class InvalidToken(Exception):
    """A token that does not authenticate; ``str()`` says why, for the log (never the token)."""


class KeysUnavailable(Exception):
    """No key can check this token now (the JWKS cannot be fetched): retry later."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What one authenticated token may do, and until when.

    ``expires_at`` is what the token says; ``deadline`` is when the service stops honouring it
    (``expires_at`` plus the clock-skew leeway for JWTs), and ``ends`` the same as POSIX time.
    """

    subject: str
    kind: Kind = "token"
    read: bool = True
    write: bool = False
    reports: tuple[str, ...] = EVERY_REPORT
    expires_at: datetime | None = None
    issued_at: datetime | None = None
    leeway: float = 0.0
    _match: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    expires: float = field(init=False, repr=False, compare=False)  # POSIX time; inf: never
    ends: float = field(init=False, repr=False, compare=False)  # the deadline, likewise

    def __post_init__(self) -> None:
        matcher = None if "*" in self.reports else _matcher(self.reports)
        object.__setattr__(self, "_match", matcher)
        expires = math.inf if self.expires_at is None else self.expires_at.timestamp()
        object.__setattr__(self, "expires", expires)
        object.__setattr__(self, "ends", expires + self.leeway)

    @property
    def identity(self) -> tuple[Kind, str]:
        """Two grants of one identity may replace each other on a connection (refresh)."""
        return (self.kind, self.subject)

    @property
    def key(self) -> str:
        """What the per-token connection cap counts."""
        return self.subject if self.kind == "token" else f"jwt:{self.subject}"

    @property
    def deadline(self) -> datetime | None:
        if self.expires_at is None:
            return None
        return self.expires_at + timedelta(seconds=self.leeway)

    def covers(self, name: str) -> bool:
        """Whether ``name`` is inside this grant's report patterns."""
        return self._match is None or self._match.match(name) is not None

    def can_read(self, name: str) -> bool:
        return self.read and self.covers(name)

    def can_write(self, name: str) -> bool:
        return self.write and self.covers(name)

    def like(self) -> tuple[str, ...] | None:
        """SQL LIKE patterns that match at least the readable names (None: every name), so a
        query can skip most hidden rows; :meth:`can_read` still decides."""
        return None if self._match is None else tuple(_like(p) for p in self.reports)


@functools.lru_cache(maxsize=1024)
def _matcher(patterns: tuple[str, ...]) -> re.Pattern[str]:
    # NOTE: one regex for all patterns, shared by every grant with the same patterns.
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _like(pattern: str) -> str:
    """A LIKE pattern (escape ``\\``) matching every name ``pattern`` matches, and maybe more."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char == "[" and (end := _bracket_end(pattern, i)) > 0:
            out.append("_")
            i = end
        else:
            out.append("\\" + char if char in "%_\\" else char)
        i += 1
    return "".join(out)


def _bracket_end(pattern: str, start: int) -> int:
    """The index of the ``]`` closing the set that opens at ``start``; 0 when none (literal)."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "!":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    end = pattern.find("]", i)
    return max(end, 0)


def check_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    """``patterns`` as a grant keeps them; ValueError with a clear message when one is bad."""
    if not patterns:
        raise ValueError("give at least one report pattern (`*` for every report)")
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"at most {MAX_PATTERNS} report patterns")
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("a report pattern must be a non-empty string")
        if len(pattern) > MAX_PATTERN_LENGTH or "\x00" in pattern:
            raise ValueError(
                f"a report pattern must be at most {MAX_PATTERN_LENGTH} characters, without NUL"
            )
    return tuple(dict.fromkeys(patterns))


def looks_like_jwt(token: str) -> bool:
    return _JWT_SHAPE.fullmatch(token) is not None


def grant_of(info: TokenInfo) -> Grant:
    """The grant of a live database token."""
    return Grant(
        info.name,
        "token",
        read=True,
        write=info.can_write,
        reports=info.reports,
        expires_at=info.expires_at,
        issued_at=info.created_at,
    )


class Verifier(Protocol):
    """Checks JWTs (see :mod:`reports_service.jwt_keys`)."""

    async def verify(self, token: str) -> Grant:
        """The grant of a valid JWT; raises InvalidToken, or KeysUnavailable."""
        ...


class TokenStore(Protocol):
    """What the authenticator needs of the repository."""

    def authenticate(self, token: str) -> Awaitable[TokenInfo | None]: ...
    def subject_revoked_at(self, subject: str) -> Awaitable[datetime | None]: ...


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Recent(Generic[K, V]):
    """Answers of a lookup, each kept ``ttl`` seconds from when it was asked (0: not kept), at
    most ``size`` of them; concurrent lookups of one key share one query."""

    def __init__(self, ttl: float, *, size: int = 10_000, keep: Callable[[V], bool]) -> None:
        self._ttl = ttl
        self._size = size
        self._keep = keep
        self._kept: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._asking: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K, ask: Callable[[], Awaitable[V]]) -> V:
        kept = self._kept.get(key)
        if kept is not None and kept[0] > time.monotonic():
            return kept[1]
        asking = self._asking.get(key)
        if asking is None:
            asking = self._asking[key] = asyncio.ensure_future(ask())
            asking.add_done_callback(functools.partial(self._answered, key, time.monotonic()))
        # NOTE: shielded: one client that leaves must not cancel the others' answer.
        return await asyncio.shield(asking)

    def _answered(self, key: K, asked: float, answer: asyncio.Future[V]) -> None:
        del self._asking[key]
        if answer.cancelled() or answer.exception() is not None or self._ttl <= 0:
            return
        if self._keep(value := answer.result()):
            self._kept[key] = (asked + self._ttl, value)
            self._kept.move_to_end(key)
            while len(self._kept) > self._size:
                self._kept.popitem(last=False)


class Authenticator:
    """Turns a token into a :class:`Grant`, whichever kind it is.

    A live database token and a subject's revocation are kept ``ttl`` seconds (the token
    guard's interval: a revocation takes effect within it, as for open connections); an
    unknown token is asked again every time, so a token created elsewhere works at once.
    """

    def __init__(self, store: TokenStore, verifier: Verifier | None, *, ttl: float = 0.0) -> None:
        self._store = store
        self._verifier = verifier
        self._tokens: Recent[str, TokenInfo | None] = Recent(ttl, keep=_known)
        self._revoked: Recent[str, datetime | None] = Recent(ttl, keep=_always)

    async def authenticate(self, token: str) -> Grant:
        """The token's grant. Raises InvalidToken, KeysUnavailable, or ServiceError (the
        database cannot be reached)."""
        if len(token.encode("utf-8", "surrogatepass")) > MAX_TOKEN_BYTES:
            raise InvalidToken(f"token longer than {MAX_TOKEN_BYTES} bytes")
        if looks_like_jwt(token):
            return await self._jwt(token)
        info = await self._tokens.get(hash_token(token), lambda: self._store.authenticate(token))
        if info is None or (info.expires_at is not None and info.expires_at <= utcnow()):
            raise InvalidToken("unknown, revoked or expired token")
        return grant_of(info)

    async def _jwt(self, token: str) -> Grant:
        if self._verifier is None:
            raise InvalidToken("a JWT, but no JWT keys are configured")
        grant = await self._verifier.verify(token)
        subject = grant.subject
        revoked = await self._revoked.get(subject, lambda: self._store.subject_revoked_at(subject))
        if revoked is not None and (grant.issued_at is None or grant.issued_at < revoked):
            raise InvalidToken(f"subject {grant.subject!r} revoked")
        return grant


def _known(info: TokenInfo | None) -> bool:
    return info is not None


def _always(_answer: object) -> bool:
    return True
