"""Chaos: the server behind a fixed address (a TCP proxy) stopped with SIGTERM, killed with
SIGKILL, started again, and once moved to a second server process on another port of the same
database, while a writer commits a few hundred changes through `seed.py` and over the WebSocket
(retrying its own writes while the server is down). Consumers that never reconnect by hand, the
library's `ReportsClient.changes()` and `reports-client watch --json`, see exactly the changes
the database committed, once each, in version order."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from reports_service.client import ReportsClient, Resync, Status
from reports_service.protocol import ReportEvent
from reports_service.repository import ReportRepository

from .cli_process import Cli, client_env
from .conftest import TOKEN, WRITE_TOKEN
from .proxy import TcpProxy
from .server import ROOT, free_port
from .test_crash import RestartedServer
from .waiting import eventually

pytestmark = pytest.mark.e2e

# Each outage ends the server behind the proxy and starts another: "move" starts the next one
# on another port first, points the proxy at it, then stops the old one (SIGTERM).
OUTAGES = ("term", "kill", "term", "move", "kill", "term")
PUTS_PER_SPELL = 30  # acknowledged puts while each server runs ...
BATCHES_PER_SPELL = 2  # ... and seed.py batches (5 changes each: 4 reports and a removal)
GONE = (OSError, TimeoutError, ConnectionClosed, InvalidHandshake)

Seen = tuple[int, str, str]  # (version, event type, report name)


@dataclass
class Writer:
    """Writes until told to stop, over the WebSocket (through the proxy) and with `seed.py`
    (to the database directly, so also while no server runs), and records what was
    acknowledged."""

    url: str
    env: Mapping[str, str]
    tmp: Path
    puts: dict[int, str] = field(default_factory=dict)  # acknowledged version -> name
    seeded: list[str] = field(default_factory=list)  # names seed.py said it wrote or removed
    batches: int = 0
    refused: int = 0  # puts the server could not take (down, or going down): tried again
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def put_forever(self) -> None:
        try:
            await self._put_until_stopped()
        finally:
            if self._ws is not None:
                await self._ws.close()

    async def _put_until_stopped(self) -> None:
        for n in itertools.count():
            # NOTE: 40 names, so most puts replace a report: added and updated events.
            request = {"type": "put", "id": n, "name": f"put-{n % 40}", "title": f"Put {n}"}
            while not await self._put(request):
                if self.stop.is_set():
                    return
                self.refused += 1
                await asyncio.sleep(0.05)  # NOTE: the server is down: try again soon
            if self.stop.is_set():
                return
            await asyncio.sleep(0.1)  # NOTE: a pace, so the writes span every outage

    async def _put(self, request: dict[str, Any]) -> bool:
        """Whether the put was acknowledged (on one connection, kept between puts)."""
        try:
            if self._ws is None:
                self._ws = await websockets.connect(self.url + "/reports", open_timeout=5)
                await self._ws.send(WRITE_TOKEN)
            await self._ws.send(json.dumps(request))
            reply = json.loads(await asyncio.wait_for(self._ws.recv(), 10))
        except GONE:
            self._ws = None
            return False
        if "result" not in reply:  # NOTE: `unavailable` while the server stops
            return False
        self.puts[reply["result"]["version"]] = request["name"]
        return True

    _ws: Any = None

    async def seed_forever(self) -> None:
        for batch in itertools.count():
            names = [f"seed-{batch}-{k}" for k in range(4)]
            if batch:
                names[0] = f"seed-{batch - 1}-0"  # replaced: an update
            path = self.tmp / f"batch-{batch}.jsonl"
            path.write_text("".join(json.dumps({"name": n, "title": n}) + "\n" for n in names))
            if not await self._seed("add", "--file", str(path), "--replace"):
                raise AssertionError(f"seed.py add failed on batch {batch}")
            gone = f"seed-{batch}-1"
            if not await self._seed("remove", gone):
                raise AssertionError(f"seed.py remove failed on batch {batch}")
            self.seeded += [*names, gone]
            self.batches += 1
            if self.stop.is_set():
                return

    async def _seed(self, *args: str) -> bool:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "seed.py"),
            *args,
            cwd=ROOT,
            env=dict(self.env),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await process.wait() == 0


def seen_event(item: ReportEvent | Resync) -> Seen:
    if isinstance(item, Resync):
        return (item.version, "resync", "")
    return (item.version, item.type, item.report.name)


@dataclass
class Library:
    """``ReportsClient.changes()`` from ``since``, collected."""

    url: str
    since: int
    seen: list[Seen] = field(default_factory=list)
    drops: int = 0

    def on_status(self, status: Status) -> None:
        if status.state == "reconnecting":
            self.drops += 1

    async def run(self) -> None:
        client = ReportsClient(self.url, token=TOKEN, backoff_cap=2.0, on_status=self.on_status)
        async with client:
            async for item in client.changes(since=self.since):
                self.seen.append(seen_event(item))


def watched(cli: Cli) -> list[Seen]:
    lines = [json.loads(line) for line in cli.out]
    return [(x["version"], x["type"], x.get("name", "")) for x in lines]


@pytest.mark.timeout(420)
async def test_consumers_see_every_committed_change_once_in_order(
    db_env: dict[str, str], seeded_repository: ReportRepository, tmp_path: Path
) -> None:
    env = {
        **db_env,
        "TMPDIR": str(tmp_path),
        "REPORTS_LOG_LEVEL": "INFO",
        "REPORTS_RATE_LIMIT": "0",
    }
    servers: list[RestartedServer] = []

    async def serve(port: int) -> RestartedServer:
        servers.append(await asyncio.to_thread(RestartedServer, env, port))
        return servers[-1]

    server = await serve(free_port())
    before = (await seeded_repository.changelog_bounds())[1]
    proxy = TcpProxy("127.0.0.1", server.port)
    await proxy.start()
    url = f"ws://127.0.0.1:{proxy.port}"
    writer = Writer(url, db_env, tmp_path)
    library = Library(url, before)
    cli = await Cli.start(
        "reports-client", "watch", "--json", "--since", str(before), env=client_env(url, TOKEN)
    )
    tasks = [
        asyncio.create_task(work)
        for work in (writer.put_forever(), writer.seed_forever(), library.run())
    ]

    def library_seen() -> list[Seen]:
        """What changes() yielded so far; its error, if it ended."""
        if tasks[2].done():
            tasks[2].result()
            raise AssertionError("changes() ended")
        return library.seen

    def watch_seen() -> list[Seen]:
        """What the watch printed so far; its stderr, if it exited."""
        if cli.process.returncode is not None:
            raise AssertionError(f"watch exited with {cli.process.returncode}: {cli.stderr}")
        return watched(cli)

    def cli_drops() -> int:
        return sum("reconnecting in" in line for line in cli.err)

    async def a_spell() -> None:
        """Until the writers have written more to the server now running, and both consumers
        are connected to it (they have seen its latest put)."""
        puts, batches = len(writer.puts) + PUTS_PER_SPELL, writer.batches + BATCHES_PER_SPELL
        await eventually(lambda: len(writer.puts) >= puts and writer.batches >= batches, within=90)
        mark = max(writer.puts)
        await eventually(lambda: (s := library_seen()) and s[-1][0] >= mark, within=60)
        await eventually(lambda: (s := watch_seen()) and s[-1][0] >= mark, within=60)

    kills = 0
    try:
        for outage in OUTAGES:
            await a_spell()
            drops = (library.drops, cli_drops())
            refused = writer.refused
            if outage == "move":
                moved = await serve(free_port())
                proxy.target = ("127.0.0.1", moved.port)
                await asyncio.to_thread(server.stop)
                server = moved
            else:
                if outage == "kill":
                    await asyncio.to_thread(server.kill)
                    kills += 1
                else:
                    await asyncio.to_thread(server.stop)
                # The writer met the server down, and tries again until it is back.
                await eventually(lambda: writer.refused > refused, within=30)  # noqa: B023
                server = await serve(server.port)
            # Both consumers lost their connection, and reconnect by themselves.
            await eventually(
                lambda: library.drops > drops[0] and cli_drops() > drops[1],  # noqa: B023
                within=30,
            )
        await a_spell()
        writer.stop.set()
        written = await asyncio.gather(*tasks[:2], return_exceptions=True)
        assert [x for x in written if x is not None] == []  # seed.py never failed

        oldest, latest, _ = await seeded_repository.changelog_bounds()
        assert oldest <= before
        await eventually(lambda: (s := library_seen()) and s[-1][0] >= latest, within=120)
        await eventually(lambda: (s := watch_seen()) and s[-1][0] >= latest, within=120)
        status = await cli.stop()
    finally:
        writer.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await cli.kill()
        await proxy.stop()
        for each in servers:
            await asyncio.to_thread(each.stop)

    committed = [
        (c.version, f"report.{c.op}", c.report.name)
        for c in await seeded_repository.changes_since(before, limit=100_000)
    ]
    print(
        f"\nchaos: {len(committed)} changes ({len(writer.puts)} puts, {writer.batches} seed.py "
        f"batches), {len(OUTAGES)} restarts ({kills} SIGKILL, 1 move), "
        f"drops seen: library {library.drops}, watch {cli_drops()}"
    )
    # What the writer was told was done is in the changelog, at the version it was told.
    by_version = {version: name for version, _, name in committed}
    assert {v: by_version.get(v) for v in writer.puts} == writer.puts
    assert set(writer.seeded) <= {name for _, _, name in committed}
    # Each consumer saw exactly the committed changes, once each, in version order.
    assert library.seen == committed
    assert watched(cli) == committed
    assert status == 0
    assert "Traceback" not in cli.stderr
