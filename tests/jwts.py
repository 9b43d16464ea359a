"""Real keys, real signed JWTs and a JWKS served over HTTP on 127.0.0.1, for the tests.

``mint(key, claims, kid=..., alg=...)`` signs a token; ``public_jwk(key, kid)`` is the JWK a
provider would publish; :class:`JWKSServer` publishes a mutable JWKS and counts its requests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

SECRET = "s" * 40  # an HS256 secret long enough for Settings (32 bytes at least)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def ed25519_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(key: PrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    """The public JWK of ``key`` with its ``kid`` (and e.g. ``alg="PS256"``, ``use="sig"``)."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, **extra}


def jwks(*keys: Mapping[str, Any]) -> dict[str, Any]:
    return {"keys": [dict(k) for k in keys]}


def write_jwks(path: Path, *keys: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(jwks(*keys)))
    return path


def claims(
    sub: str = "alice",
    *,
    scope: Any = "reports:read",
    lifetime: float = 300,
    **extra: Any,
) -> dict[str, Any]:
    """Ordinary claims: ``sub``, ``iat`` now, ``exp`` ``lifetime`` seconds on, and ``scope``;
    ``extra`` adds or replaces (``None`` leaves a claim out)."""
    now = int(time.time())
    found: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(lifetime), "scope": scope}
    found.update(extra)
    return {name: value for name, value in found.items() if value is not None}


def mint(
    key: PrivateKey | str | bytes,
    payload: Mapping[str, Any] | None = None,
    *,
    kid: str | None = None,
    alg: str | None = None,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """A JWT of ``payload`` (default :func:`claims`) signed with ``key``: a private key (its
    algorithm by default: RS256, ES256 or EdDSA) or an HS256 secret."""
    if alg is None:
        if isinstance(key, str | bytes):
            alg = "HS256"
        elif isinstance(key, rsa.RSAPrivateKey):
            alg = "RS256"
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            alg = "ES256"
        else:
            alg = "EdDSA"
    header = dict(headers or {})
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(dict(payload or claims()), key, algorithm=alg, headers=header or None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: Mapping[str, Any], payload: Mapping[str, Any], signature: bytes = b"") -> str:
    """A JWT put together by hand, signed or not: what an attacker can send."""
    parts = [json.dumps(dict(header)).encode(), json.dumps(dict(payload)).encode()]
    return ".".join([*map(b64, parts), b64(signature)])


def hs256(header: Mapping[str, Any], payload: Mapping[str, Any], secret: bytes) -> str:
    """An HS256 JWT signed with any bytes, even a public key's (which PyJWT refuses to do)."""
    unsigned = forge(header, payload).rstrip(".")
    signature = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
    return f"{unsigned}.{b64(signature)}"


class JWKSServer:
    """A JWKS on ``http://127.0.0.1:PORT/jwks.json``: ``publish`` changes it, ``stop`` and
    ``start`` take it down and up again (same port), ``requests`` counts the GETs it served."""

    def __init__(self, keys: Sequence[Mapping[str, Any]] = ()) -> None:
        self._document = json.dumps(jwks(*keys)).encode()
        self._lock = threading.Lock()
        self.requests = 0
        self.status = 200  # what to answer, e.g. 500 for a broken provider
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def publish(self, *keys: Mapping[str, Any]) -> None:
        with self._lock:
            self._document = json.dumps(jwks(*keys)).encode()

    def _answer(self) -> tuple[int, bytes]:
        with self._lock:
            self.requests += 1
            return self.status, self._document

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = owner._answer()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving: connections to the port are refused until ``start``."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> JWKSServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
