"""JWT verification in process: real keys, real signed tokens, a real JWKS file or HTTP server.

Each refusal has its own test. The JWKS's reads are timed by a clock the test moves (TTL and the
refetch throttle), so nothing waits; the HTTP server counts the requests it answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from reports_service.access import Grant, InvalidToken, KeysUnavailable
from reports_service.config import Settings, SettingsError
from reports_service.jwt_keys import MAX_JWKS_BYTES, JWTVerifier, verifier_for

from .jwts import (
    SECRET,
    JWKSServer,
    PrivateKey,
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

RSA = rsa_key()
EC = ec_key()
ED = ed25519_key()
OTHER_RSA = rsa_key()
PUBLISHED = [
    public_jwk(RSA, "rsa-1"),
    public_jwk(EC, "ec-1"),
    public_jwk(ED, "ed-1"),
    public_jwk(RSA, "rsa-ps", alg="PS256"),
]


class Clock:
    """A monotonic clock that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    return write_jwks(tmp_path / "jwks.json", *PUBLISHED)


@pytest.fixture
def server() -> Iterator[JWKSServer]:
    with JWKSServer([public_jwk(RSA, "rsa-1")]) as served:
        yield served


def verifier(clock: Clock | None = None, **settings: Any) -> JWTVerifier:
    found = verifier_for(Settings(**settings), clock=clock or Clock())
    assert found is not None
    return found


@pytest.fixture
def both(jwks_file: Path) -> JWTVerifier:
    """A verifier with the secret and the JWKS file."""
    return verifier(jwt_secret=SECRET, jwt_jwks=str(jwks_file))


async def refused(verifier: JWTVerifier, token: str, reason: str) -> None:
    with pytest.raises(InvalidToken, match=reason):
        await verifier.verify(token)


# -- what is accepted -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "kid", "alg"),
    [
        (SECRET, None, "HS256"),
        (RSA, "rsa-1", "RS256"),
        (RSA, "rsa-1", "PS256"),
        (RSA, "rsa-ps", "PS256"),
        (EC, "ec-1", "ES256"),
        (ED, "ed-1", "EdDSA"),
    ],
)
async def test_each_allowed_algorithm_is_accepted(
    both: JWTVerifier, key: PrivateKey | str, kid: str | None, alg: str
) -> None:
    grant = await both.verify(mint(key, claims("alice"), kid=kid, alg=alg))
    assert (grant.subject, grant.kind, grant.read) == ("alice", "jwt", True)


async def test_hs256_with_the_secret_needs_no_kid_and_ignores_one() -> None:
    only_secret = verifier(jwt_secret=SECRET)
    assert (await only_secret.verify(mint(SECRET))).subject == "alice"
    assert (await only_secret.verify(mint(SECRET, kid="whatever"))).subject == "alice"


async def test_claims_make_the_grant(both: JWTVerifier) -> None:
    now = int(time.time())
    payload = claims(
        "bob", scope="reports:read reports:write other", reports=["sales/*", "q1"], iat=now
    )
    grant = await both.verify(mint(EC, payload, kid="ec-1"))
    assert grant == Grant(
        "bob",
        "jwt",
        read=True,
        write=True,
        reports=("sales/*", "q1"),
        expires_at=datetime.fromtimestamp(payload["exp"], UTC),
        issued_at=datetime.fromtimestamp(now, UTC),
        leeway=30.0,
    )
    assert grant.can_write("sales/march") and not grant.can_read("hr/pay")


async def test_defaults_every_report_and_no_scope_reads_nothing(both: JWTVerifier) -> None:
    grant = await both.verify(mint(SECRET, claims(scope=None, iat=None)))
    assert (grant.read, grant.write, grant.reports, grant.issued_at) == (False, False, ("*",), None)
    write_only = await both.verify(mint(SECRET, claims(scope="reports:write")))
    assert (write_only.read, write_only.write) == (False, True)


async def test_exp_past_within_the_leeway_is_accepted() -> None:
    lenient = verifier(jwt_secret=SECRET, jwt_leeway=60)
    grant = await lenient.verify(mint(SECRET, claims(lifetime=-30)))
    assert grant.deadline is not None and grant.deadline > datetime.now(UTC)


async def test_audience_and_issuer_that_match_are_accepted() -> None:
    strict = verifier(jwt_secret=SECRET, jwt_audience="reports", jwt_issuer="https://idp")
    token = mint(SECRET, claims(aud=["other", "reports"], iss="https://idp"))
    assert (await strict.verify(token)).subject == "alice"


async def test_aud_is_not_checked_when_no_audience_is_set(both: JWTVerifier) -> None:
    assert (await both.verify(mint(SECRET, claims(aud="anyone")))).subject == "alice"


# -- what is refused --------------------------------------------------------------------------


