"""Database tokens limited to reports and to a time, and JWT subjects revoked: schema to CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, inspect

from reports_service.config import Settings
from reports_service.db import make_engine
from reports_service.migrate import downgrade, upgrade
from reports_service.models import ApiToken
from reports_service.records import hash_token, utcnow
from reports_service.repository import ReportRepository, repository_for

from .server import run_cli
from .test_cli import assert_one_line_error


@pytest.fixture
async def repo(db_url: str) -> AsyncIterator[ReportRepository]:
    repository = repository_for(Settings(database_url=db_url))
    yield repository
    await repository.dispose()


def _inspect(url: str) -> tuple[set[str], set[str]]:
    """The tables, and the columns of api_tokens."""

    async def run() -> tuple[set[str], set[str]]:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
                columns = await conn.run_sync(
                    lambda c: {col["name"] for col in inspect(c).get_columns("api_tokens")}
                )
                return tables, columns
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _insert_at_0003(url: str, name: str, token: str) -> None:
    """A token as the code before 0004 stored it: no patterns, no expiry."""

    async def run() -> None:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                row = {"name": name, "token_hash": hash_token(token), "created_at": utcnow()}
                await conn.execute(insert(ApiToken).values(**row, can_write=True))
        finally:
            await engine.dispose()

    asyncio.run(run())


def _authenticate(url: str, *tokens: str) -> list[tuple[str, bool, tuple[str, ...]] | None]:
    async def run() -> list[tuple[str, bool, tuple[str, ...]] | None]:
        repository = repository_for(Settings(database_url=url))
        try:
            infos = [await repository.authenticate(token) for token in tokens]
        finally:
            await repository.dispose()
        return [None if i is None else (i.name, i.can_write, i.reports) for i in infos]

    return asyncio.run(run())


def _create(url: str, **kwargs: object) -> None:
    async def run() -> None:
        repository = repository_for(Settings(database_url=url))
        try:
            await repository.create_token(**kwargs)  # type: ignore[arg-type]
        finally:
            await repository.dispose()

    asyncio.run(run())


# -- migration ------------------------------------------------------------------------------


def test_downgrade_to_0003_and_back_keeps_tokens_working(db_url: str) -> None:
    _create(db_url, name="wide", token="wide-token")
    _create(db_url, name="narrow", token="narrow-token", reports=["sales/*"])
    _create(db_url, name="brief", token="brief-token", expires_at=utcnow() + timedelta(days=1))
    downgrade(db_url, "0003")
    tables, columns = _inspect(db_url)
    assert "revoked_subjects" not in tables
    assert {"reports", "expires_at"}.isdisjoint(columns) and "can_write" in columns
    _insert_at_0003(db_url, "old", "old-token")
    upgrade(db_url)
    assert "revoked_subjects" in _inspect(db_url)[0]
    assert _authenticate(db_url, "wide-token", "old-token") == [
        ("wide", False, ("*",)),
        ("old", True, ("*",)),
    ]
    # NOTE: before 0004 a token reads every report forever, so the downgrade revoked the
    #   tokens it would otherwise have widened.
    assert _authenticate(db_url, "narrow-token", "brief-token") == [None, None]


# -- repository -----------------------------------------------------------------------------


async def test_patterns_and_expiry_round_trip(repo: ReportRepository) -> None:
    expires = datetime(2999, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    await repo.create_token(
        name="sales", token="sales-token", reports=("sales/*", "q[1-4]", "é"), expires_at=expires
    )
    await repo.create_token(name="all", token="all-token", can_write=True)
    listed = {info.name: info for info in await repo.list_tokens()}
    assert listed["sales"].reports == ("sales/*", "q[1-4]", "é")
    assert listed["sales"].expires_at == expires
    assert (listed["all"].reports, listed["all"].expires_at) == (("*",), None)
    info = await repo.authenticate("sales-token")
    assert info is not None
    assert (info.name, info.can_write, info.reports, info.expires_at) == (
        "sales",
        False,
        ("sales/*", "q[1-4]", "é"),
        expires,
    )


async def test_an_expired_token_does_not_authenticate(repo: ReportRepository) -> None:
    await repo.create_token(name="old", token="old-token", expires_at=utcnow() - timedelta(0, 1))
    await repo.create_token(name="new", token="new-token", expires_at=utcnow() + timedelta(1))
    assert await repo.authenticate("old-token") is None
    assert await repo.authenticate("new-token") is not None
    assert [info.name for info in await repo.list_tokens()] == ["old", "new"]


async def test_a_token_needs_a_pattern(repo: ReportRepository) -> None:
    with pytest.raises(ValueError, match="at least one report pattern"):
        await repo.create_token(name="none", token="none-token", reports=())
    assert await repo.list_tokens() == []


async def test_revoke_subject(repo: ReportRepository) -> None:
    before = utcnow()
    first = await repo.revoke_subject(subject="alice")
    assert before < first <= before + timedelta(seconds=1)
    assert await repo.subject_revoked_at("alice") == first
    assert await repo.subject_revoked_at("bob") is None
    await asyncio.sleep(1.0)
    again = await repo.revoke_subject(subject="alice")
    assert again > first
    await repo.revoke_subject(subject="carol")
    revoked = await repo.revoked_subjects(["alice", "bob", "carol", "x" * 300, "a\x00"])
    assert revoked == {"alice": again, "carol": await repo.subject_revoked_at("carol")}
    assert await repo.revoked_subjects([]) == {}


@pytest.mark.parametrize("subject", ["", "x" * 201, "a\x00b"])
async def test_revoke_subject_refuses_a_bad_subject(repo: ReportRepository, subject: str) -> None:
    with pytest.raises(ValueError, match="subject must be"):
        await repo.revoke_subject(subject=subject)


# -- command line ---------------------------------------------------------------------------


def test_token_create_with_reports_and_expiry(db_env: dict[str, str], db_url: str) -> None:
    made = run_cli(
        db_env, "token", "create", "sales", "--reports", "sales/*", "ops", "--expires", "12h"
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert _authenticate(db_url, token) == [("sales", False, ("sales/*", "ops"))]
    assert run_cli(db_env, "token", "create", "all", "--write").returncode == 0
    listed = run_cli(db_env, "token", "list")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split("\t")[0]: line.split("\t") for line in listed.stdout.splitlines()}
    _, scope, reports, created, expires, state = lines["sales"]
    assert (scope, reports, state) == ("read", 'reports ["sales/*", "ops"]', "active")
    assert created.startswith("created 20")
    left = datetime.fromisoformat(expires.removeprefix("expires ")) - utcnow()
    assert timedelta(hours=11) < left <= timedelta(hours=12)
    assert lines["all"][1:3] == ["read,write", 'reports ["*"]']
    assert lines["all"][4:] == ["expires never", "active"]
    assert token not in listed.stdout


def test_token_list_says_expired_and_revoked(db_env: dict[str, str], db_url: str) -> None:
    _create(db_url, name="gone", token="gone-token", expires_at=utcnow() - timedelta(0, 1))
    _create(db_url, name="cut", token="cut-token")
    assert run_cli(db_env, "token", "revoke", "cut").stdout == "revoked cut\n"
    lines = run_cli(db_env, "token", "list").stdout.splitlines()
    assert lines[0].split("\t")[-1] == "expired"
    assert lines[1].split("\t")[-1].startswith("revoked 20")


@pytest.mark.parametrize("duration", ["30", "d", "0s", "1.5h", "-1d", "10y", "3 d", "9999999999d"])
def test_bad_expires_is_one_line(db_env: dict[str, str], duration: str) -> None:
    result = run_cli(db_env, "token", "create", "t", f"--expires={duration}")
    assert_one_line_error(result, f"--expires {duration}: ")
    assert run_cli(db_env, "token", "list").stdout == ""


def test_expires_too_far_is_one_line(db_env: dict[str, str]) -> None:
    result = run_cli(db_env, "token", "create", "t", "--expires", "999999999w")
    assert_one_line_error(result, "--expires 999999999w: too far in the future")


@pytest.mark.parametrize(
    ("patterns", "fragment"),
    [
        ([""], "--reports: a report pattern must be a non-empty string"),
        (["x" * 201], "--reports: a report pattern must be at most 200 characters"),
        ([f"r{n}" for n in range(101)], "--reports: at most 100 report patterns"),
    ],
)
def test_bad_reports_is_one_line(
    db_env: dict[str, str], patterns: list[str], fragment: str
) -> None:
    result = run_cli(db_env, "token", "create", "t", "--reports", *patterns)
    assert_one_line_error(result, fragment)
    assert run_cli(db_env, "token", "list").stdout == ""


def test_value_that_looks_like_a_jwt_is_refused(db_env: dict[str, str]) -> None:
    result = run_cli(db_env, "token", "create", "t", "--value", "aaa.bbb.ccc")
    assert_one_line_error(result, "--value: a token must be at most 8192 bytes")


def test_revoke_subject_on_the_command_line(db_env: dict[str, str], db_url: str) -> None:
    done = run_cli(db_env, "token", "revoke", "--subject", "alice")
    assert done.returncode == 0, done.stderr
    said = done.stdout.strip()
    assert said.startswith("revoked every JWT of subject 'alice' issued before ")
    stamp = datetime.fromisoformat(said.rsplit(" ", 1)[1])

    async def revoked_at() -> datetime | None:
        repository = repository_for(Settings(database_url=db_url))
        try:
            return await repository.subject_revoked_at("alice")
        finally:
            await repository.dispose()

    assert asyncio.run(revoked_at()) == stamp


@pytest.mark.parametrize(
    "args",
    [["token", "revoke"], ["token", "revoke", "bob", "--subject", "alice"]],
)
def test_revoke_takes_a_name_or_a_subject(db_env: dict[str, str], args: list[str]) -> None:
    assert_one_line_error(run_cli(db_env, *args), "token revoke takes either NAME or --subject")


def test_revoke_a_bad_subject_is_one_line(db_env: dict[str, str]) -> None:
    result = run_cli(db_env, "token", "revoke", "--subject", "x" * 201)
    assert_one_line_error(result, "a subject must be 1 to 200 characters")
