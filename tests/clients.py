"""Real clients of a real server (tests/server.py): /reports over `websockets`, /metrics, and
what the kernel holds for a client that stopped reading."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from reports_service.watch import PostgresWatcher

from .conftest import TOKEN
from .server import Server

# NOTE: a push must come well before PostgreSQL's safety read (every 5 s), which would find a
#   change whose notification was lost: a bound a loaded 2-core machine keeps, that still fails
#   when only that read delivers.
PUSH_WITHIN = PostgresWatcher.SAFETY_INTERVAL / 2


async def connect(server: Server, token: str = TOKEN, **options: Any) -> ClientConnection:
    """An authenticated /reports connection (a ping is answered only after authentication)."""
    ws = await asyncio.wait_for(websockets.connect(server.url + "/reports", **options), 5)
    await ws.send(token)
    assert (await call(ws, {"id": "auth", "type": "ping"}))["result"]["pong"] is True
    return ws


async def recv(ws: ClientConnection, within: float = 5.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), within))


async def call(ws: ClientConnection, request: dict[str, Any], within: float = 5.0) -> Any:
    """Send one request and return its reply (the next message: no event may come first)."""
    await ws.send(json.dumps(request))
    reply = await recv(ws, within)
    assert reply.get("id") == request.get("id"), reply
    return reply


async def next_event(ws: ClientConnection, within: float = 5.0) -> Any:
    """The next message pushed to a subscriber; failing, not hanging, when none comes."""
    try:
        return await recv(ws, within)
    except TimeoutError:
        raise AssertionError(f"no change pushed within {within}s") from None


def metric(server: Server, sample: str) -> float:
    """The value of one sample on /metrics, e.g. 'reports_subscribers'; 0 when absent."""
    with urllib.request.urlopen(server.http + "/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def open_connections(server: Server, route: str) -> float:
    return metric(server, f'reports_connections_open{{route="{route}"}}')


def unsent_bytes(ws: ClientConnection) -> int:
    """Bytes the server's kernel holds for this client and cannot send: once the client stops
    reading, its receive window closes and they pile up (loopback sends the rest at once)."""
    client = ws.transport.get_extra_info("sockname")[1]
    server = ws.transport.get_extra_info("peername")[1]
    wanted = f"0100007F:{server:04X} 0100007F:{client:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if f"{fields[1]} {fields[2]}" == wanted:
            return int(fields[4].partition(":")[0], 16)
    return 0
