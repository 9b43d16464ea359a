"""A fleet of subscribers for fan-out: picows connections spread over processes and addresses.

`python -m benchmarks.fleet --url URL --subscribers N --processes P --sources S ...` starts P
worker processes (``--worker``), each holding its share of the N connections, spread over
source addresses 127.0.0.2 and up. Each connection sends the token (``--token``), then
``{"id":1,"type":"subscribe"}``, and waits for its ``result``. A worker notes when each pushed
change's ``version`` reached each of its connections (time.perf_counter: CLOCK_MONOTONIC, the
same clock in every process of the machine), by finding ``"version":`` in the frame rather
than parsing it, and tells the driver (this process) the first and last arrival per version.

The driver makes the changes, either

* ``--database-url DB``: commits through the service's own repository, here, in another
  process than the server (as ``benchmarks/feedlat.py`` does); the clock starts when the
  commit returns; or
* ``--publish``: sends ``{"type":"change","version":N}`` on one more connection to a
  broadcast server (``benchmarks/servers/bare_broadcast.py``); the clock starts at the send;

and either ``--changes K`` one at a time (each waited for at every subscriber, ``--pause``
between), or ``--rate R`` a second for ``--duration D`` seconds without waiting (sustained;
behind the schedule, the changes due are made in one commit).
With ``--wait`` it prints ``{"event": "ready", ...}`` once all are subscribed and waits for a
line on stdin before the first change (so the caller can measure the server meanwhile).

Output, JSON lines on stdout: ``ready``; one line per version (``first_ms``/``all_ms``: ms from
the commit to the first and to the last arrival, ``received``); and last ``done``, with the
lists, the deliveries a second, the connections the server closed (and their close codes), and
the CPU time of the whole fleet (its workers and the driver) as a share of the wall time, so
that a client bottleneck is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# NOTE: picows comes with the `bench` extra (see load.py).
from picows import (  # type: ignore[import-not-found,unused-ignore]
    WSFrame,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from benchmarks.load import (
    Client,
    LoadError,
    Run,
    close_clients,
    cpu_seconds,
    open_clients,
    raise_fd_limit,
    source_address,
)
from benchmarks.procs import _die_with_parent

SUBSCRIBE = b'{"id":1,"type":"subscribe"}'
VERSION = re.compile(rb'"version":(\d+)')
MAX_BATCH = 100
"""Changes made in one commit at most, when the sustained schedule has fallen behind."""
WAIT_PER_CHANGE = 10.0
"""Seconds one change (of --changes) may take to reach every subscriber."""


# -- the worker: one process holding a share of the connections --------------------------------


class Tally:
    """Per version: the first and last arrival at this worker's connections, and how many."""

    def __init__(self) -> None:
        self.expected = 0
        self.versions: dict[int, list[float]] = {}
        self.other = 0
        self.closes: Counter[int] = Counter()
        self.disconnected = 0

    def arrived(self, version: int, now: float) -> None:
        entry = self.versions.get(version)
        if entry is None:
            entry = self.versions[version] = [now, now, 0]
        entry[1] = now
        entry[2] += 1
        if entry[2] == self.expected:
            emit({"v": version, "first": entry[0], "last": entry[1], "n": entry[2]})
            del self.versions[version]


class Subscriber(Client):
    """A connection of the fleet: set-up replies go to ``request``; then pushes are tallied."""

    def __init__(self, run: Run, offset: int, tally: Tally) -> None:
        super().__init__(run, offset)
        self.tally = tally
        self.subscribed = False
        self.closing = False

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            # NOTE: an application's code (4001) may not be a member of picows' enum.
            code: Any = frame.get_close_code()
            self.tally.closes[int(getattr(code, "value", code))] += 1
        if not self.subscribed or frame.msg_type is WSMsgType.CLOSE:
            super().on_ws_frame(transport, frame)
            return
        now = time.perf_counter()
        payload: bytes = frame.get_payload_as_bytes()
        # NOTE: the version is the event's last field; no JSON parse of the whole frame.
        at = payload.rfind(b'"version":')
        match = VERSION.match(payload, at) if at >= 0 else None
        if match is None:
            self.tally.other += 1
            return
        self.tally.arrived(int(match[1]), now)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.subscribed and not self.closing:
            self.tally.disconnected += 1
        super().on_ws_disconnected(transport)

    def close(self) -> None:
        self.closing = True
        super().close()


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


