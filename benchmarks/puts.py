"""Sequential writes: one connection sends COUNT `put` requests, one in flight, each a commit.

The names cycle through 100 reports, so the database stays small and every put after the
first hundred replaces a report. Prints one JSON object on its last line: the seconds the
puts took and each one's latency in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import websockets

NAMES = 100


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with websockets.connect(args.url, ping_interval=None) as ws:
        await ws.send(args.token)
        latencies: list[float] = []
        started = time.perf_counter()
        for n in range(args.count):
            request = {"id": n, "type": "put", "name": f"put{n % NAMES}", "title": f"Put {n}"}
            sent = time.perf_counter()
            await ws.send(json.dumps(request))
            reply = json.loads(await ws.recv())
            latencies.append((time.perf_counter() - sent) * 1000)
            if "result" not in reply:
                raise SystemExit(f"put {n} failed: {reply}")
        return {"count": args.count, "seconds": time.perf_counter() - started, "ms": latencies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="ws:// URL of /reports")
    parser.add_argument("--token", required=True, help="a token that may write")
    parser.add_argument("--count", type=int, default=2000)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
