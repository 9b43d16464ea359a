"""A soak of a real server: connections churning, subscribers resuming, writers writing.

Bounded for CI (about a minute per backend); ``REPORTS_SOAK_SECONDS`` makes it longer by hand.
The load runs once to warm up (pools opened, caches filled, the allocator's arenas grown), then
again; after each run, with every client gone, the server's RSS and open file descriptors are
read, and the second reading must come back to the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from .clients import call, connect
from .conftest import TOKEN, WRITE_TOKEN
from .server import Server
from .waiting import eventually

pytestmark = pytest.mark.e2e

SOAK_SECONDS = float(os.environ.get("REPORTS_SOAK_SECONDS", "45"))
WARM_UP_SECONDS = max(10.0, SOAK_SECONDS / 3)
NAMES = 40  # reports each writer cycles through
# NOTE: RSS may grow a little after warm-up without any leak (the allocator keeps freed arenas,
#   the report cache and the changelog's in-memory tail fill up); a leak of a connection's
#   buffers or tasks over thousands of connections is far larger than this.
RSS_MARGIN = 0.20
RSS_MARGIN_BYTES = 10 * 1024 * 1024
# NOTE: a few descriptors come and go without a leak: pooled database connections (and
#   SQLite's WAL handles) opened for a burst, and sockets still closing.
FD_SLACK = 6


@dataclass
class Written:
    """Acknowledged writes: the last title and version of each name, and every version."""

    latest: dict[str, tuple[str, int]] = field(default_factory=dict)
    versions: dict[int, str] = field(default_factory=dict)

    def ack(self, name: str, title: str, version: int) -> None:
        self.latest[name] = (title, version)
        self.versions[version] = name


@dataclass
class Seen:
    """What one subscriber received, across its resumes: each change's version and name."""

    versions: list[int] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)
    resumes: int = 0

    @property
    def last(self) -> int:
        return self.versions[-1] if self.versions else 0

    def record(self, event: dict[str, Any]) -> None:
        assert event["type"] in ("report.added", "report.updated", "report.removed"), event
        self.versions.append(event["version"])
        self.names[event["version"]] = event["report"]["name"]


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert found, status
    return int(found.group(1)) * 1024


def descriptors(pid: int) -> list[str]:
    fds = Path(f"/proc/{pid}/fd")
    targets = []
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            targets.append(os.readlink(fd))
    return sorted(targets)


def connections_open(server: Server) -> float:
    """WebSocket connections and event streams the server holds, on every route."""
    with urllib.request.urlopen(server.http + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(r"^reports_connections_open\{.*\} (\S+)$", text, re.M))