async def test_alg_none_is_refused(both: JWTVerifier) -> None:
    await refused(both, forge({"alg": "none", "typ": "JWT"}, claims()), "algorithm 'none'")
    await refused(both, forge({"alg": "none", "kid": "rsa-1"}, claims()), "algorithm 'none'")


@pytest.mark.parametrize("alg", ["HS384", "RS512", "ES384", "none", "NONE", ""])
async def test_other_algorithms_are_refused(both: JWTVerifier, alg: str) -> None:
    await refused(both, forge({"alg": alg, "kid": "rsa-1"}, claims(), b"sig"), "not allowed")


async def test_hs256_signed_with_the_public_key_is_refused(jwks_file: Path) -> None:
    pem = RSA.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk_bytes = json.dumps(public_jwk(RSA, "rsa-1")).encode()
    only_jwks = verifier(jwt_jwks=str(jwks_file))
    with_secret = verifier(jwt_secret=SECRET, jwt_jwks=str(jwks_file))
    for secret in (pem, jwk_bytes):
        token = hs256({"alg": "HS256", "kid": "rsa-1"}, claims(), secret)
        await refused(only_jwks, token, "no shared secret")
        await refused(with_secret, token, "Signature verification failed")


async def test_a_jwk_with_alg_allows_only_that_one(both: JWTVerifier) -> None:
    await refused(both, mint(RSA, kid="rsa-ps", alg="RS256"), "RS256 not allowed for kid")


async def test_an_ec_token_for_an_rsa_kid_is_refused(both: JWTVerifier) -> None:
    await refused(both, mint(EC, kid="rsa-1"), "ES256 not allowed for kid")


async def test_asymmetric_token_without_a_jwks_is_refused() -> None:
    await refused(verifier(jwt_secret=SECRET), mint(RSA, kid="rsa-1"), "no JWKS")


async def test_tampered_payload_is_refused(both: JWTVerifier) -> None:
    for key, kid in ((SECRET, None), (RSA, "rsa-1"), (ED, "ed-1")):
        header, _, signature = mint(key, claims("alice"), kid=kid).split(".")
        evil = mint(key, claims("mallory", scope="reports:read reports:write"), kid=kid)
        forged = f"{header}.{evil.split('.')[1]}.{signature}"
        await refused(both, forged, "Signature verification failed")


async def test_a_token_signed_by_another_key_is_refused(both: JWTVerifier) -> None:
    await refused(both, mint(OTHER_RSA, kid="rsa-1"), "Signature verification failed")
    await refused(both, mint("another secret of more than 32 bytes!"), "Signature verification")


async def test_unknown_kid_is_refused(both: JWTVerifier) -> None:
    await refused(both, mint(RSA, kid="rsa-9"), "unknown kid 'rsa-9'")


@pytest.mark.parametrize("kid", [None, ""])
async def test_missing_kid_is_refused(both: JWTVerifier, kid: str | None) -> None:
    await refused(both, mint(RSA, kid=kid), "without a kid")


@pytest.mark.parametrize("kid", [7, ["rsa-1"], {"kid": "rsa-1"}])
async def test_a_kid_that_is_no_string_is_refused(both: JWTVerifier, kid: object) -> None:
    await refused(both, forge({"alg": "RS256", "kid": kid}, claims(), b"sig"), "Key ID")


async def test_exp_missing_is_refused(both: JWTVerifier) -> None:
    await refused(both, mint(SECRET, claims(exp=None)), 'missing the "exp" claim')


async def test_exp_past_is_refused(both: JWTVerifier) -> None:
    await refused(both, mint(SECRET, claims(lifetime=-31)), "expired")
    await refused(both, mint(RSA, claims(lifetime=-3600), kid="rsa-1"), "expired")


@pytest.mark.parametrize("exp", ["9999999999", 1e300, True, None])
async def test_exp_that_is_no_number_is_refused(both: JWTVerifier, exp: object) -> None:
    payload = {**claims(), "exp": exp}
    await refused(both, mint(SECRET, payload), "exp")


async def test_nbf_in_the_future_is_refused(both: JWTVerifier) -> None:
    await refused(both, mint(SECRET, claims(nbf=int(time.time()) + 120)), "not yet valid")
    assert await both.verify(mint(SECRET, claims(nbf=int(time.time()) + 10)))  # leeway 30


async def test_iat_in_the_future_is_refused(both: JWTVerifier) -> None:
    await refused(both, mint(SECRET, claims(iat=int(time.time()) + 120)), "not yet valid")


async def test_wrong_or_missing_audience_is_refused() -> None:
    strict = verifier(jwt_secret=SECRET, jwt_audience="reports")
    await refused(strict, mint(SECRET, claims(aud="billing")), "(?i)audience")
    await refused(strict, mint(SECRET, claims(aud=["billing", "crm"])), "(?i)audience")
    await refused(strict, mint(SECRET, claims()), '"aud"')


