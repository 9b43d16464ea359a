"""The console page at / in a real browser: Debian's headless Chromium driven by Playwright
(see tests/browser.py): requests, the identity, and a new token in band."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from playwright.async_api import Page, expect

from .browser import SECRET, Console, mint, open_console, seed
from .server import Server

pytestmark = pytest.mark.e2e


@pytest.fixture
async def console(server: Server) -> AsyncIterator[Console]:
    async with open_console(server) as found:
        yield found


@pytest.fixture
async def jwt_console(make_server: Callable[..., Server]) -> AsyncIterator[Console]:
    """The console on a server that also takes HS256 JWTs, and warns 58 s before an expiry."""
    server = make_server(jwt_secret=SECRET, token_expiry_warning="58")
    async with open_console(server) as found:
        yield found


async def shown_expiry(page: Page) -> datetime | None:
    """The expiry the page shows, as the server sent it (the text is in local time)."""
    value = await page.locator("#expiry").get_attribute("data-expires-at")
    return datetime.fromisoformat(value) if value else None


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
    # On connect, the feed shows the latest changes: here the four tutorial reports' additions.
    await expect(page.locator("#feed li")).to_have_count(4)

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
    assert versions == list(range(7, 0, -1)), versions

    # Disconnected, a change is missed; connecting again resumes after the last version seen.
    await page.click("#disconnect")
    await expect(page.locator("#status")).to_have_text(
        "disconnected (close 1000: disconnected by the user)"
    )
    await seed(db_env, "add", "while-away", "--title", "Missed")
    await page.click("#connect")
    await expect(page.locator("#status")).to_have_text("connected")
    await expect(
        page.locator('#feed [data-type="report.added"][data-name="while-away"]')
    ).to_contain_text("Missed")
    await expect(page.locator("#feed li")).to_have_count(8)
    assert console.problems == []


async def test_wrong_token_shows_the_close(console: Console) -> None:
    page = console.page
    await console.connect("not-the-token")
    status = page.locator("#status")
    await expect(status).to_have_text("wrong token (close 1008: invalid token)")
    await expect(page.locator("#get")).to_be_disabled()
    await expect(page.locator("#connect")).to_be_enabled()  # no retrying a bad token
    assert console.problems == []


async def test_identity_is_shown_after_connect(jwt_console: Console) -> None:
    page = jwt_console.page
    await expect(page.locator("#identity")).to_have_text("not connected")
    await jwt_console.connect()
    await expect(page.locator("#status")).to_have_text("connected")
    await expect(page.locator("#identity")).to_have_text(
        "connected as test · may read every report"
    )
    await expect(page.locator("#expiry")).to_have_text("no expiry")

    await page.click("#disconnect")
    await expect(page.locator("#identity")).to_have_text("not connected")
    token, expires = mint("alice", 3600, reports=["report1", "report2"])
    await jwt_console.connect(token)
    await expect(page.locator("#status")).to_have_text("connected")
    await expect(page.locator("#identity")).to_have_text(
        "connected as alice · may read reports report1, report2"
    )
    await expect(page.locator("#expiry")).to_contain_text("token expires at")
    assert await shown_expiry(page) == datetime.fromtimestamp(expires, UTC)
    # The list holds only what the token may read.
    results = page.locator("#results [data-testid=result-item]")
    await page.click("#list")
    await expect(results).to_have_count(2)
    assert jwt_console.problems == []


async def test_new_token_is_applied_without_reconnecting(
    jwt_console: Console, db_env: dict[str, str]
) -> None:
    page = jwt_console.page
    soon, _ = mint("alice", 60)  # inside the 58 s warning within about 2 s
    await jwt_console.connect(soon)
    await expect(page.locator("#status")).to_have_text("connected")
    notice = page.locator("#token-notice")
    await expect(notice).to_contain_text("the token expires at")
    await expect(notice).to_have_attribute("data-kind", "warning")

    later, expires = mint("alice", 7200, write=True)
    await page.fill("#new-token", later)
    await page.click("#refresh")
    await expect(notice).to_have_text("new token in force")
    await expect(page.locator("#identity")).to_contain_text("may read and write every report")
    assert await shown_expiry(page) == datetime.fromtimestamp(expires, UTC)
    assert await page.input_value("#new-token") == ""

    # Still the same connection: it was never reopened, and it still gets the live feed.
    await seed(db_env, "add", "after-refresh", "--title", "Fresh")
    await expect(page.locator('#feed [data-name="after-refresh"]')).to_contain_text("Fresh")
    await expect(page.locator("#status")).to_have_text("connected")
    assert jwt_console.sockets == [jwt_console.server.url + "/reports"]
    assert jwt_console.problems == []


async def test_refused_new_token_shows_the_error_and_stays_connected(
    jwt_console: Console,
) -> None:
    page = jwt_console.page
    token, expires = mint("alice", 3600)
    await jwt_console.connect(token)
    await expect(page.locator("#status")).to_have_text("connected")
    notice = page.locator("#token-notice")

    await page.fill("#new-token", "not-a-token")
    await page.click("#refresh")
    await expect(notice).to_contain_text("new token refused: invalid_token")
    await expect(notice).to_have_attribute("data-kind", "error")

    someone_else, _ = mint("bob", 7200)
    await page.fill("#new-token", someone_else)
    await page.click("#refresh")
    await expect(notice).to_contain_text("new token refused: forbidden")

    # The old token is still in force, on the same connection.
    await expect(page.locator("#status")).to_have_text("connected")
    await expect(page.locator("#identity")).to_contain_text("connected as alice")
    assert await shown_expiry(page) == datetime.fromtimestamp(expires, UTC)
    await page.fill("#get-name", "report1")
    await page.click("#get")
    await expect(page.locator("#report-title")).to_have_text("Report 1")
    assert jwt_console.sockets == [jwt_console.server.url + "/reports"]
    assert jwt_console.problems == []
