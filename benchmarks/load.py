"""The load generator: picows clients, run as a subprocess so that it can be pinned to a core.

Two modes, each printing one JSON object on its last stdout line:

``rtt``  CONNECTIONS connections each do sequential round trips (one message in flight per
         connection, the next sent from the reply's callback) for WARMUP + DURATION seconds;
         round trips sent during the DURATION window count. Prints round trips/s and latency
         percentiles in milliseconds.
``prime`` asks for every query of the pool (65,536 report names) once, shared out among
         CONNECTIONS connections, within DURATION seconds; prints how long it took.
``idle`` opens CONNECTIONS authenticated connections (each has had one reply, so the server
         holds it at its receive loop), prints a ``{"event": "ready"}`` line, waits for a line
         on stdin (or HOLD seconds), closes them all and prints a summary.

With ``--token`` the first message of each connection is the token; with ``--expect report``
each reply must be ``{"report": ...}`` (the first one exactly ``{"report": "Report N"}``);
with ``--expect echo`` each reply must equal what was sent. Anything else counts as an error.
Everything is bounded: connecting by ``--connect-timeout``, the run by its duration, the
drain at the end by ``--drain-timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# NOTE: picows comes with the `bench` extra, which the test command does not install; mypy
#   checks this file either way (the ignores are for a machine without picows).
from picows import (  # type: ignore[import-not-found,unused-ignore]
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

NAME_POOL = 65536
"""Distinct query messages prepared up front and cycled through."""


class LoadError(Exception):
    """The load could not be generated as asked: printed as one line, exit status 2."""


@dataclass
class Run:
    """What all connections of one run share: the clock window and the figures."""

    expect: str
    queries: list[bytes]
    start_ns: int = 0
    end_ns: int = 0
    latencies: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    disconnects: int = 0

    def error(self, message: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = message[:300]


class Client(WSListener):  # type: ignore[misc,unused-ignore]
    """One connection; replies resolve ``waiter`` while set up, then drive the closed loop."""

    def __init__(self, run: Run, offset: int) -> None:
        self.run = run
        self.transport: WSTransport | None = None
        self.waiter: asyncio.Future[bytes] | None = None
        self.looping = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.index = offset
        self.sent_ns = 0
        self.sent = b""

    # -- picows callbacks -----------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        now = time.perf_counter_ns()
        if frame.msg_type is WSMsgType.CLOSE:
            self._finish(f"closed by the server: {frame.get_close_code()}")
            return
        if frame.msg_type is not WSMsgType.TEXT and frame.msg_type is not WSMsgType.BINARY:
            return
        payload: bytes = frame.get_payload_as_bytes()
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(payload)
            return
        if not self.looping:
            self.run.error(f"unexpected message {payload[:80]!r}")
            return
        run = self.run
        if not self._valid(payload):
            run.error(f"reply {payload[:80]!r} to {self.sent[:80]!r}")
        if self.sent_ns >= run.start_ns:
            run.latencies.append(now - self.sent_ns)
        if now < run.end_ns:
            self._send_next()
        else:
            self.looping = False
            if not self.done.done():
                self.done.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._finish("disconnected")

    # -- driving ----------------------------------------------------------------------------

    def _valid(self, payload: bytes) -> bool:
        if self.run.expect == "echo":
            return payload == self.sent
        return payload.startswith(b'{"report"')

    def _finish(self, why: str) -> None:
        if self.looping or self.waiter is not None:
            self.run.disconnects += 1
            self.run.error(why)
        self.looping = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(why))
        self.waiter = None
        if not self.done.done():
            self.done.set_result(None)

    def _send_next(self) -> None:
        queries = self.run.queries
        self.index = (self.index + 1) % len(queries)
        self.sent = queries[self.index]
        assert self.transport is not None
        self.sent_ns = time.perf_counter_ns()
        self.transport.send(WSMsgType.TEXT, self.sent)

    def start_loop(self) -> None:
        self.looping = True
        self._send_next()

    async def request(self, message: bytes) -> bytes:
        """Send one message and wait for its reply (before the closed loop starts)."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.sent = message
        self.transport.send(WSMsgType.TEXT, message)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            with contextlib.suppress(Exception):
                self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()


def queries(expect: str, names: int, seed: int) -> list[bytes]:
    """Report names ``report1`` .. ``reportNAMES`` in random order (or echo payloads)."""
    rng = random.Random(seed)
    if expect == "echo":
        return [f"report{rng.randint(1, 4)}".encode() for _ in range(NAME_POOL)]
    return [f"report{rng.randint(1, names)}".encode() for _ in range(NAME_POOL)]


