"""JWT authentication against a running server: real keys, real signed tokens, real clients.

Every refusal is its own test. The JWT checks do not depend on the database, so they run on
SQLite only; what reads the database (a login, the handshake header) runs on both backends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response

from .conftest import TOKEN
from .jwts import (
    SECRET,
    JWKSServer,
    PrivateKey,
    b64,
    claims,
    ec_key,
    ed25519_key,
    forge,
    hs256,
    mint,
    public_jwk,
    rsa_key,
    write_jwks,
)
from .server import ROOT, Server, free_port
from .waiting import eventually

EC, OTHER_EC, RSA, ED = ec_key(), ec_key(), rsa_key(), ed25519_key()
AUDIENCE, ISSUER = "reports-e2e", "https://idp.example"
LOGIN_WITHIN = 5.0  # seconds a login's answer or refusal may take

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
Start = Callable[..., Server]
Outcome = str | tuple[int, str]
REPORT1 = '{"report":"Report 1"}'
INVALID = (1008, "invalid token")


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    return write_jwks(
        tmp_path / "jwks.json",
        public_jwk(EC, "ec-1"),
        public_jwk(OTHER_EC, "ec-2"),
        public_jwk(RSA, "rsa-1"),
        public_jwk(ED, "ed-1"),
    )


@pytest.fixture
def start(make_server: Start, jwks_file: Path) -> Start:
    """Start a server that takes JWTs from the JWKS file and HS256 with SECRET."""

    def started(**settings: str) -> Server:
        keys = {"jwt_jwks": str(jwks_file), "jwt_secret": SECRET, "jwt_leeway": "0"}
        return make_server(**{**keys, **settings})

    return started


@pytest.fixture
def secured(start: Start) -> Server:
    return start()


async def login(server: Server, first: str | None, path: str = "/reports") -> Outcome:
    """What `report1` gets after the first message ``first`` (None: nothing is sent): the
    answer, or the close code and reason when the connection is closed without one."""
    async with websockets.connect(server.url + path) as ws:
        with contextlib.suppress(ConnectionClosed):  # NOTE: closed already: nothing to send to
            if first is not None:
                await ws.send(first)
                await ws.send("report1")
        try:
            return str(await asyncio.wait_for(ws.recv(), LOGIN_WITHIN))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, closed
            return closed.rcvd.code, closed.rcvd.reason


async def assert_refused(server: Server, token: str, why: str) -> None:
    """``token`` is refused like a wrong token, for the reason ``why`` (the server's log)."""
    assert await login(server, token) == INVALID
    line = await eventually(lambda: logged(server, "login refused for 127.0.0.1: "))
    assert why in line, line
    assert token not in server.log()


def logged(server: Server, fragment: str) -> str:
    """The last line of the server's log that contains ``fragment``; empty when none."""
    found = [line for line in server.log().splitlines() if fragment in line]
    return found[-1] if found else ""


def final_log(server: Server) -> str:
    """The whole log of ``server``, once it has stopped (every connection's lines are in)."""
    server.stop()
    return server.log_path.read_text(errors="replace")


def tampered(token: str, **changes: Any) -> str:
    """``token`` with its payload changed and its signature kept."""
    header, payload, signature = token.split(".")
    padded = payload + "=" * (-len(payload) % 4)
    claims_of = json.loads(base64.urlsafe_b64decode(padded))
    return ".".join([header, b64(json.dumps({**claims_of, **changes}).encode()), signature])


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- every refusal, each its own test


@sqlite_only
async def test_alg_none_is_refused(secured: Server) -> None:
    token = forge({"alg": "none", "typ": "JWT"}, claims())
    await assert_refused(secured, token, "algorithm 'none' not allowed")


@sqlite_only
async def test_hs256_signed_with_the_public_key_is_refused(start: Start) -> None:
    only_jwks = start(jwt_secret="")
    token = hs256({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(), public_pem(RSA))
    await assert_refused(only_jwks, token, "HS256 JWT, but no shared secret")


@sqlite_only
async def test_tampered_payload_is_refused(secured: Server) -> None:
    token = tampered(mint(EC, kid="ec-1"), sub="admin", scope="reports:read reports:write")
    await assert_refused(secured, token, "Signature verification failed")


@sqlite_only
async def test_kid_of_another_key_is_refused(secured: Server) -> None:
    await assert_refused(secured, mint(EC, kid="ec-2"), "Signature verification failed")


@sqlite_only
async def test_unknown_kid_is_refused(secured: Server) -> None:
    await assert_refused(secured, mint(EC, kid="nobody"), "unknown kid 'nobody'")


@sqlite_only
async def test_missing_kid_is_refused(secured: Server) -> None:
    await assert_refused(secured, mint(EC), "JWT without a kid")


@sqlite_only
async def test_exp_missing_is_refused(secured: Server) -> None:
    await assert_refused(secured, mint(EC, claims(exp=None), kid="ec-1"), '"exp" claim')


@sqlite_only
async def test_exp_past_beyond_the_leeway_is_refused(start: Start) -> None:
    server = start(jwt_leeway="5")
    expired = claims(exp=int(time.time()) - 30)
    await assert_refused(server, mint(EC, expired, kid="ec-1"), "Signature has expired")


@sqlite_only
async def test_nbf_in_the_future_is_refused(secured: Server) -> None:
    early = claims(nbf=int(time.time()) + 60)
    await assert_refused(secured, mint(EC, early, kid="ec-1"), "not yet valid")


@sqlite_only
async def test_wrong_audience_is_refused(start: Start) -> None:
    server = start(jwt_audience=AUDIENCE)
    await assert_refused(server, mint(SECRET, claims(aud="another")), "Audience doesn't match")


@sqlite_only
async def test_wrong_issuer_is_refused(start: Start) -> None:
    server = start(jwt_issuer=ISSUER)
    forged = claims(iss="https://evil.example")
    await assert_refused(server, mint(SECRET, forged), "Invalid issuer")


@sqlite_only
async def test_token_over_8_kib_is_refused(secured: Server) -> None:
    token = mint(EC, claims(padding="x" * 8192), kid="ec-1")  # NOTE: valid but for its size
    await assert_refused(secured, token, "token longer than 8192 bytes")


@sqlite_only
async def test_jwt_without_jwt_keys_configured_is_refused(make_server: Start) -> None:
    plain = make_server()
    await assert_refused(plain, mint(SECRET), "no JWT keys are configured")


@sqlite_only
async def test_refused_jwts_count_as_failed_logins(start: Start) -> None:
    server = start(auth_failures="3", auth_failure_window="60")
    good = mint(EC, kid="ec-1")
    assert await login(server, good) == REPORT1
    for bad in (
        forge({"alg": "none"}, claims()),
        tampered(good, sub="mallory"),
        mint(EC, claims(exp=int(time.time()) - 60), kid="ec-1"),
    ):
        assert await login(server, bad) == INVALID
    assert await login(server, good) == (1008, "too many failed logins")
    with pytest.raises(InvalidStatus) as refused:
        headers = {"Authorization": f"Bearer {good}"}
        async with websockets.connect(server.url + "/reports", additional_headers=headers):
            pass
    assert refused.value.response.status_code == 429


@sqlite_only
async def test_refused_bearer_tokens_count_as_failed_logins(start: Start) -> None:
    server = start(auth_failures="2", auth_failure_window="60")
    for bad in (forge({"alg": "none"}, claims()), mint(EC, kid="nobody")):
        assert (await handshake_refused(server, f"Bearer {bad}")).status_code == 401
    assert await login(server, mint(EC, kid="ec-1")) == (1008, "too many failed logins")


# --- accepted


@pytest.mark.parametrize(
    ("key", "kid", "alg"),
    [
        (EC, "ec-1", "ES256"),
        (RSA, "rsa-1", "RS256"),
        (RSA, "rsa-1", "PS256"),
        (ED, "ed-1", "EdDSA"),
        (SECRET, None, "HS256"),
    ],
    ids=["ES256", "RS256", "PS256", "EdDSA", "HS256"],
)
async def test_a_valid_jwt_gets_answers(
    secured: Server, key: PrivateKey | str, kid: str | None, alg: str
) -> None:
    token = mint(key, kid=kid, alg=alg)
    assert await login(secured, token) == REPORT1


@sqlite_only
async def test_audience_and_issuer_that_match_get_answers(start: Start) -> None:
    server = start(jwt_audience=AUDIENCE, jwt_issuer=ISSUER)
    token = mint(RSA, claims(aud=[AUDIENCE, "other"], iss=ISSUER), kid="rsa-1")
    assert await login(server, token) == REPORT1


# --- a JWKS served over HTTP: rotation and outage


TTL = 0.5  # REPORTS_JWT_JWKS_TTL: also the least time between two fetches


@pytest.fixture
def provider() -> Iterator[JWKSServer]:
    with JWKSServer([public_jwk(EC, "old")]) as served:
        yield served


@sqlite_only
async def test_a_key_published_after_start_is_accepted_without_restart(
    make_server: Start, provider: JWKSServer
) -> None:
    server = make_server(jwt_jwks=provider.url, jwt_jwks_ttl=str(TTL), jwt_leeway="0")
    assert await login(server, mint(EC, kid="old")) == REPORT1
    provider.publish(public_jwk(EC, "old"), public_jwk(RSA, "new"))
    await asyncio.sleep(TTL)  # NOTE: a fetch that soon after the last one would be skipped
    assert await login(server, mint(RSA, kid="new")) == REPORT1
    provider.publish(public_jwk(RSA, "new"))  # the provider withdraws the old key
    await asyncio.sleep(TTL)
    assert await login(server, mint(EC, kid="old")) == INVALID
    assert await login(server, mint(RSA, kid="new")) == REPORT1
    assert server.process.poll() is None  # the same server all along


@sqlite_only
async def test_an_unknown_kid_fetches_the_jwks_again_at_most_every_5_seconds(
    make_server: Start, provider: JWKSServer
) -> None:
    server = make_server(jwt_jwks=provider.url, jwt_jwks_ttl="300", auth_failures="0")
    assert await login(server, mint(EC, kid="old")) == REPORT1
    provider.publish(public_jwk(EC, "old"), public_jwk(RSA, "new"))
    new = mint(RSA, kid="new")
    tries: list[Outcome] = []

    async def accepted() -> bool:
        tries.append(await login(server, new))
        return tries[-1] == REPORT1

    # NOTE: long before the TTL, but only once the last fetch is 5 s old; the unknown kid is
    #   refused meanwhile, without a fetch each time.
    await eventually(accepted, within=15, interval=0.2)
    assert provider.requests == 2, provider.requests
    assert tries[0] == INVALID


@sqlite_only
async def test_jwks_outage_is_try_again_later_and_recovers(
    make_server: Start, provider: JWKSServer
) -> None:
    server = make_server(jwt_jwks=provider.url, jwt_jwks_ttl=str(TTL), jwt_leeway="0")
    assert await login(server, mint(EC, kid="old")) == REPORT1
    provider.stop()
    await asyncio.sleep(TTL)  # NOTE: past the TTL: the kept keys are stale now
    assert await login(server, mint(RSA, kid="new")) == (1013, "service unavailable")
    assert "JWKS http://127.0.0.1" in logged(server, "cannot be read")
    assert await login(server, mint(EC, kid="old")) == REPORT1
    with pytest.raises(InvalidStatus) as refused:
        headers = {"Authorization": f"Bearer {mint(RSA, kid='new')}"}
        async with websockets.connect(server.url + "/reports", additional_headers=headers):
            pass
    assert refused.value.response.status_code == 503
    provider.publish(public_jwk(EC, "old"), public_jwk(RSA, "new"))
    provider.start()
    await asyncio.sleep(TTL)
    assert await login(server, mint(RSA, kid="new")) == REPORT1
    assert await login(server, mint(RSA, kid="other")) == INVALID


@sqlite_only
async def test_a_jwks_url_down_at_start_up_is_try_again_later(make_server: Start) -> None:
    down = f"http://127.0.0.1:{free_port()}/jwks.json"
    server = make_server(jwt_jwks=down, jwt_secret=SECRET, auth_failures="1")
    for _ in range(2):
        assert await login(server, mint(EC, kid="ec-1")) == (1013, "service unavailable")
    assert await login(server, mint(SECRET)) == REPORT1  # the 1013s were no failed logins


# --- Authorization: Bearer at the handshake


async def with_header(server: Server, header: str) -> str:
    """What `report1`, the first message, gets on a connection opened with ``header``."""
    headers = {"Authorization": header}
    async with websockets.connect(server.url + "/reports", additional_headers=headers) as ws:
        await ws.send("report1")
        return str(await asyncio.wait_for(ws.recv(), LOGIN_WITHIN))


async def handshake_refused(server: Server, header: str) -> Response:
    with pytest.raises(InvalidStatus) as refused:
        await with_header(server, header)
    return refused.value.response


async def test_bearer_database_token_makes_the_first_message_a_query(secured: Server) -> None:
    assert await with_header(secured, f"Bearer {TOKEN}") == REPORT1


async def test_bearer_jwt_makes_the_first_message_a_query(secured: Server) -> None:
    token = mint(ED, kid="ed-1")
    assert await with_header(secured, f"Bearer {token}") == REPORT1


@sqlite_only
@pytest.mark.parametrize(
    "token",
    ["not-a-token", mint(EC, claims(exp=int(time.time()) - 60), kid="ec-1")],
    ids=["unknown", "expired-jwt"],
)
async def test_bad_bearer_token_refuses_the_handshake(secured: Server, token: str) -> None:
    response = await handshake_refused(secured, f"Bearer {token}")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "invalid_token" in response.headers["WWW-Authenticate"]
    log = final_log(secured)
    assert "refused the handshake of 127.0.0.1 on /reports: invalid token" in log
    assert "ERROR" not in log  # a client's bad token is no error of the service
    assert "authenticated" not in log and token not in log


@sqlite_only
@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", f"Token {TOKEN}", "Bearer "])
async def test_other_authorization_schemes_refuse_the_handshake(
    secured: Server, header: str
) -> None:
    response = await handshake_refused(secured, header)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "ERROR" not in final_log(secured)


@sqlite_only
@pytest.mark.parametrize("parameter", ["token", "access_token", "jwt"])
async def test_a_token_in_the_query_string_is_not_authentication(
    start: Start, parameter: str
) -> None:
    server = start(auth_timeout="0.5")
    for token in (TOKEN, mint(EC, kid="ec-1")):
        path = f"/reports?{parameter}={token}"
        assert await login(server, "report1", path) == INVALID
        assert await login(server, None, path) == (1008, "authentication timed out")
    assert "authenticated" not in server.log()


# --- identity: the subject in the log, never the token; nowhere on /metrics


@sqlite_only
async def test_the_subject_names_the_connection_in_the_log_and_not_on_metrics(
    secured: Server,
) -> None:
    sub = "carol-e2e-7f3a"
    token = mint(EC, claims(sub), kid="ec-1")
    async with websockets.connect(secured.url + "/reports") as ws:
        await ws.send(token)
        await ws.send("report1")
        assert await asyncio.wait_for(ws.recv(), LOGIN_WITHIN) == REPORT1
        metrics = fetch_metrics(secured)
    login = logged(secured, f"authenticated 127.0.0.1 as '{sub}' (jwt, expires ")
    conn = re.search(rf"\[(\w+) {sub}\]", login)
    assert conn is not None, login
    closed = await eventually(lambda: logged(secured, f"[{conn.group(1)} {sub}] websocket closed"))
    assert closed
    log = secured.log()
    assert token not in log and token.split(".")[2] not in log
    assert sub not in metrics and sub not in fetch_metrics(secured)
    assert "reports_connections_open" in metrics  # the right page, and it was read


@sqlite_only
async def test_json_log_lines_of_the_connection_carry_the_subject(start: Start) -> None:
    server = start(log_format="json")
    token = mint(SECRET, claims("dave-e2e-91c2"))
    assert await login(server, token) == REPORT1
    await eventually(lambda: "websocket closed" in server.log())
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    login_line = next(line for line in lines if line["message"].startswith("authenticated"))
    mine = [line for line in lines if line.get("conn") == login_line["conn"]]
    after = mine[[line["message"] for line in mine].index(login_line["message"]) :]
    assert [line.get("subject") for line in after] == ["dave-e2e-91c2"] * len(after), after
    assert any(line["message"].startswith("websocket closed") for line in after)
    assert token not in server.log()


@sqlite_only
async def test_a_subject_with_a_line_break_cannot_forge_log_lines(secured: Server) -> None:
    forged = "INFO reports_service.auth [x] authenticated 127.0.0.1 as 'admin'"
    assert await login(secured, mint(SECRET, claims(f"eve\n{forged}"))) == REPORT1
    await eventually(lambda: "websocket closed" in secured.log())
    assert not [line for line in secured.log().splitlines() if line.startswith(forged)]
    assert "eve\\n" in logged(secured, "websocket closed")  # the subject, escaped


def fetch_metrics(server: Server) -> str:
    with urllib.request.urlopen(server.http + "/metrics", timeout=5) as response:
        return str(response.read().decode())


# --- start-up: bad keys are one line on stderr, exit 1


def serve(env: dict[str, str], **settings: str) -> subprocess.CompletedProcess[str]:
    """`reports-service serve`, as a user runs it, with these REPORTS_* settings."""
    env = {**env, "REPORTS_HOST": "127.0.0.1", "REPORTS_PORT": str(free_port())}
    env.update((f"REPORTS_{key.upper()}", value) for key, value in settings.items())
    command = Path(sys.executable).with_name("reports-service")
    return subprocess.run(
        [str(command), "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert fragment in result.stderr, result.stderr


@sqlite_only
@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "No such file"),
        ("{not json", "not JSON"),
        ('{"kids": []}', "not a JWKS"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]}', "no usable signing key"),
    ],
    ids=["missing", "not-json", "no-keys-list", "no-signing-key"],
)
def test_serve_with_a_bad_jwks_file_is_one_line(
    db_env: dict[str, str], tmp_path: Path, content: str | None, why: str
) -> None:
    path = tmp_path / "jwks.json"
    if content is not None:
        path.write_text(content)
    result = serve(db_env, jwt_jwks=str(path))
    assert_one_line(result, f"REPORTS_JWT_JWKS={path}: ")
    assert why in result.stderr


@sqlite_only
def test_serve_with_a_10_byte_secret_is_one_line(db_env: dict[str, str]) -> None:
    result = serve(db_env, jwt_secret="0123456789")
    assert_one_line(result, "REPORTS_JWT_SECRET is 10 bytes")
    assert "0123456789" not in result.stderr
