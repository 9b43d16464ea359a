"""The live console in Chromium (static/client.js under app.js): the open report and the list
follow the changes, the feed starts with the latest ones, the status says in words what
happened to the connection, and a server restart costs the feed nothing (and repeats nothing).

Each test leaves a screenshot in build/screenshots/ to look at."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from playwright.async_api import expect

from . import server as server_module
from .browser import SECRET, Console, mint, open_console, seed, until
from .server import Server

pytestmark = pytest.mark.e2e

FEED_EVENTS = "#feed li.event"
RESULTS = "#results [data-testid=result-item]"


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> str:
    """This test's screenshot name stem: its name, backend included."""
    name: str = request.node.name
    return name.replace("[", "-").replace("]", "")


@pytest.fixture
async def console(server: Server) -> AsyncIterator[Console]:
    async with open_console(server) as found:
        await found.connect()
        await expect(found.page.locator("#status")).to_have_text("connected")
        yield found


async def feed_versions(console: Console) -> list[int]:
    found: list[int] = await console.page.locator(FEED_EVENTS).evaluate_all(
        "items => items.map(item => Number(item.dataset.version))"
    )
    return found


async def test_the_open_report_follows_an_update_and_a_removal(
    console: Console, db_env: dict[str, str], shot: str
) -> None:
    page = console.page
    await page.fill("#get-name", "report1")
    await page.click("#get")
    await expect(page.locator("#report-title")).to_have_text("Report 1")
    await expect(page.locator("#report-version")).to_have_text("1")

    await seed(db_env, "add", "report1", "--title", "Report 1, revised", "--replace")
    await expect(page.locator("#report-title")).to_have_text("Report 1, revised")
    await expect(page.locator("#report-version")).to_have_text("5")
    await expect(page.locator("#report-live")).to_have_text("changed at version 5")
    await console.screenshot(f"{shot}-updated")

    await seed(db_env, "remove", "report1")
    await expect(page.locator("#report-live")).to_have_text(
        "removed at version 6: this is what it was"
    )
    await expect(page.locator("#report")).to_have_attribute("data-removed", "true")
    await expect(page.locator("#report-name")).to_have_text("report1")
    await console.screenshot(f"{shot}-removed")
    assert console.problems == []


async def test_a_new_report_appears_in_the_list(
    console: Console, db_env: dict[str, str], shot: str
) -> None:
    page = console.page
    results = page.locator(RESULTS)
    await expect(results).to_have_count(4)  # listed, newest first, on connect
    await seed(db_env, "add", "report5", "--title", "Report 5", "--content", "Fresh")
    await expect(results).to_have_count(5)
    await expect(results.first).to_have_attribute("data-name", "report5")
    await expect(results.first).to_contain_text("Report 5")

    await seed(db_env, "remove", "report2")
    await expect(page.locator('#results [data-name="report2"]')).to_have_count(0)
    names = await results.evaluate_all("items => items.map(item => item.dataset.name)")
    assert names == ["report5", "report4", "report3", "report1"]
    await expect(page.locator("#results-summary")).to_have_text("4 reports newest first")
    await console.screenshot(shot)
    assert console.problems == []


async def test_the_feed_shows_the_latest_changes_on_connect(
    server: Server, db_env: dict[str, str], tmp_path: Path, shot: str
) -> None:
    # Four tutorial reports (versions 1 to 4), then 22 more changes: 26 in all.
    lines = [{"name": f"bulk{n}", "title": f"Bulk {n}", "content": "c"} for n in range(22)]
    bulk = tmp_path / "bulk.jsonl"
    bulk.write_text("".join(json.dumps(line) + "\n" for line in lines))
    await seed(db_env, "add", "--file", str(bulk))

    async with open_console(server) as console:
        page = console.page
        await expect(page.locator("#feed")).to_have_text("")  # "No changes yet." (CSS)
        await console.connect()
        await expect(page.locator("#status")).to_have_text("connected")
        # The latest 20, newest first, before anything changes while connected.
        await until(console, f"document.querySelectorAll({FEED_EVENTS!r}).length === 20")
        assert await feed_versions(console) == list(range(26, 6, -1))
        await expect(page.locator("#feed-version")).to_have_text("at version 26")

        await seed(db_env, "add", "live", "--title", "Live")
        await expect(page.locator(FEED_EVENTS).first).to_have_attribute("data-name", "live")
        assert await feed_versions(console) == list(range(27, 6, -1))
        await console.screenshot(shot)
        assert console.problems == []