async def test_wrong_or_missing_issuer_is_refused() -> None:
    strict = verifier(jwt_secret=SECRET, jwt_issuer="https://idp")
    await refused(strict, mint(SECRET, claims(iss="https://evil")), "issuer")
    await refused(strict, mint(SECRET, claims(iss="https://idp/x")), "issuer")
    await refused(strict, mint(SECRET, claims()), '"iss"')


@pytest.mark.parametrize("sub", [None, "", 42, ["alice"], "x" * 201])
async def test_bad_sub_is_refused(both: JWTVerifier, sub: object) -> None:
    payload = {name: value for name, value in claims().items() if name != "sub"}
    if sub is not None:
        payload["sub"] = sub
    await refused(both, mint(SECRET, payload), "claim 'sub'")


async def test_sub_of_200_characters_is_accepted(both: JWTVerifier) -> None:
    assert (await both.verify(mint(SECRET, claims("x" * 200)))).subject == "x" * 200


@pytest.mark.parametrize("scope", [["reports:read"], 1, {"reports:read": True}])
async def test_scope_that_is_no_string_is_refused(both: JWTVerifier, scope: object) -> None:
    await refused(both, mint(SECRET, claims(scope=scope)), "claim 'scope'")


@pytest.mark.parametrize("reports", ["sales/*", [1], ["ok", None], {"a": 1}])
async def test_reports_that_is_no_list_of_strings_is_refused(
    both: JWTVerifier, reports: object
) -> None:
    await refused(both, mint(SECRET, claims(reports=reports)), "claim 'reports'")


@pytest.mark.parametrize("reports", [[], [""], ["x" * 201], ["a\x00"], ["r"] * 101])
async def test_bad_report_patterns_are_refused(both: JWTVerifier, reports: list[str]) -> None:
    await refused(both, mint(SECRET, claims(reports=reports)), "claim 'reports'")


@pytest.mark.parametrize("token", ["a.b.c", "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln", "x.y."])
async def test_malformed_tokens_are_refused(both: JWTVerifier, token: str) -> None:
    with pytest.raises(InvalidToken):
        await both.verify(token)


# -- start-up ---------------------------------------------------------------------------------


def test_no_keys_no_verifier() -> None:
    assert verifier_for(Settings()) is None