def source_address(sources: int, offset: int) -> dict[str, Any]:
    """The ``local_addr`` keyword for ws_connect: with SOURCES, 127.0.0.2 .. 127.0.0.N+1."""
    # NOTE: each source address has its own ~28,000 ephemeral ports towards the server's one.
    return {"local_addr": (f"127.0.0.{2 + offset % sources}", 0)} if sources else {}


async def open_client(args: argparse.Namespace, run: Run, offset: int) -> Client:
    """Connect, authenticate and check the first reply exactly."""
    transport, listener = await ws_connect(
        lambda: Client(run, offset),
        args.url,
        websocket_handshake_timeout=args.connect_timeout,
        enable_auto_pong=True,
        **source_address(args.sources, offset),
    )
    client = listener
    assert isinstance(client, Client)
    if args.token is not None:
        transport.send(WSMsgType.TEXT, args.token.encode())
    first = run.queries[offset % len(run.queries)]
    async with asyncio.timeout(args.connect_timeout):
        reply = await client.request(first)
    if args.expect == "echo":
        if reply != first:
            raise LoadError(f"echo server answered {reply[:80]!r} to {first!r}")
    else:
        want = {"report": "Report " + first.decode().removeprefix("report")}
        try:
            got: Any = json.loads(reply)
        except ValueError:
            got = reply[:80]
        if got != want:
            raise LoadError(f"{args.url} answered {got!r} to {first.decode()!r}, not {want!r}")
    return client


Opener = Callable[[argparse.Namespace, Run, int], Awaitable[Client]]


async def open_clients(
    args: argparse.Namespace, run: Run, opener: Opener = open_client
) -> tuple[list[Client], int]:
    """Open ``args.connections`` clients, ``args.concurrency`` at a time, within the budget."""
    semaphore = asyncio.Semaphore(args.concurrency)
    clients: list[Client] = []
    failures: list[str] = []
    fatal: list[LoadError] = []

    async def one(offset: int) -> None:
        async with semaphore:
            if fatal:
                return
            try:
                clients.append(await opener(args, run, offset))
            except LoadError as error:
                fatal.append(error)
            except Exception as error:  # picows, OS and timeout errors alike
                failures.append(f"{type(error).__name__}: {error}")

    try:
        async with asyncio.timeout(args.connect_budget), asyncio.TaskGroup() as group:
            for offset in range(args.connections):
                group.create_task(one(offset * 7919))
    except TimeoutError:
        failures.append(f"timed out after {args.connect_budget}s opening connections")
    if fatal or (failures and not args.allow_failures):
        for client in clients:
            client.close()
        raise (
            fatal[0]
            if fatal
            else LoadError(f"{len(failures)} connections failed, first: {failures[0]}")
        )
    return clients, len(failures)


async def close_clients(clients: Sequence[Client], seconds: float) -> None:
    """Close every connection and wait (at most ``seconds``) until they are gone."""
    for client in clients:
        client.close()
    waits = [c.transport.wait_disconnected() for c in clients if c.transport is not None]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await asyncio.gather(*waits, return_exceptions=True)


