"""JWT verification: HS256 with a shared secret, or keys from a JWKS file or URL, chosen by kid.

The algorithm is fixed by the key, never by the token: HS256 only with ``REPORTS_JWT_SECRET``;
RS256 or PS256 for an RSA key, ES256 for EC P-256, EdDSA for Ed25519, only from the JWKS (and
only the JWK's own ``alg`` when it names one). PyJWT checks signatures and the standard claims.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .access import Grant, InvalidToken, KeysUnavailable, check_patterns
from .config import ENV_PREFIX, Settings, SettingsError
from .records import MAX_SUBJECT_LENGTH

logger = logging.getLogger("reports_service.auth")

JWKS_SETTING = f"{ENV_PREFIX}JWT_JWKS"
MIN_REFETCH_SECONDS = 5.0  # fetches of the JWKS, at most one per this (a TTL shorter wins)
FETCH_TIMEOUT = 5.0  # seconds a JWKS URL has to answer
MAX_JWKS_BYTES = 2**20
READ_SCOPE = "reports:read"
WRITE_SCOPE = "reports:write"
ASYMMETRIC = frozenset({"RS256", "PS256", "ES256", "EdDSA"})

Clock = Callable[[], float]


class JWKSError(Exception):
    """A JWKS that cannot be read or used; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    """A public key from the JWKS and the algorithms it may verify."""

    key: Any
    algorithms: tuple[str, ...]


def _allowed(jwk: dict[str, Any]) -> tuple[str, ...]:
    """The algorithms a JWK may verify, by its type: none for a type we do not take."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        algorithms: tuple[str, ...] = ("RS256", "PS256")
    elif kty == "EC" and crv == "P-256":
        algorithms = ("ES256",)
    elif kty == "OKP" and crv == "Ed25519":
        algorithms = ("EdDSA",)
    else:
        return ()  # NOTE: `oct` too: HS256 is for the configured secret only.
    if "alg" in jwk:
        return (jwk["alg"],) if jwk["alg"] in algorithms else ()
    return algorithms


def _verifying_key(jwk: Any) -> tuple[str, VerifyingKey] | None:
    """A JWK's kid and key, or None when it has no kid, is no signing key, or is unusable."""
    if not isinstance(jwk, dict):
        return None
    kid = jwk.get("kid")
    algorithms = _allowed(jwk)
    if not (isinstance(kid, str) and kid and algorithms) or jwk.get("use", "sig") != "sig":
        return None
    try:
        key = jwt.PyJWK(jwk, algorithm=algorithms[0]).key
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        key = key.public_key()  # NOTE: a JWKS that (wrongly) holds a private key: use its half
    return kid, VerifyingKey(key, algorithms)


def parse_jwks(data: bytes) -> dict[str, VerifyingKey]:
    """The usable signing keys of a JWKS document, by kid; JWKSError when there are none."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise JWKSError("not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JWKSError("not a JWKS (a JSON object with a `keys` list)")
    keys: dict[str, VerifyingKey] = {}
    for jwk in document["keys"]:
        found = _verifying_key(jwk)
        if found is not None:
            keys.setdefault(*found)
    if not keys:
        raise JWKSError("no usable signing key (RSA, EC P-256 or Ed25519, each with a kid)")
    return keys


def _is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme.lower() in ("http", "https")


def _shown(source: str) -> str:
    """``source`` for the log: a URL without credentials or query."""
    if not _is_url(source):
        return source
    parts = urllib.parse.urlsplit(source)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def read_jwks(source: str) -> dict[str, VerifyingKey]:
    """The keys of a JWKS file or http(s) URL (blocking: run it in a thread)."""
    try:
        if _is_url(source):
            # NOTE: the scheme is checked above: no file:// or other handlers are reached.
            with urllib.request.urlopen(source, timeout=FETCH_TIMEOUT) as response:  # noqa: S310
                data = response.read(MAX_JWKS_BYTES + 1)
        else:
            with Path(source).open("rb") as file:
                data = file.read(MAX_JWKS_BYTES + 1)
    except urllib.error.HTTPError as error:
        error.close()
        raise JWKSError(f"HTTP {error.code}") from None
    except urllib.error.URLError as error:
        raise JWKSError(str(error.reason)) from None
    except (OSError, ValueError, http.client.HTTPException) as error:
        raise JWKSError(str(error) or type(error).__name__) from None
    if len(data) > MAX_JWKS_BYTES:
        raise JWKSError(f"larger than {MAX_JWKS_BYTES} bytes")
    return parse_jwks(data)


class KeySet:
    """The keys of a JWKS, read again after ``ttl`` seconds or for an unknown kid.

    Reads happen at most once every MIN_REFETCH_SECONDS (or ``ttl``, if shorter), in a thread,
    one at a time: logins that need the same read wait for it. When a read fails, the keys of
    the last good one stay in use, past the TTL too.
    """

    def __init__(self, source: str, ttl: float, clock: Clock = time.monotonic) -> None:
        self._source = source
        self._ttl = ttl
        self._interval = min(MIN_REFETCH_SECONDS, ttl)
        self._clock = clock
        self._keys: dict[str, VerifyingKey] = {}
        self._loaded_at = -math.inf  # last good read
        self._tried_at = -math.inf  # last read, good or not
        self._failing = False
        self._pending: asyncio.Task[None] | None = None

    def load_now(self) -> None:
        """Read the keys at once (start-up, for a file); JWKSError when they cannot be used."""
        self._keys = read_jwks(self._source)
        self._loaded_at = self._tried_at = self._clock()

    async def key(self, kid: str) -> VerifyingKey:
        """The key named ``kid``. InvalidToken for a kid the provider does not publish;
        KeysUnavailable when the JWKS cannot be read and no kept key has that kid."""
        now = self._clock()
        stale = now - self._loaded_at >= self._ttl
        may_read = now - self._tried_at >= self._interval
        if (stale or kid not in self._keys) and (may_read or self._pending is not None):
            await self._read()
        if kid in self._keys:
            return self._keys[kid]
        if self._failing:
            raise KeysUnavailable(f"JWKS {_shown(self._source)} cannot be read")
        raise InvalidToken(f"unknown kid {_brief(kid)}")

    async def _read(self) -> None:
        if self._pending is None:
            self._tried_at = self._clock()
            self._pending = asyncio.create_task(self._fetch())
        # NOTE: shielded: a login that gives up does not cancel the read the others wait for.
        await asyncio.shield(self._pending)

    async def _fetch(self) -> None:
        try:
            keys = await asyncio.to_thread(read_jwks, self._source)
        except JWKSError as error:
            self._failing = True
            logger.warning("JWKS %s cannot be read: %s", _shown(self._source), error)
        else:
            self._keys, self._loaded_at, self._failing = keys, self._clock(), False
        finally:
            self._pending = None


def _brief(value: object) -> str:
    """A value from a token, short enough for the log."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _timestamp(payload: dict[str, Any], claim: str) -> datetime | None:
    value = payload.get(claim)
    if value is None and claim not in payload:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidToken(f"claim {claim!r} is not a number")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidToken(f"claim {claim!r} is out of range") from None


