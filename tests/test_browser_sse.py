"""GET /api/changes in a real browser: Chromium's EventSource on the console page at /."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from . import server as server_module
from .browser import Console, open_console, seed, until
from .conftest import TOKEN
from .server import Server

pytestmark = pytest.mark.e2e

LISTEN = """token => {
    window.seen = [];
    window.opened = 0;
    const source = new EventSource('/api/changes?access_token=' + encodeURIComponent(token));
    source.onopen = () => { window.opened += 1; };
    for (const kind of ['report.added', 'report.updated', 'report.removed', 'resync']) {
        source.addEventListener(kind, e => {
            window.seen.push({kind: e.type, id: e.lastEventId, data: JSON.parse(e.data)});
        });
    }
}"""


async def seen(console: Console) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await console.page.evaluate("window.seen")
    return found


async def wait_for_report(console: Console, name: str) -> None:
    await until(console, f"window.seen.some(e => e.data.report?.name === {name!r})")


async def test_event_source_sees_changes_and_resumes_after_a_restart(
    make_server: Callable[..., Server],
    db_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = make_server(sse_keepalive="0.5", shutdown_grace="1")
    async with open_console(first) as console:
        await console.page.evaluate(LISTEN, TOKEN)
        await until(console, "window.opened === 1")
        await seed(db_env, "add", "in-browser", "--title", "Seen", "--content", "c")
        await wait_for_report(console, "in-browser")
        [added] = await seen(console)
        assert added["kind"] == "report.added"
        assert added["data"]["report"]["title"] == "Seen"
        assert added["id"] == str(added["data"]["version"])

        # NOTE: the server goes away; a change is made meanwhile; a new server on the same port
        #   gets the browser's reconnect, with Last-Event-ID, by itself.
        first.stop()
        await seed(db_env, "add", "while-down", "--title", "Missed", "--content", "c")
        monkeypatch.setattr(server_module, "free_port", lambda: first.port)
        second = make_server(sse_keepalive="0.5", shutdown_grace="1")
        await until(console, "window.opened === 2", within=30)
        await wait_for_report(console, "while-down")
        await seed(db_env, "remove", "in-browser")
        await until(console, "window.seen.some(e => e.kind === 'report.removed')")
        events = await seen(console)
        assert [(e["kind"], e["data"]["report"]["name"]) for e in events] == [
            ("report.added", "in-browser"),
            ("report.added", "while-down"),
            ("report.removed", "in-browser"),
        ]
        assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
        # NOTE: the browser reports its failed reconnects while no server listens
        down = "Failed to load resource: net::ERR_"
        assert not [p for p in console.problems if down not in p], console.problems
    for srv in (first, second):
        assert "Traceback" not in srv.log_path.read_text()
