"""The console page at / in a real browser: Debian's headless Chromium driven by Playwright.

Playwright's own browser download does not work on the project's machines, so the browser is
Debian's `chromium` package (scripts/test installs it). Without it these tests fail under CI and
are skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright, expect

from .conftest import TOKEN
from .server import Server, run_cli

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

pytestmark = pytest.mark.e2e


@dataclass
class Console:
    """The page, and what went wrong in it: errors, and requests to anywhere but the server."""

    page: Page
    server: Server
    problems: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console error: {message.text}")

    def check_url(self, url: str) -> None:
        if not url.startswith((self.server.http + "/", self.server.url + "/", "data:")):
            self.problems.append(f"request outside the server: {url}")

    async def connect(self, token: str = TOKEN) -> None:
        await self.page.fill("#token", token)
        await self.page.click("#connect")


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: install Debian's chromium package (scripts/test does)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
async def console(server: Server) -> AsyncIterator[Console]:
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
            page.on("websocket", lambda websocket: found.check_url(websocket.url))
            await page.goto(server.http + "/")
            yield found
        finally:
            await browser.close()


async def seed(db_env: dict[str, str], *args: str) -> None:
    done = await asyncio.to_thread(run_cli, db_env, *args)
    assert done.returncode == 0, done.stderr


async def test_query_list_and_search(console: Console) -> None:
    page = console.page
    await expect(page.locator("#status")).to_have_text("disconnected")
    await expect(page.locator("#get")).to_be_disabled()
    await console.connect()
    await expect(page.locator("#status")).to_have_text("connected")

    await page.fill("#get-name", "report1")
    await page.click("#get")
    await expect(page.locator("#report-title")).to_have_text("Report 1")
    await expect(page.locator("#report-content")).to_have_text("This is the content of report 1")
    await page.fill("#get-name", "missing")
    await page.click("#get")
    await expect(page.locator("#report-error")).to_contain_text("no report named")
    await expect(page.locator("#report")).to_be_hidden()

    results = page.locator("#results [data-testid=result-item]")
    await page.click("#list")
    await expect(results).to_have_count(4)
    await page.fill("#page-size", "3")
    await page.click("#list")
    await expect(results).to_have_count(3)
    await page.click("#more")
    await expect(results).to_have_count(4)
    await expect(page.locator("#more")).to_be_hidden()
    names = await results.evaluate_all("items => items.map(item => item.dataset.name)")
    assert sorted(names) == [f"report{n}" for n in range(1, 5)]

    await page.fill("#search-q", "report 3")
    await page.click("#search")
    await expect(results).to_have_count(1)
    await expect(results.first).to_contain_text("Report 3")
    await results.first.locator("button").click()
    await expect(page.locator("#report-name")).to_have_text("report3")

    await page.fill("#echo-input", "hello")
    await page.press("#echo-input", "Enter")
    await expect(page.locator("#echo-log li").first).to_contain_text("hello")
    assert console.problems == []


async def test_changes_by_seed_script_appear_in_the_feed(
    console: Console, db_env: dict[str, str]
) -> None:
    page = console.page
    await console.connect()
    await expect(page.locator("#status")).to_have_text("connected")

    await seed(db_env, "add", "live", "--title", "Live <b>report</b>", "--content", "c")
    added = page.locator('#feed [data-type="report.added"][data-name="live"]')
    await expect(added.locator(".title")).to_have_text("Live <b>report</b>")  # text, not markup
    await expect(added.locator(".kind")).to_have_text("added")
    await expect(added.locator(".version")).to_have_text(re.compile(r"v\d+"))
    await seed(db_env, "add", "live", "--title", "Renamed", "--replace")
    updated = page.locator('#feed [data-type="report.updated"][data-name="live"]')
    await expect(updated).to_contain_text("Renamed")
    await seed(db_env, "remove", "live")
    await expect(
        page.locator('#feed [data-type="report.removed"][data-name="live"]')
    ).to_be_visible()
    versions = await page.locator("#feed li").evaluate_all(
        "items => items.map(item => Number(item.dataset.version))"
    )
    assert len(versions) == 3 and versions == sorted(versions, reverse=True), versions

    # Disconnected, a change is missed; connecting again resumes after the last version seen.
    await page.click("#disconnect")
    await expect(page.locator("#status")).to_contain_text("closed 1000")
    await seed(db_env, "add", "while-away", "--title", "Missed")
    await page.click("#connect")
    await expect(page.locator("#status")).to_have_text("connected")
    await expect(
        page.locator('#feed [data-type="report.added"][data-name="while-away"]')
    ).to_contain_text("Missed")
    await expect(page.locator("#feed li")).to_have_count(4)
    assert console.problems == []


async def test_wrong_token_shows_the_close(console: Console) -> None:
    page = console.page
    await console.connect("not-the-token")
    status = page.locator("#status")
    await expect(status).to_contain_text("1008")
    await expect(status).to_contain_text("invalid token")
    await expect(page.locator("#get")).to_be_disabled()
    await expect(page.locator("#connect")).to_be_enabled()  # no retrying a bad token
    assert console.problems == []