def test_a_short_secret_is_refused_at_start_up() -> None:
    short = "too-short-secret"
    with pytest.raises(SettingsError, match="REPORTS_JWT_SECRET is 16 bytes") as raised:
        Settings.from_env({"REPORTS_JWT_SECRET": short})
    assert short not in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "No such file"),
        ("not json", "not JSON"),
        ('{"keys": {}}', "not a JWKS"),
        ("[1, 2]", "not a JWKS"),
        ('{"keys": []}', "no usable signing key"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "sym"}]}', "no usable signing key"),
        ('{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}', "no usable signing key"),
        ('{"keys": [{"kty": "EC", "crv": "P-256", "kid": "a", "x": "", "y": ""}]}', "no usable"),
        (" " * (MAX_JWKS_BYTES + 1), "larger than"),
    ],
)
def test_a_bad_jwks_file_is_refused_at_start_up(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    path = tmp_path / "jwks.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError) as raised:
        verifier_for(Settings(jwt_jwks=str(path)))
    message = str(raised.value)
    assert message.startswith(f"REPORTS_JWT_JWKS={path}: ") and reason in message, message
    assert "\n" not in message


def test_a_jwks_of_other_keys_uses_the_signing_ones(tmp_path: Path) -> None:
    path = write_jwks(
        tmp_path / "jwks.json",
        {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},
        public_jwk(RSA, "enc", use="enc"),
        public_jwk(RSA, "rs384", alg="RS384"),
        public_jwk(EC, "ec-1"),
    )
    check = verifier(jwt_jwks=str(path))
    asyncio.run(check.verify(mint(EC, kid="ec-1")))
    for kid in ("sym", "enc", "rs384"):
        with pytest.raises(InvalidToken, match="unknown kid"):
            asyncio.run(check.verify(mint(RSA, kid=kid)))


# -- a JWKS over HTTP, and its file twin ------------------------------------------------------


async def test_a_url_is_fetched_at_the_first_login(server: JWKSServer, clock: Clock) -> None:
    check = verifier(clock, jwt_jwks=server.url)
    assert server.requests == 0
    assert (await check.verify(mint(RSA, kid="rsa-1"))).subject == "alice"
    assert (await check.verify(mint(RSA, claims("bob"), kid="rsa-1"))).subject == "bob"
    assert server.requests == 1


async def test_concurrent_logins_share_one_fetch(server: JWKSServer, clock: Clock) -> None:
    check = verifier(clock, jwt_jwks=server.url)
    tokens = [mint(RSA, claims(f"user{n}"), kid="rsa-1") for n in range(20)]
    grants = await asyncio.gather(*(check.verify(token) for token in tokens))
    assert [grant.subject for grant in grants] == [f"user{n}" for n in range(20)]
    assert server.requests == 1


async def test_a_rotated_key_is_picked_up(server: JWKSServer, clock: Clock) -> None:
    check = verifier(clock, jwt_jwks=server.url)
    await check.verify(mint(RSA, kid="rsa-1"))
    new = rsa_key()
    server.publish(public_jwk(new, "rsa-2"))  # the old key retired
    clock.advance(5)
    assert (await check.verify(mint(new, kid="rsa-2"))).subject == "alice"
    assert server.requests == 2
    await refused(check, mint(RSA, kid="rsa-1"), "unknown kid 'rsa-1'")


async def test_unknown_kids_refetch_at_most_every_5_seconds(
    server: JWKSServer, clock: Clock
) -> None:
    check = verifier(clock, jwt_jwks=server.url)
    await check.verify(mint(RSA, kid="rsa-1"))
    for n in range(19):  # within 5 s of the fetch: refused, nothing fetched
        clock.advance(0.25)
        await refused(check, mint(RSA, kid=f"nope-{n}"), "unknown kid")
    assert server.requests == 1
    clock.advance(0.25)  # 5 s after the fetch
    await refused(check, mint(RSA, kid="nope-again"), "unknown kid")
    assert server.requests == 2
    await asyncio.gather(*(refused(check, mint(RSA, kid=f"x{n}"), "unknown") for n in range(20)))
    assert server.requests == 2
    await check.verify(mint(RSA, kid="rsa-1"))  # the known kid never waits for the throttle
    assert server.requests == 2


async def test_the_jwks_is_fetched_again_after_its_ttl(server: JWKSServer, clock: Clock) -> None:
    check = verifier(clock, jwt_jwks=server.url, jwt_jwks_ttl=60)
    await check.verify(mint(RSA, kid="rsa-1"))
    clock.advance(59)
    await check.verify(mint(RSA, kid="rsa-1"))
    assert server.requests == 1
    server.publish(public_jwk(OTHER_RSA, "rsa-2"))
    clock.advance(1)
    await refused(check, mint(RSA, kid="rsa-1"), "unknown kid")  # gone from the new JWKS
    assert server.requests == 2


async def test_jwks_outage_keeps_cached_keys_and_recovers(
    server: JWKSServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="reports_service.auth")
    check = verifier(clock, jwt_jwks=server.url, jwt_jwks_ttl=60)
    old = mint(RSA, kid="rsa-1")
    await check.verify(old)
    server.stop()
    new_key = ec_key()
    new = mint(new_key, kid="ec-2")
    clock.advance(5)
    with pytest.raises(KeysUnavailable):
        await check.verify(new)
    assert (await check.verify(old)).subject == "alice"  # the cached kid still works
    clock.advance(120)  # past the TTL: the fetch fails, the cached key stays in use
    assert (await check.verify(old)).subject == "alice"
    with pytest.raises(KeysUnavailable):  # throttled, and the JWKS is still failing
        await check.verify(new)
    warnings = [r for r in caplog.records if r.name == "reports_service.auth"]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]  # one line per failed fetch
    for record in warnings:
        assert record.levelno == logging.WARNING
        assert "cannot be read" in record.getMessage() and "refused" in record.getMessage()
        assert old not in record.getMessage() and new not in record.getMessage()

    server.publish(public_jwk(RSA, "rsa-1"), public_jwk(new_key, "ec-2"))
    server.start()
    clock.advance(5)
    assert (await check.verify(new)).subject == "alice"
    assert (await check.verify(old)).subject == "alice"


async def test_a_provider_error_is_keys_unavailable(
    server: JWKSServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    server.status = 500
    check = verifier(clock, jwt_jwks=server.url)
    with pytest.raises(KeysUnavailable):
        await check.verify(mint(RSA, kid="rsa-1"))
    assert "HTTP 500" in caplog.text


async def test_a_jwks_file_is_read_again_for_a_new_kid(jwks_file: Path, clock: Clock) -> None:
    check = verifier(clock, jwt_jwks=str(jwks_file))
    new = ed25519_key()
    write_jwks(jwks_file, public_jwk(new, "ed-2"))
    await refused(check, mint(new, kid="ed-2"), "unknown kid")  # read at start-up, just now
    clock.advance(5)
    assert (await check.verify(mint(new, kid="ed-2"))).subject == "alice"
    await asyncio.to_thread(jwks_file.unlink)  # a file gone later: the kept keys stay in use
    clock.advance(600)
    assert (await check.verify(mint(new, kid="ed-2"))).subject == "alice"
