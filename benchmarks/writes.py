"""Concurrent writes for DURATION seconds, each a commit, by one of three ways in:

* ``raw``: the limit. The same transaction as the service's `put` (the latest version, the
  report upsert, the changelog row; on PostgreSQL also the advisory lock and the NOTIFY the
  service takes), by the driver itself (sqlite3, asyncpg) in a tight loop: no SQLAlchemy, no
  protocol, no network but PostgreSQL's own;
* ``ws``: `put` over the WebSocket (`/reports`), one request in flight per writer;
* ``http``: `PUT /api/reports/{name}` over HTTP/1.1 keep-alive, one in flight per writer.

Every write adds a report of its own name (``<prefix>w<writer>-<n>``), so that afterwards each
acknowledged write can be looked for in the database (see :func:`missing`). Prints one JSON
object on its last line: the writes, the seconds, each write's latency in ms, and the
acknowledged writes as [name, version] pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import websockets
from sqlalchemy.engine import make_url

# NOTE: the pragmas reports_service.db gives every SQLite connection (synchronous FULL, the
#   default), so that the raw loop pays the same fsync per commit as the service.
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA synchronous=FULL",
    "PRAGMA wal_autocheckpoint=100",
    "PRAGMA journal_size_limit=1048576",
    "PRAGMA foreign_keys=ON",
)
LATEST = "SELECT coalesce(max(version), 0) FROM report_changes"
UPSERT = (
    "INSERT INTO reports (name, title, content, created_at, updated_at, version) "
    "VALUES ({p}) ON CONFLICT (name) DO UPDATE SET title = excluded.title, "
    "content = excluded.content, updated_at = excluded.updated_at, version = excluded.version"
)
CHANGE = (
    "INSERT INTO report_changes "
    "(version, op, name, title, content, created_at, updated_at, changed_at) VALUES ({p})"
)
ADVISORY_LOCK = "SELECT pg_advisory_xact_lock(8243118316935475968)"  # the service's key
NOTIFY = "SELECT pg_notify('report_changes', $1)"
CONTENT = "written by benchmarks.writes"


class Writes:
    """What the writers did: latencies and the acknowledged [name, version] pairs."""

    def __init__(self, duration: float, prefix: str) -> None:
        self.prefix = prefix
        self.deadline = time.perf_counter() + duration
        self.ms: list[float] = []
        self.acked: list[tuple[str, int]] = []
        self.errors: list[str] = []

    def running(self) -> bool:
        return time.perf_counter() < self.deadline and not self.errors

    def done(self, sent: float, name: str, version: int) -> None:
        self.ms.append((time.perf_counter() - sent) * 1000)
        self.acked.append((name, version))


def _sqlite_writer(path: str, writer: int, writes: Writes) -> None:
    db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    for pragma in SQLITE_PRAGMAS:
        db.execute(pragma)
    upsert, change = UPSERT.format(p="?, ?, ?, ?, ?, ?"), CHANGE.format(p="?, ?, ?, ?, ?, ?, ?, ?")
    n = 0
    try:
        while writes.running():
            name, n = f"{writes.prefix}w{writer}-{n}", n + 1
            sent = time.perf_counter()
            now = datetime.now(UTC).replace(tzinfo=None).isoformat(" ")
            db.execute("BEGIN IMMEDIATE")
            version = db.execute(LATEST).fetchone()[0] + 1
            db.execute(upsert, (name, name, CONTENT, now, now, version))
            db.execute(change, (version, "added", name, name, CONTENT, now, now, now))
            db.execute("COMMIT")
            writes.done(sent, name, version)
    finally:
        db.close()


async def raw_sqlite(path: str, writers: int, writes: Writes) -> None:
    # NOTE: one thread per writer, as one process's connections would be; SQLite serialises
    #   the writers anyway (BEGIN IMMEDIATE), so 1 writer is its limit.
    threads = [
        threading.Thread(target=_sqlite_writer, args=(path, w, writes)) for w in range(writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        await asyncio.to_thread(thread.join)


async def raw_postgres(dsn: str, writers: int, writes: Writes) -> None:
    upsert = UPSERT.format(p="$1, $2, $3, $4, $5, $6")
    change = CHANGE.format(p="$1, $2, $3, $4, $5, $6, $7, $8")

    async def writer(w: int) -> None:
        db = await asyncpg.connect(dsn)
        n = 0
        try:
            while writes.running():
                name, n = f"{writes.prefix}w{w}-{n}", n + 1
                sent = time.perf_counter()
                now = datetime.now(UTC)
                async with db.transaction():
                    await db.execute(ADVISORY_LOCK)
                    version = await db.fetchval(LATEST) + 1
                    await db.execute(upsert, name, name, CONTENT, now, now, version)
                    await db.execute(change, version, "added", name, name, CONTENT, now, now, now)
                    await db.execute(NOTIFY, str(version))
                writes.done(sent, name, version)
        finally:
            await db.close()

    await asyncio.gather(*(writer(w) for w in range(writers)))


async def over_websocket(url: str, token: str, writers: int, writes: Writes) -> None:
    async def writer(w: int) -> None:
        async with websockets.connect(url, ping_interval=None, compression=None) as ws:
            await ws.send(token)
            n = 0
            while writes.running():
                name, n = f"{writes.prefix}w{w}-{n}", n + 1
                request = {"id": n, "type": "put", "name": name, "title": name, "content": CONTENT}
                sent = time.perf_counter()
                await ws.send(json.dumps(request))
                reply = json.loads(await ws.recv())
                if "result" not in reply:
                    writes.errors.append(f"put {name}: {reply}")
                    return
                writes.done(sent, name, reply["result"]["version"])

    await asyncio.gather(*(writer(w) for w in range(writers)))


async def over_http(url: str, token: str, writers: int, writes: Writes) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = json.dumps({"title": "", "content": CONTENT})

    async def writer(w: int) -> None:
        reader, writer_ = await asyncio.open_connection(host, port)
        n = 0
        try:
            while writes.running():
                name, n = f"{writes.prefix}w{w}-{n}", n + 1
                payload = body.replace('"title": ""', f'"title": "{name}"').encode()
                head = (
                    f"PUT /api/reports/{name} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n"
                )
                sent = time.perf_counter()
                writer_.write(head.encode() + payload)
                status, headers, reply = await _response(reader)
                if status != 201:
                    writes.errors.append(f"PUT {name}: {status} {reply[:200]!r}")
                    return
                writes.done(sent, name, int(headers["etag"].strip('"')))
        finally:
            writer_.close()

    await asyncio.gather(*(writer(w) for w in range(writers)))


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def run(args: argparse.Namespace) -> dict[str, Any]:
    writes = Writes(args.duration, args.prefix)
    ways: dict[str, Callable[[], Awaitable[None]]] = {
        "raw": lambda: _raw(args.database_url, args.writers, writes),
        "ws": lambda: over_websocket(args.url, args.token, args.writers, writes),
        "http": lambda: over_http(args.url, args.token, args.writers, writes),
    }
    started = time.perf_counter()
    await ways[args.mode]()
    seconds = time.perf_counter() - started
    return {
        "writes": len(writes.acked),
        "seconds": seconds,
        "ms": writes.ms,
        "acked": writes.acked,
        "errors": writes.errors,
    }


def _raw(database_url: str, writers: int, writes: Writes) -> Awaitable[None]:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return raw_sqlite(str(url.database), writers, writes)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return raw_postgres(dsn, writers, writes)


async def missing(database_url: str, acked: Sequence[Sequence[Any]]) -> int:
    """How many of the acknowledged [name, version] writes are not in the database's reports."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        with sqlite3.connect(str(url.database)) as db:
            rows = db.execute("SELECT name, version FROM reports").fetchall()
    else:
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        db = await asyncpg.connect(dsn)
        try:
            rows = await db.fetch("SELECT name, version FROM reports")
        finally:
            await db.close()
    stored = {(row[0], row[1]) for row in rows}
    return sum((name, version) not in stored for name, version in acked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("raw", "ws", "http"))
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--prefix", default="", help="of every name: one per run")
    parser.add_argument("--database-url", help="raw: the service's database URL")
    parser.add_argument("--url", help="ws: ws:// URL of /reports; http: http://host:port")
    parser.add_argument("--token", help="ws, http: a token that may write")
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