async def open_subscriber(args: argparse.Namespace, run: Run, offset: int) -> Client:
    transport, client = await ws_connect(
        lambda: Subscriber(run, offset, args.tally),
        args.url,
        websocket_handshake_timeout=args.connect_timeout,
        enable_auto_pong=True,
        **source_address(args.sources, offset),
    )
    assert isinstance(client, Subscriber)
    if args.token:
        transport.send(WSMsgType.TEXT, args.token.encode())
    async with asyncio.timeout(args.connect_timeout):
        reply = await client.request(SUBSCRIBE)
    if not reply.startswith(b'{"id":1,"result"'):
        client.close()
        raise LoadError(f"subscribe answered {reply[:200]!r}")
    client.subscribed = True
    return client


async def worker(args: argparse.Namespace) -> None:
    tally = args.tally = Tally()
    run = Run("echo", [b""])
    started = time.perf_counter()
    clients, failed = await open_clients(args, run, open_subscriber)
    tally.expected = len(clients)
    emit(
        {
            "event": "ready",
            "connections": len(clients),
            "failed": failed,
            "seconds": time.perf_counter() - started,
        }
    )
    cpu0 = time.process_time()
    await read_line()
    cpu = time.process_time() - cpu0
    for version, (first, last, n) in sorted(tally.versions.items()):
        emit({"v": version, "first": first, "last": last, "n": n})
    emit(
        {
            "event": "done",
            "cpu_s": cpu,
            "other": tally.other,
            "closes": dict(tally.closes),
            "disconnected": tally.disconnected,
        }
    )
    await close_clients(clients, args.drain_timeout)


async def read_line() -> bytes:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        return await reader.readline()
    finally:
        transport.close()


# -- the driver: starts the workers, makes the changes, adds it all up -------------------------


@dataclass
class Version:
    committed: float = 0.0
    first: float = float("inf")
    last: float = 0.0
    received: int = 0
    complete: asyncio.Event = field(default_factory=asyncio.Event)