class Load:
    """The clients of one run; each loops until ``stop`` is set."""

    def __init__(self, server: Server, written: Written, subscribers: list[Seen]) -> None:
        self.server = server
        self.written = written
        self.subscribers = subscribers
        self.stop = asyncio.Event()
        self.random = random.Random(15)
        self.churned = 0

    def api(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.server.http,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10, read=30),
        )

    async def churn(self) -> None:
        while not self.stop.is_set():
            ws = await connect(self.server)
            reply = await call(ws, {"id": 1, "type": "get", "name": "report1"})
            assert reply["result"]["title"] == "Report 1", reply
            await ws.close()
            self.churned += 1

    async def write_ws(self) -> None:
        ws = await connect(self.server, WRITE_TOKEN)
        i = 0
        while not self.stop.is_set():
            name, title = f"ws-{i % NAMES}", f"ws {i}"
            request = {"id": i, "type": "put", "name": name, "title": title, "content": "c"}
            reply = await call(ws, request)
            self.written.ack(name, title, reply["result"]["version"])
            i += 1
            await asyncio.sleep(0.02)  # NOTE: a steady writer, well under the rate limit
        await ws.close()

    async def write_http(self) -> None:
        async with self.api(WRITE_TOKEN) as client:
            i = 0
            while not self.stop.is_set():
                name, title = f"http-{i % NAMES}", f"http {i}"
                response = await client.put(f"/api/reports/{name}", json={"title": title})
                assert response.status_code in (200, 201), response.text
                self.written.ack(name, title, response.json()["version"])
                i += 1
                await asyncio.sleep(0.02)

    async def subscribe_ws(self, seen: Seen, until: int | None = None) -> None:
        """Subscribe to all reports from the last version seen, for a while, and leave."""
        ws = await connect(self.server)
        try:
            reply = await call(ws, {"id": "s", "type": "subscribe", "since": seen.last})
            assert reply["result"]["names"] is None, reply

            async def next_event() -> Any:
                return json.loads(await ws.recv())

            await self._receive(seen, until, next_event)
        finally:
            seen.resumes += 1
            await ws.close()

    async def subscribe_sse(self, seen: Seen, until: int | None = None) -> None:
        """GET /api/changes resumed with Last-Event-ID, for a while, and leave."""
        async with (
            self.api(TOKEN) as client,
            client.stream(
                "GET", "/api/changes", headers={"Last-Event-ID": str(seen.last)}
            ) as response,
        ):
            assert response.status_code == 200
            lines = response.aiter_lines()

            async def next_event() -> Any:
                fields: dict[str, str] = {}
                async for line in lines:
                    if line == "" and "data" in fields:
                        return json.loads(fields["data"])
                    if line == "":
                        fields = {}
                    elif not line.startswith(":"):
                        key, _, value = line.partition(":")
                        fields[key] = value.removeprefix(" ")
                raise AssertionError("the event stream ended")

            try:
                await self._receive(seen, until, next_event)
            finally:
                seen.resumes += 1

    async def _receive(
        self, seen: Seen, until: int | None, next_event: Callable[[], Coroutine[Any, Any, Any]]
    ) -> None:
        """Events until version ``until``, or (when None) for up to two seconds."""
        if until is not None:
            async with asyncio.timeout(60):
                while seen.last < until:
                    seen.record(await next_event())
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.random.uniform(0.2, 2.0)):
                while True:
                    seen.record(await next_event())

    async def resume_forever(self, seen: Seen, session: Callable[[Seen], Any]) -> None:
        while not self.stop.is_set():
            await session(seen)

    async def run(self, seconds: float) -> None:
        self.stop.clear()
        ws_subscribers, sse_subscribers = self.subscribers[:2], self.subscribers[2:]
        tasks = [asyncio.create_task(self.churn()) for _ in range(4)]
        tasks += [asyncio.create_task(self.write_ws()), asyncio.create_task(self.write_http())]
        tasks += [
            asyncio.create_task(self.resume_forever(s, self.subscribe_ws)) for s in ws_subscribers
        ]
        tasks += [
            asyncio.create_task(self.resume_forever(s, self.subscribe_sse)) for s in sse_subscribers
        ]
        await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
        self.stop.set()
        await asyncio.gather(*tasks)  # NOTE: raises the first client's failure, if any


async def quiet(server: Server) -> None:
    """Every client gone, as the server counts them."""
    await eventually(lambda: connections_open(server) == 0, within=30)


@pytest.mark.timeout(WARM_UP_SECONDS + SOAK_SECONDS + 180)
async def test_soak(make_server: Callable[..., Server]) -> None:
    server = make_server(log_level="INFO")
    pid = server.process.pid
    written = Written()
    subscribers = [Seen() for _ in range(4)]
    load = Load(server, written, subscribers)

    await load.run(WARM_UP_SECONDS)
    await quiet(server)
    rss_levelled, fds_levelled = rss(pid), descriptors(pid)

    await load.run(SOAK_SECONDS)
    await quiet(server)
    assert load.churned > 100 and all(s.resumes > 5 for s in subscribers), load.churned

    def fds_back() -> list[str] | None:
        fds = descriptors(pid)
        return fds if len(fds) <= len(fds_levelled) + FD_SLACK else None

    fds_after = await eventually(fds_back, within=30)
    assert len(fds_after) >= len(fds_levelled) - FD_SLACK, (fds_levelled, fds_after)
    rss_after = rss(pid)
    bound = max(rss_levelled * (1 + RSS_MARGIN), rss_levelled + RSS_MARGIN_BYTES)
    assert rss_after <= bound, f"RSS grew from {rss_levelled} to {rss_after} bytes"

    # Every acknowledged write is there, as its last writer left it.
    async with load.api(TOKEN) as client:
        for name, (title, version) in written.latest.items():
            report = (await client.get(f"/api/reports/{name}")).json()
            assert (report["title"], report["version"]) == (title, version), name
        latest = (await client.get("/api/reports", params={"limit": 1})).json()
    final = latest["reports"][0]["version"]

    # Every subscriber, caught up, saw every change once, in order, across all its resumes.
    for seen in subscribers[:2]:
        await load.subscribe_ws(seen, until=final)
    for seen in subscribers[2:]:
        await load.subscribe_sse(seen, until=final)
    for seen in subscribers:
        assert seen.versions == list(range(1, final + 1)), f"after {seen.resumes} resumes"
        assert all(seen.names[v] == name for v, name in written.versions.items())

    server.stop()
    log = server.log_path.read_text(errors="replace")
    assert " ERROR " not in log and "Traceback" not in log, log[-5000:]
