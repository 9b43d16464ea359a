"""The console page at / in a real browser: Debian's headless Chromium driven by Playwright.

Shared by the browser tests. Playwright's own browser download does not work on the project's
machines, so the browser is Debian's `chromium` package (scripts/test installs it). Without it
these tests fail under CI and are skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright, expect

from .conftest import TOKEN
from .server import ROOT, Server, run_cli
from .waiting import eventually

CHROMIUM = Path("/usr/bin/chromium")
# NOTE: we run as root (no sandbox); the networking flags stop Chromium from calling Google,
#   which stalls it on machines that cannot reach the internet.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000
SCREENSHOTS = ROOT / "build" / "screenshots"
SECRET = "browser-test-secret-0123456789abcdef"  # the JWT secret of the servers that take JWTs


@dataclass
class Console:
    """The page, and what went wrong in it: errors, and requests to anywhere but the server."""

    page: Page
    server: Server
    problems: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)  # every WebSocket the page opened

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console error: {message.text}")

    def check_url(self, url: str) -> None:
        if not url.startswith((self.server.http + "/", self.server.url + "/", "data:")):
            self.problems.append(f"request outside the server: {url}")

    def on_websocket(self, url: str) -> None:
        self.check_url(url)
        self.sockets.append(url)

    async def connect(self, token: str = TOKEN) -> None:
        await self.page.fill("#token", token)
        await self.page.click("#connect")

    async def screenshot(self, name: str) -> Path:
        """The page as a person sees it now, in build/screenshots/NAME.png (to look at later)."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: install Debian's chromium package (scripts/test does)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@asynccontextmanager
async def open_console(server: Server) -> AsyncIterator[Console]:
    require_chromium()
    expect.set_options(timeout=TIMEOUT_MS)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            found = Console(page, server)
            page.on("console", found.on_console)
            page.on("pageerror", lambda error: found.problems.append(f"page error: {error}"))
            page.on("request", lambda request: found.check_url(request.url))
            page.on("websocket", lambda websocket: found.on_websocket(websocket.url))
            await page.goto(server.http + "/")
            yield found
        finally:
            await browser.close()


async def seed(db_env: dict[str, str], *args: str) -> None:
    done = await asyncio.to_thread(run_cli, db_env, *args)
    assert done.returncode == 0, done.stderr


def mint(subject: str, lifetime: float, *, write: bool = False, **claims: Any) -> tuple[str, int]:
    """A JWT signed with the server's secret, and its `exp`."""
    expires = int(time.time() + lifetime)
    scope = "reports:read reports:write" if write else "reports:read"
    payload = {"sub": subject, "exp": expires, "iat": int(time.time()), "scope": scope, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256"), expires


async def until(console: Console, condition: str, within: float = TIMEOUT_MS / 1000) -> None:
    """Wait until ``condition`` (a JavaScript expression) holds in the page.

    NOTE: by polling page.evaluate: the page's CSP forbids the eval of wait_for_function.
    """
    await eventually(lambda: console.page.evaluate(f"() => {condition}"), within=within)