def percentile(ordered: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile of sorted nanoseconds, in milliseconds."""
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank] / 1e6


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far; 0 if unknown."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # NOTE: after the ")" that ends the command name, utime and stime are fields 12 and 13.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def rtt(args: argparse.Namespace) -> dict[str, Any]:
    run = Run(args.expect, queries(args.expect, args.names, args.seed))
    clients, _ = await open_clients(args, run)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    now = time.perf_counter_ns()
    run.start_ns = now + int(args.warmup * 1e9)
    run.end_ns = run.start_ns + int(args.duration * 1e9)
    for client in clients:
        client.start_loop()
    server_cpu = float("nan")
    try:
        await asyncio.sleep(args.warmup)
        server_cpu0 = cpu_seconds(args.server_pid)
        await asyncio.sleep(args.duration)
        server_cpu = cpu_seconds(args.server_pid) - server_cpu0
        async with asyncio.timeout(args.drain_timeout):
            await asyncio.gather(*(c.done for c in clients))
    except TimeoutError:
        run.error(f"replies still missing {args.drain_timeout}s after the end")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await close_clients(clients, args.drain_timeout)
    ordered = sorted(run.latencies)
    return {
        "mode": "rtt",
        "url": args.url,
        "connections": len(clients),
        "duration": args.duration,
        "round_trips": len(ordered),
        "rps": len(ordered) / args.duration,
        "p50_ms": percentile(ordered, 0.50),
        "p99_ms": percentile(ordered, 0.99),
        "p999_ms": percentile(ordered, 0.999),
        "max_ms": ordered[-1] / 1e6 if ordered else float("nan"),
        "errors": run.errors,
        "first_error": run.first_error,
        "disconnects": run.disconnects,
        "client_cpu": cpu / wall if wall > 0 else 0.0,
        "server_cpu": server_cpu / args.duration if args.server_pid else float("nan"),
        "server_us_per_rt": (
            1e6 * server_cpu / len(ordered) if args.server_pid and ordered else float("nan")
        ),
    }


async def prime(args: argparse.Namespace) -> dict[str, Any]:
    """Ask for every query of the pool once, shared out among the connections; not timed."""
    run = Run(args.expect, queries(args.expect, args.names, args.seed))
    clients, _ = await open_clients(args, run)
    started = time.perf_counter()

    async def share(first: int, client: Client) -> None:
        for query in run.queries[first :: len(clients)]:
            reply = await client.request(query)
            if not client._valid(reply):
                run.error(f"reply {reply[:80]!r} to {query[:80]!r}")

    try:
        async with asyncio.timeout(args.duration):
            await asyncio.gather(*(share(i, client) for i, client in enumerate(clients)))
    except TimeoutError:
        run.error(f"the pool was not asked for within {args.duration}s")
    await close_clients(clients, args.drain_timeout)
    return {
        "mode": "prime",
        "url": args.url,
        "queries": len(run.queries),
        "seconds": time.perf_counter() - started,
        "errors": run.errors,
        "first_error": run.first_error,
    }


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    run = Run(args.expect, queries(args.expect, args.names, args.seed))
    started = time.perf_counter()
    clients, failed = await open_clients(args, run)
    opened = time.perf_counter() - started
    ready = {"event": "ready", "connections": len(clients), "failed": failed, "seconds": opened}
    print(json.dumps(ready), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        async with asyncio.timeout(args.hold):
            await reader.readline()
    except TimeoutError:
        pass
    finally:
        transport.close()
    alive = sum(1 for c in clients if c.transport is not None and not c.transport.is_disconnected)
    await close_clients(clients, args.drain_timeout)
    return {
        "mode": "idle",
        "url": args.url,
        "connections": len(clients),
        "failed": failed,
        "alive_at_end": alive,
        "open_seconds": opened,
        "errors": run.errors,
        "first_error": run.first_error,
    }


def raise_fd_limit(wanted: int) -> int:
    """Lift RLIMIT_NOFILE to ``wanted`` (or the hard limit); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    parser.add_argument("mode", choices=["rtt", "prime", "idle"])
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/PATH")
    parser.add_argument("--token", help="send this as each connection's first message")
    parser.add_argument("--expect", choices=["report", "echo"], default="report")
    parser.add_argument("--names", type=int, default=4, help="query report1..reportNAMES")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument(
        "--duration", type=float, default=3.0, help="measured seconds (rtt); the budget (prime)"
    )
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first")
    parser.add_argument("--hold", type=float, default=120.0, help="idle: longest wait on stdin")
    parser.add_argument("--concurrency", type=int, default=64, help="connections opened at once")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="per connection")
    parser.add_argument(
        "--sources", type=int, default=0, help="spread over this many source addresses (max 250)"
    )
    parser.add_argument("--connect-budget", type=float, default=120.0, help="for all of them")
    parser.add_argument("--drain-timeout", type=float, default=5.0)
    parser.add_argument("--allow-failures", action="store_true", help="idle: count, go on")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--server-pid", type=int, default=0, help="report this process's CPU")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host = urlsplit(args.url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        print(f"load: refusing {args.url}: benchmarks talk to loopback only", file=sys.stderr)
        return 2
    if args.connections < 1 or args.duration <= 0 or args.concurrency < 1:
        print("load: connections, duration and concurrency must be positive", file=sys.stderr)
        return 2
    limit = raise_fd_limit(args.connections + 256)
    if limit < args.connections + 64:
        print(f"load: fd limit {limit} is too low for {args.connections}", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        result = runner({"rtt": rtt, "prime": prime, "idle": idle}[args.mode](args))
    except LoadError as error:
        print(f"load: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
