from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from falcon.testing import ASGIConductor

from reports_service.app import create_app
from reports_service.config import Settings
from reports_service.records import NewReport
from reports_service.repository import ReportRepository, repository_for

from .databases import PostgresTemplate, SQLiteTemplate, backends
from .server import Server

# NOTE: a shell starts a background job (`.ci/run &`, nohup) with SIGINT ignored, and every
#   process it starts inherits that: the clients would then ignore the Ctrl-C their tests send
#   (tests/test_cli_prompts.py, test_cli_watch.py). A Python handler is not inherited across
#   exec, so with this one in the suite's process its children start with the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TOKEN = "test-token-0123456789"
WRITE_TOKEN = "test-write-token-0123456789"
TUTORIAL = [
    NewReport(f"report{n}", f"Report {n}", f"This is the content of report {n}")
    for n in range(1, 5)
]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> SQLiteTemplate:
    return SQLiteTemplate(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[PostgresTemplate]:
    template = PostgresTemplate()
    yield template
    template.close()


@pytest.fixture(params=backends())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated, empty database on each backend under test."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_template").new_database(tmp_path)
        return
    template: PostgresTemplate = request.getfixturevalue("postgres_template")
    url = template.new_database()
    yield url
    template.drop(url)


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database_url=db_url, auth_timeout=2.0)


@pytest.fixture
def db_env(db_url: str) -> dict[str, str]:
    """The environment a subprocess (seed.py, the server) needs to use the test database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPORTS_")}
    env["REPORTS_DATABASE_URL"] = db_url
    return env


@pytest.fixture
async def seeded_repository(settings: Settings) -> AsyncIterator[ReportRepository]:
    """The test's database with the tutorial's reports and two tokens (WRITE_TOKEN can write)."""
    repo = repository_for(settings)
    await repo.add_reports(TUTORIAL)
    await repo.create_token(name="test", token=TOKEN)
    await repo.create_token(name="writer", token=WRITE_TOKEN, can_write=True)
    yield repo
    await repo.dispose()


@pytest.fixture
async def other(settings: Settings) -> AsyncIterator[ReportRepository]:
    """Another writer on the test's database (its own engine), as another process would be."""
    repo = repository_for(settings)
    yield repo
    await repo.dispose()


@pytest.fixture
async def conductor(
    settings: Settings, seeded_repository: ReportRepository
) -> AsyncIterator[ASGIConductor]:
    async with ASGIConductor(create_app(settings)) as conductor:
        yield conductor


@pytest.fixture
def make_server(
    db_env: dict[str, str], seeded_repository: ReportRepository, tmp_path: Path
) -> Iterator[Callable[..., Server]]:
    """Start real uvicorn servers on free ports, on this test's database (seeded, with TOKEN)."""
    started: list[Server] = []

    def start(**settings: str) -> Server:
        env = {**db_env, "TMPDIR": str(tmp_path), "REPORTS_LOG_LEVEL": "DEBUG"}
        env.update((f"REPORTS_{key.upper()}", value) for key, value in settings.items())
        started.append(Server(env))
        return started[-1]

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    """A real uvicorn server on a free port, on this test's database (seeded, with TOKEN)."""
    return make_server()