class Fleet:
    """The worker processes and what they report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs: list[asyncio.subprocess.Process] = []
        self.expected = 0
        self.versions: dict[int, Version] = {}
        self.done: list[dict[str, Any]] = []
        self.readers: list[asyncio.Task[None]] = []

    def version(self, number: int) -> Version:
        if number not in self.versions:
            self.versions[number] = Version()
        return self.versions[number]

    async def start(self) -> dict[str, Any]:
        args = self.args
        shares = [args.subscribers // args.processes] * args.processes
        for i in range(args.subscribers % args.processes):
            shares[i] += 1
        for share in (s for s in shares if s):
            command = [sys.executable, "-m", "benchmarks.fleet", "--worker", "--url", args.url]
            command += ["--subscribers", str(share), "--sources", str(args.sources)]
            command += ["--connect-budget", str(args.connect_budget)]
            command += ["--concurrency", str(args.concurrency)]
            if args.token:
                command += ["--token", args.token]
            # NOTE: a worker also ends when its stdin closes (the driver gone); the
            #   parent-death signal ends it even while it is still connecting.
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                limit=1 << 20,
                preexec_fn=_die_with_parent,
            )
            self.procs.append(proc)
        ready: dict[str, Any] = {"event": "ready", "connections": 0, "failed": 0, "seconds": 0.0}
        for proc in self.procs:
            line = await self.next_line(proc, args.connect_budget + 60)
            if line.get("event") != "ready":
                raise LoadError(f"a fleet worker did not start: {line}")
            ready["connections"] += line["connections"]
            ready["failed"] += line["failed"]
            ready["seconds"] = max(ready["seconds"], line["seconds"])
        self.expected = int(ready["connections"])
        self.readers = [asyncio.create_task(self.read(proc)) for proc in self.procs]
        return ready

    @staticmethod
    async def next_line(proc: asyncio.subprocess.Process, seconds: float) -> dict[str, Any]:
        assert proc.stdout is not None
        async with asyncio.timeout(seconds):
            raw = await proc.stdout.readline()
        if not raw:
            raise LoadError(f"a fleet worker exited ({await proc.wait()})")
        value: dict[str, Any] = json.loads(raw)
        return value

    async def read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = json.loads(raw)
            if "v" not in line:
                self.done.append(line)
                return
            entry = self.version(int(line["v"]))
            entry.first = min(entry.first, line["first"])
            entry.last = max(entry.last, line["last"])
            entry.received += line["n"]
            if entry.received >= self.expected:
                entry.complete.set()

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None and proc.returncode is None:
                with contextlib.suppress(OSError):
                    proc.stdin.write(b"stop\n")
                    await proc.stdin.drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.gather(*self.readers, return_exceptions=True)
        for proc in self.procs:
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()


class Publisher:
    """Makes change number N: a commit through the repository, or a message to broadcast."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.repository: Any = None
        self.client: Client | None = None

    async def open(self) -> None:
        if self.args.publish:
            _, client = await ws_connect(
                lambda: Client(Run("echo", [b""]), 0), self.args.url, enable_auto_pong=True
            )
            assert isinstance(client, Client)
            await client.request(SUBSCRIBE)
            self.client = client
        else:
            # NOTE: imported here: the workers, and --publish, need no database driver.
            from reports_service.config import Settings
            from reports_service.repository import repository_for

            # NOTE: each change is its own commit; with an fsync each (FULL) one process makes
            #   about 50 a second here, fewer than the sustained rates asked for. What is
            #   measured is the fan-out, not the disk: the driver's commits do not wait for it.
            settings = Settings(database_url=self.args.database_url, sqlite_synchronous="NORMAL")
            self.repository = repository_for(settings)

    async def change(self, n: int, count: int = 1) -> tuple[list[int], float]:
        """Make changes ``n`` .. ``n + count - 1`` (one commit); their versions and the time
        they were made (committed or sent)."""
        if self.client is not None:
            assert self.client.transport is not None
            now = time.perf_counter()
            for k in range(n + 1, n + count + 1):
                self.client.transport.send(WSMsgType.TEXT, b'{"type":"change","version":%d}' % k)
            return list(range(n + 1, n + count + 1)), now
        from reports_service.records import NewReport

        reports = [NewReport(f"feed-{k % 1000}", f"Feed {k}", "x") for k in range(n, n + count)]
        await self.repository.add_reports(reports, replace=True)
        now = time.perf_counter()
        # NOTE: the only writer: the reports of one transaction got the latest versions.
        last = int((await self.repository.changelog_bounds())[1])
        return list(range(last - count + 1, last + 1)), now

    async def close(self) -> None:
        if self.client is not None:
            await close_clients([self.client], 5)
        if self.repository is not None:
            await self.repository.dispose()


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    fleet = Fleet(args)
    publisher = Publisher(args)
    try:
        ready = await fleet.start()
        emit(ready)
        await publisher.open()
        if args.wait:
            await read_line()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        server0 = cpu_seconds(args.server_pid)
        made: list[int] = []
        made_per_s = float("nan")
        if args.rate:
            total = max(1, round(args.rate * args.duration))
            while len(made) < total:
                n = len(made)
                delay = wall0 + n / args.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                # NOTE: behind the schedule (a commit took longer than 1/rate), the changes
                #   due are made in one commit, as a busy writer's would be: the rate of
                #   changes holds even where one commit each could not.
                due = int((time.perf_counter() - wall0) * args.rate) + 1 - n
                count = max(1, min(due, MAX_BATCH, total - n))
                versions, at = await publisher.change(n, count)
                for version in versions:
                    fleet.version(version).committed = at
                made += versions
            # NOTE: commits slower than the rate fall behind the schedule: what was made.
            made_per_s = len(made) / (time.perf_counter() - wall0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.grace):
                    for version in made:
                        await fleet.version(version).complete.wait()
        else:
            for n in range(args.changes):
                (version,), at = await publisher.change(n)
                entry = fleet.version(version)
                entry.committed = at
                made.append(version)
                try:
                    async with asyncio.timeout(WAIT_PER_CHANGE):
                        await entry.complete.wait()
                except TimeoutError:
                    break
                await asyncio.sleep(args.pause)
        wall = time.perf_counter() - wall0
        server_cpu = cpu_seconds(args.server_pid) - server0
        own_cpu = time.process_time() - cpu0
    finally:
        await publisher.close()
        await fleet.stop()
    result = summary(args, fleet, made, ready, wall, own_cpu, server_cpu)
    result["made_per_s"] = made_per_s
    return result