def grant_from(payload: dict[str, Any], leeway: float) -> Grant:
    """The grant of a verified JWT's claims; InvalidToken when one is malformed."""
    sub = payload.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUBJECT_LENGTH:
        raise InvalidToken(f"claim 'sub' must be a string of 1 to {MAX_SUBJECT_LENGTH} characters")
    scope = payload.get("scope", "")
    if not isinstance(scope, str):
        raise InvalidToken("claim 'scope' must be a string")
    scopes = scope.split()
    reports = payload.get("reports", ["*"])
    if not isinstance(reports, list) or not all(isinstance(p, str) for p in reports):
        raise InvalidToken("claim 'reports' must be a list of strings")
    try:
        patterns = check_patterns(reports)
    except ValueError as error:
        raise InvalidToken(f"claim 'reports': {error}") from None
    return Grant(
        sub,
        "jwt",
        read=READ_SCOPE in scopes,
        write=WRITE_SCOPE in scopes,
        reports=patterns,
        expires_at=_timestamp(payload, "exp"),
        issued_at=_timestamp(payload, "iat"),
        leeway=leeway,
    )


class JWTVerifier:
    """Checks JWTs against the configured keys (see :class:`reports_service.access.Verifier`)."""

    def __init__(self, settings: Settings, *, clock: Clock = time.monotonic) -> None:
        self._secret = settings.jwt_secret
        self._jwks = (
            KeySet(settings.jwt_jwks, settings.jwt_jwks_ttl, clock) if settings.jwt_jwks else None
        )
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._leeway = settings.jwt_leeway

    @property
    def jwks(self) -> KeySet | None:
        return self._jwks

    async def verify(self, token: str) -> Grant:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise InvalidToken(f"malformed JWT: {error}") from None
        alg, kid = header.get("alg"), header.get("kid")
        key: Any
        if alg == "HS256":
            if not self._secret:
                raise InvalidToken("HS256 JWT, but no shared secret is configured")
            key = self._secret
        elif isinstance(alg, str) and alg in ASYMMETRIC:
            if self._jwks is None:
                raise InvalidToken(f"{alg} JWT, but no JWKS is configured")
            if not isinstance(kid, str) or not kid:
                raise InvalidToken("JWT without a kid")
            found = await self._jwks.key(kid)
            if alg not in found.algorithms:
                raise InvalidToken(f"algorithm {alg} not allowed for kid {_brief(kid)}")
            key = found.key
        else:
            raise InvalidToken(f"algorithm {_brief(alg)} not allowed")
        return grant_from(self._decode(token, key, alg), self._leeway)

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={
                    "require": ["exp"],
                    "verify_aud": self._audience is not None,
                    "verify_sub": False,  # NOTE: checked by grant_from, with a clearer reason
                    "enforce_minimum_key_length": True,
                },
            )
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError) as error:
            raise InvalidToken(f"JWT refused: {error}") from None


def verifier_for(settings: Settings, *, clock: Clock = time.monotonic) -> JWTVerifier | None:
    """The verifier the settings ask for, or None when no JWT keys are configured.

    A JWKS file is read now: SettingsError when it is missing or holds no usable key. A URL is
    fetched at the first login that needs it (the provider may be down at start-up).
    """
    if not (settings.jwt_secret or settings.jwt_jwks):
        return None
    verifier = JWTVerifier(settings, clock=clock)
    if verifier.jwks is not None and not _is_url(settings.jwt_jwks):
        try:
            verifier.jwks.load_now()
        except JWKSError as error:
            raise SettingsError(f"{JWKS_SETTING}={settings.jwt_jwks}: {error}") from None
    return verifier
