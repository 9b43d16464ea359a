"""Crashes of a real server: killed with SIGKILL while writers write, restarted on the same
database and port. No acknowledged write is lost, the SQLite file stays sound, and a subscriber
that resumes across the crashes gets every change once, in order."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url
from websockets.exceptions import ConnectionClosed, InvalidStatus

from reports_service.repository import ReportRepository

from .clients import call, connect
from .conftest import WRITE_TOKEN
from .server import ROOT, Server, free_port
from .waiting import eventually

pytestmark = pytest.mark.e2e

CRASHES = 3
WRITES_BETWEEN = 100  # acknowledged writes before each crash, and after the last one
_logs = itertools.count()
# What a client meets while the server is down or coming back up.
GONE = (OSError, TimeoutError, ConnectionClosed, InvalidStatus, httpx.TransportError)


class RestartedServer(Server):
    """`serve` on a given port (the one a killed server had), logging to a file of its own."""

    def __init__(self, env: Mapping[str, str], port: int) -> None:
        # NOTE: Server.__init__ on a port of the caller's choosing; it takes none.
        self.port = port
        self.http = f"http://127.0.0.1:{port}"
        self.url = f"ws://127.0.0.1:{port}"
        self.log_path = Path(env["TMPDIR"]) / f"server-{port}-{next(_logs)}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reports_service", "serve", "--port", str(port)],
            cwd=ROOT,
            env={**env, "REPORTS_HOST": "127.0.0.1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_up()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()


@dataclass
class Clients:
    """Writers and a resuming subscriber that outlive the servers they talk to."""

    server: Server
    acked: dict[str, tuple[str, int]] = field(default_factory=dict)
    seen: list[tuple[int, str]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def write_ws(self) -> None:
        names = (f"ws-{i}" for i in itertools.count())
        while not self.stop.is_set():
            with contextlib.suppress(*GONE):
                ws = await connect(self.server, WRITE_TOKEN)
                async with ws:
                    while not self.stop.is_set():
                        name = next(names)
                        request = {"id": name, "type": "put", "name": name, "title": name}
                        reply = await call(ws, request)
                        if "result" in reply:
                            self.acked[name] = (name, reply["result"]["version"])
            await asyncio.sleep(0.05)  # NOTE: the server is down: try again soon

    async def write_http(self) -> None:
        names = (f"http-{i}" for i in itertools.count())
        auth = {"Authorization": f"Bearer {WRITE_TOKEN}"}
        async with httpx.AsyncClient(base_url=self.server.http, headers=auth, timeout=10) as api:
            while not self.stop.is_set():
                name = next(names)
                try:
                    response = await api.put(f"/api/reports/{name}", json={"title": name})
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
                    continue
                if response.status_code in (200, 201):
                    self.acked[name] = (name, response.json()["version"])

    async def subscribe(self, since: int) -> None:
        """Subscribed to all reports from ``since``; after a drop, resumes from the last seen."""
        while not self.stop.is_set():
            with contextlib.suppress(*GONE):
                ws = await connect(self.server)
                async with ws:
                    last = self.seen[-1][0] if self.seen else since
                    await call(ws, {"id": "s", "type": "subscribe", "since": last})
                    async for message in ws:
                        event = json.loads(message)
                        assert event["type"] == "report.added", event
                        self.seen.append((event["version"], event["report"]["name"]))
            await asyncio.sleep(0.05)


async def changes_since(server: Server, since: int, until: int) -> list[tuple[int, str]]:
    """A fresh subscriber's replay from ``since``, up to version ``until``."""
    found: list[tuple[int, str]] = []
    async with await connect(server) as ws:
        await call(ws, {"id": "s", "type": "subscribe", "since": since})
        async with asyncio.timeout(60):
            while not found or found[-1][0] < until:
                event = json.loads(await ws.recv())
                found.append((event["version"], event["report"]["name"]))
    return found


@pytest.mark.timeout(240)
async def test_kill_9_loses_no_acknowledged_write(
    db_env: dict[str, str],
    db_url: str,
    seeded_repository: ReportRepository,
    tmp_path: Path,
) -> None:
    env = {**db_env, "TMPDIR": str(tmp_path), "REPORTS_LOG_LEVEL": "INFO"}
    server = RestartedServer(env, free_port())
    async with await connect(server) as ws:
        before = (await call(ws, {"id": 1, "type": "ping"}))["result"]["version"]
    clients = Clients(server)
    tasks = [
        asyncio.create_task(work)
        for work in (clients.write_ws(), clients.write_http(), clients.subscribe(before))
    ]

    async def more_acknowledged() -> None:
        target = len(clients.acked) + WRITES_BETWEEN
        await eventually(lambda: len(clients.acked) >= target, within=60)

    try:
        for _ in range(CRASHES):
            await more_acknowledged()
            server.kill()
            server = clients.server = RestartedServer(env, server.port)
        await more_acknowledged()
    finally:
        clients.stop.set()
        for task in tasks[:2]:
            await task

    # Every acknowledged write is there.
    stored = {r.name: (r.title, r.version) for r in await seeded_repository.list_reports()}
    assert {name: stored.get(name) for name in clients.acked} == clients.acked
    assert len({version for _, version in clients.acked.values()}) == len(clients.acked)

    # A fresh replay from before the first crash: every change once, in order ...
    latest = max(version for _, version in stored.values())
    replay = await changes_since(server, before, latest)
    assert [version for version, _ in replay] == list(range(before + 1, latest + 1))
    assert {name: version for version, name in replay if name in clients.acked} == {
        name: version for name, (_, version) in clients.acked.items()
    }
    # ... and so for the subscriber that was resuming across the crashes.
    await eventually(lambda: clients.seen and clients.seen[-1][0] >= latest, within=60)
    tasks[2].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await tasks[2]
    assert clients.seen == replay

    server.stop()
    if make_url(db_url).get_backend_name() == "sqlite":
        path = make_url(db_url).database
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert db.execute("SELECT count(*) FROM reports").fetchone()[0] == len(stored)
