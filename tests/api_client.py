"""The HTTP API as its users see it: a live server on a seeded database, httpx clients, and
checks of problem details."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from reports_service.config import Settings
from reports_service.repository import ReportRepository, repository_for

from .conftest import TOKEN, TUTORIAL, WRITE_TOKEN
from .jwts import SECRET
from .server import Server, free_port

LIMIT = 4096  # REPORTS_MAX_MESSAGE_BYTES of the API's server: the largest body it takes
ORIGIN = "https://app.example"  # the one origin allowed besides the service's own
AUTH_FAILURES = 3


@dataclass
class Api:
    """A live server on its own seeded database; ``secrets``: every token a test has used."""

    server: Server
    env: dict[str, str]
    secrets: set[str] = field(default_factory=lambda: {TOKEN, WRITE_TOKEN})

    def client(self, token: str | None = TOKEN, **options: Any) -> httpx.AsyncClient:
        """A client of the API (with ``local_address``, from another loopback address)."""
        headers = dict(options.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
            self.secrets.add(token)
        local = options.pop("local_address", None)
        transport = httpx.AsyncHTTPTransport(local_address=local) if local else None
        return httpx.AsyncClient(
            base_url=self.server.http, headers=headers, timeout=10, transport=transport, **options
        )

    def repository(self) -> ReportRepository:
        return repository_for(Settings(database_url=self.env["REPORTS_DATABASE_URL"]))


def path(name: str) -> str:
    """The URL path of a report, percent-encoded as a careful client would."""
    return "/api/reports/" + quote(name, safe="/")


def run_async(work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``work`` on a loop of its own (module fixtures run outside the tests' loops)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, work()).result()


def seed(url: str) -> None:
    async def work() -> None:
        repo = repository_for(Settings(database_url=url))
        try:
            await repo.add_reports(TUTORIAL)
            await repo.create_token(name="test", token=TOKEN)
            await repo.create_token(name="writer", token=WRITE_TOKEN, can_write=True)
        finally:
            await repo.dispose()

    run_async(work)


def api_env(url: str, directory: Path) -> dict[str, str]:
    """The API server's environment: its database, and settings the tests rely on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPORTS_")}
    env.update(
        REPORTS_DATABASE_URL=url,
        TMPDIR=str(directory),
        REPORTS_LOG_LEVEL="DEBUG",
        REPORTS_JWT_SECRET=SECRET,
        REPORTS_JWT_LEEWAY="0",
        # NOTE: a JWKS nobody serves: a JWT signed with a key pair cannot be checked (503)
        REPORTS_JWT_JWKS=f"http://127.0.0.1:{free_port()}/jwks.json",
        REPORTS_ALLOWED_ORIGINS=ORIGIN,
        REPORTS_AUTH_FAILURES=str(AUTH_FAILURES),
        REPORTS_MAX_MESSAGE_BYTES=str(LIMIT),
    )
    return env


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> Any:
    """``response`` is problem details of ``status`` (and ``code``), with no trace of code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "about:blank"
    assert body["title"] == http.HTTPStatus(status).phrase
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    assert body.get("code") == code
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body


def etag(response: httpx.Response) -> str:
    tag = response.headers["etag"]
    assert tag == f'"{response.json()["version"]}"'
    return tag


__all__ = [
    "AUTH_FAILURES",
    "LIMIT",
    "ORIGIN",
    "Api",
    "api_env",
    "assert_problem",
    "etag",
    "path",
    "run_async",
    "seed",
]