async def test_changes_missed_beyond_the_changelog_resync_the_page(
    make_server: Callable[..., Server], db_env: dict[str, str], tmp_path: Path, shot: str
) -> None:
    # NOTE: the writer (seed.py) prunes the changelog, so it gets the short retention too.
    env = {**db_env, "REPORTS_CHANGELOG_RETENTION": "5"}
    server = make_server(changelog_retention="5")
    async with open_console(server) as console:
        page = console.page
        status = page.locator("#status")
        await console.connect()
        await expect(status).to_have_text("connected")
        await expect(page.locator(FEED_EVENTS)).to_have_count(4)
        await page.fill("#get-name", "report1")
        await page.click("#get")
        await expect(page.locator("#report-title")).to_have_text("Report 1")
        await page.click("#disconnect")
        await expect(status).to_contain_text("disconnected")

        # Away: report1 replaced, then six more changes; the changelog keeps only the last five.
        await seed(env, "add", "report1", "--title", "Report 1, while away", "--replace")
        lines = [{"name": f"away{n}", "title": f"Away {n}", "content": "c"} for n in range(6)]
        bulk = tmp_path / "away.jsonl"
        bulk.write_text("".join(json.dumps(line) + "\n" for line in lines))
        await seed(env, "add", "--file", str(bulk))

        await page.click("#connect")
        await expect(status).to_have_text("resynced")
        await expect(page.locator("#feed [data-testid=feed-note]").first).to_have_text(
            "changes were missed (now at version 11): the lists were reloaded"
        )
        await expect(page.locator("#feed-version")).to_have_text("at version 11")
        # What the page shows was fetched again: the open report, and the list.
        await expect(page.locator("#report-title")).to_have_text("Report 1, while away")
        await expect(page.locator(RESULTS)).to_have_count(10)
        await expect(page.locator(RESULTS).first).to_have_attribute("data-name", "away5")
        await seed(env, "add", "after", "--title", "After")
        await expect(page.locator(FEED_EVENTS).first).to_have_attribute("data-name", "after")
        await expect(page.locator(FEED_EVENTS).first).to_have_attribute("data-version", "12")
        await expect(page.locator(FEED_EVENTS)).to_have_count(5)
        await console.screenshot(shot)
        assert console.problems == []


async def test_a_wrong_token_says_so_and_is_not_retried(server: Server, shot: str) -> None:
    async with open_console(server) as console:
        page = console.page
        await console.connect("not-the-token")
        status = page.locator("#status")
        await expect(status).to_have_text("wrong token (close 1008: invalid token)")
        await expect(status).to_have_attribute("data-state", "closed")
        await expect(page.locator("#connect")).to_be_enabled()
        await expect(page.locator("#get")).to_be_disabled()
        # NOTE: the page is in its resting state (Connect enabled, nothing scheduled); a round
        #   trip on /echo later, still only the one /reports socket was ever opened.
        await page.fill("#echo-input", "still here")
        await page.press("#echo-input", "Enter")
        await expect(page.locator("#echo-log li").first).to_contain_text("still here")
        assert console.sockets.count(server.url + "/reports") == 1
        await expect(status).to_have_text("wrong token (close 1008: invalid token)")
        await console.screenshot(shot)
        assert console.problems == []