def summary(
    args: argparse.Namespace,
    fleet: Fleet,
    made: Sequence[int],
    ready: dict[str, Any],
    wall: float,
    own_cpu: float,
    server_cpu: float,
) -> dict[str, Any]:
    first_ms, all_ms = [], []
    delivered = incomplete = 0
    last_arrival = 0.0
    for version in made:
        entry = fleet.versions[version]
        delivered += entry.received
        if entry.received:
            first_ms.append(1000 * (entry.first - entry.committed))
            last_arrival = max(last_arrival, entry.last)
        if entry.received < fleet.expected:
            incomplete += 1
        else:
            all_ms.append(1000 * (entry.last - entry.committed))
        emit(
            {
                "version": version,
                "first_ms": first_ms[-1] if entry.received else None,
                "all_ms": all_ms[-1] if entry.received >= fleet.expected else None,
                "received": entry.received,
            }
        )
    closes: Counter[int] = Counter()
    for line in fleet.done:
        closes.update({int(code): n for code, n in line["closes"].items()})
    start = fleet.versions[made[0]].committed if made else 0.0
    span = last_arrival - start if last_arrival > start else wall
    fleet_cpu = own_cpu + sum(line["cpu_s"] for line in fleet.done)
    return {
        "event": "done",
        "subscribers": fleet.expected,
        "failed": ready["failed"],
        "open_seconds": ready["seconds"],
        "processes": len(fleet.procs),
        "changes": len(made),
        "rate": args.rate,
        "first_ms": first_ms,
        "all_ms": all_ms,
        "incomplete": incomplete,
        "delivered": delivered,
        "offered": len(made) * fleet.expected,
        "deliveries_per_s": delivered / span if span > 0 else float("nan"),
        "closed": sum(closes.values()),
        "close_codes": dict(closes),
        "disconnected": sum(line["disconnected"] for line in fleet.done),
        "other_frames": sum(line["other"] for line in fleet.done),
        "wall_s": wall,
        "client_cpu_s": fleet_cpu,
        "client_cpu": fleet_cpu / wall if wall > 0 else float("nan"),
        "server_cpu": server_cpu / wall if args.server_pid and wall > 0 else float("nan"),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__)
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/PATH")
    parser.add_argument("--token", help="each connection's first message")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--sources", type=int, default=8, help="source addresses 127.0.0.2+")
    publish = parser.add_mutually_exclusive_group(required=False)
    publish.add_argument("--database-url", help="commit through the service's repository")
    publish.add_argument("--publish", action="store_true", help="broadcast server: send")
    parser.add_argument("--changes", type=int, default=20, help="one at a time, each awaited")
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between changes")
    parser.add_argument("--rate", type=float, default=0.0, help="changes/s (sustained)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds (with --rate)")
    parser.add_argument(
        "--grace", type=float, default=5.0, help="seconds for the last pushes (with --rate)"
    )
    parser.add_argument("--wait", action="store_true", help="wait for a stdin line when ready")
    parser.add_argument("--server-pid", type=int, default=0, help="report this process's CPU")
    parser.add_argument("--concurrency", type=int, default=64, help="opened at once, per worker")
    parser.add_argument("--connect-budget", type=float, default=120.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.url.startswith(("ws://127.", "ws://localhost")):
        print(f"fleet: refusing {args.url}: benchmarks talk to loopback only", file=sys.stderr)
        return 2
    if args.subscribers < 1 or args.processes < 1 or not 0 <= args.sources <= 250:
        print("fleet: subscribers and processes must be positive, sources 0..250", file=sys.stderr)
        return 2
    if not args.worker and not args.publish and not args.database_url:
        print("fleet: say --database-url or --publish", file=sys.stderr)
        return 2
    raise_fd_limit(args.subscribers + 256)
    # NOTE: what load.open_clients reads.
    args.connections = args.subscribers
    args.connect_timeout = 30.0
    args.allow_failures = False
    args.drain_timeout = 10.0
    import uvloop

    try:
        if args.worker:
            uvloop.run(worker(args))
        else:
            emit(uvloop.run(drive(args)))
    except LoadError as error:
        print(f"fleet: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
