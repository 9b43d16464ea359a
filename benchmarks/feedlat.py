"""Commit-to-push latency: SUBSCRIBERS connections subscribe, and CHANGES are committed.

By default each change is committed by this process through the service's own repository (a
separate process from the server, as the seed script would be); the figure per change is the
time from the commit returning to its push arriving, at one subscriber (the first to get it)
and at all of them (the last). With ``--write-token`` the server commits them itself: a `put`
over another connection, and the figure is from the put's reply arriving (the writer's
acknowledgement; the commit came just before it) to the push arriving; negative when the push
came first. Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections import defaultdict
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from reports_service.config import Settings
from reports_service.records import NewReport
from reports_service.repository import repository_for


async def subscriber(url: str, token: str) -> ClientConnection:
    ws = await websockets.connect(url, max_queue=None, ping_interval=None)
    await ws.send(token)
    await ws.send(json.dumps({"id": 1, "type": "subscribe"}))
    reply = json.loads(await ws.recv())
    if "result" not in reply:
        raise SystemExit(f"subscribe failed: {reply}")
    return ws


class Arrivals:
    """When each change's push reached each subscriber; an event once all have it."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.times: dict[int, list[float]] = defaultdict(list)
        self.complete: dict[int, asyncio.Event] = defaultdict(asyncio.Event)

    async def read(self, ws: ClientConnection) -> None:
        async for message in ws:
            event = json.loads(message)
            if "version" in event and "type" in event:
                times = self.times[event["version"]]
                times.append(time.perf_counter())
                if len(times) == self.expected:
                    self.complete[event["version"]].set()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    clients: list[ClientConnection] = []
    for start in range(0, args.subscribers, 100):
        batch = range(start, min(start + 100, args.subscribers))
        clients += await asyncio.gather(*(subscriber(args.url, args.token) for _ in batch))
    seen = Arrivals(len(clients))
    readers = [asyncio.create_task(seen.read(ws)) for ws in clients]
    repository = repository_for(Settings(database_url=args.database_url))
    writer = None
    if args.write_token:
        writer = await websockets.connect(args.url, ping_interval=None)
        await writer.send(args.write_token)
    first: list[float] = []
    last: list[float] = []
    try:
        for n in range(args.changes):
            report = NewReport(f"feed-{n % 10}", f"Feed {n}", "x")
            if writer is not None:
                await put(writer, n, report)
            else:
                await repository.add_reports([report], replace=True)
            committed = time.perf_counter()
            version = (await repository.changelog_bounds())[1]
            try:
                await asyncio.wait_for(seen.complete[version].wait(), 5)
            except TimeoutError:
                got = len(seen.times[version])
                raise SystemExit(
                    f"change {version}: {got} of {len(clients)} pushes in 5 s"
                ) from None
            times = seen.times[version]
            first.append((min(times) - committed) * 1000)
            last.append((max(times) - committed) * 1000)
            await asyncio.sleep(args.pause)
    finally:
        await repository.dispose()
        if writer is not None:
            await writer.close()
        for task in readers:
            task.cancel()
        for ws in clients:
            await ws.close()
    return {
        "subscribers": args.subscribers,
        "changes": args.changes,
        "first_ms": first,
        "all_ms": last,
    }


async def put(writer: ClientConnection, n: int, report: NewReport) -> None:
    """One `put` over ``writer``; returns when its reply has arrived."""
    request = {"id": n, "type": "put", "name": report.name, "title": report.title}
    await writer.send(json.dumps({**request, "content": report.content}))
    reply = json.loads(await writer.recv())
    if "result" not in reply:
        raise SystemExit(f"put failed: {reply}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.feedlat", description=__doc__)
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/reports")
    parser.add_argument("--token", required=True)
    parser.add_argument("--database-url", required=True, help="the server's database")
    parser.add_argument("--subscribers", type=int, default=1)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between changes")
    parser.add_argument("--write-token", help="commit with `put`s through the server itself")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 65536)), hard))
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