async def test_the_feed_goes_on_across_a_server_restart_with_each_change_once(
    make_server: Callable[..., Server],
    db_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    shot: str,
) -> None:
    first = make_server(shutdown_grace="1")
    async with open_console(first) as console:
        page = console.page
        status = page.locator("#status")
        await console.connect()
        await expect(status).to_have_text("connected")
        await seed(db_env, "add", "before", "--title", "Before the restart")
        await expect(page.locator('#feed [data-name="before"]')).to_have_count(1)

        # SIGTERM: the server closes with 1012; while it is down, every retry fails (1006), and
        # the status keeps saying why the connection went.
        await asyncio.to_thread(first.stop)
        await expect(status).to_contain_text("server restarting, reconnecting")
        await expect(status).to_have_attribute("data-code", "1012")
        await until(console, "Number(document.getElementById('status').dataset.attempt) >= 3", 30)
        await expect(status).to_contain_text("server restarting, reconnecting")
        await expect(status).to_contain_text("(close 1012: service restart, attempt ")
        await console.screenshot(f"{shot}-reconnecting")
        await seed(db_env, "add", "while-down", "--title", "Made while the server was down")

        monkeypatch.setattr(server_module, "free_port", lambda: first.port)
        second = await asyncio.to_thread(make_server, shutdown_grace="1")
        await expect(status).to_have_text("connected", timeout=30_000)
        await seed(db_env, "add", "after", "--title", "After the restart")
        await expect(page.locator('#feed [data-name="after"]')).to_have_count(1)

        versions = await feed_versions(console)
        assert Counter(versions).most_common(1)[0][1] == 1, versions  # nothing twice
        assert versions == list(range(7, 0, -1)), versions  # nothing missed, newest first
        names = await page.locator(FEED_EVENTS).evaluate_all(
            "items => items.slice(0, 3).map(item => item.dataset.name)"
        )
        assert names == ["after", "while-down", "before"]
        await console.screenshot(f"{shot}-resumed")
        # NOTE: the browser reports each failed reconnect while no server listens
        down = "WebSocket connection to"
        assert not [p for p in console.problems if down not in p], console.problems
    for srv in (first, second):
        assert "Traceback" not in srv.log_path.read_text()


async def test_an_expired_token_says_so_and_is_not_retried(
    make_server: Callable[..., Server], shot: str
) -> None:
    server = make_server(jwt_secret=SECRET, jwt_leeway="0", token_expiry_warning="3")
    async with open_console(server) as console:
        page = console.page
        status = page.locator("#status")
        token, _ = mint("alice", 6)  # warned after 3 s, closed after 6 s
        await console.connect(token)
        await expect(status).to_have_text("connected")
        await expect(page.locator("#token-notice")).to_contain_text("the token expires at")
        await expect(status).to_have_text("token expired (close 1008: token expired)")
        await expect(status).to_have_attribute("data-state", "closed")
        await expect(page.locator("#connect")).to_be_enabled()
        assert console.sockets == [server.url + "/reports"]
        await console.screenshot(shot)
        assert console.problems == []


USE_THE_MODULE = """async ([first, later]) => {
    const { ReportsClient } = await import("/static/client.js");
    window.states = [];
    window.changes = [];
    const tokens = [first, later];
    window.client = new ReportsClient("/reports", {
        tokenProvider: async () => tokens.shift() ?? later,
        onState: (s) => states.push(s.state),
    });
    client.connect().subscribe({ since: 0, onChange: (e) => changes.push(e.version) });
    return (await client.get("report1")).title;
}"""


async def test_the_module_on_its_own_refreshes_its_token(
    make_server: Callable[..., Server], db_env: dict[str, str]
) -> None:
    """client.js as the README shows it, with a tokenProvider: a token about to expire is
    replaced in band (the server warns 58 s ahead; this one lives 60 s)."""
    server = make_server(jwt_secret=SECRET, token_expiry_warning="58")
    soon, _ = mint("alice", 60)
    later, expires = mint("alice", 7200)
    async with open_console(server) as console:
        title = await console.page.evaluate(USE_THE_MODULE, [soon, later])
        assert title == "Report 1"
        refreshed = f"new Date(client.identity?.expires_at).getTime() === {expires * 1000}"
        await until(console, refreshed)
        await seed(db_env, "add", "fresh", "--title", "Fresh")
        await until(console, "changes.length === 5")
        assert await console.page.evaluate("changes") == [1, 2, 3, 4, 5]
        assert await console.page.evaluate("states") == ["connected"]
        assert console.sockets == [server.url + "/reports"]  # refreshed on the same connection
        assert console.problems == []
