"""Database faults end to end: a real server, real clients, and the database taken away.

The property under test: with the database unreachable, locked by another writer for longer
than the busy timeout, or its file unreadable, a query gets an error reply (`unavailable`,
retry later) over a connection that stays open; the server recovers by itself once the
database is back; and no write a client was told was saved is ever missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import websockets
from sqlalchemy.engine import make_url
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from reports_service.db import connect_asyncpg, sqlite_path
from reports_service.records import NewReport
from reports_service.repository import ReportRepository

from .clients import call, connect, next_event, recv
from .conftest import TOKEN, WRITE_TOKEN
from .proxy import TcpProxy
from .server import ROOT, Server, free_port, run_cli
from .waiting import eventually

POOL_TIMEOUT = 5.0  # seconds a request may wait for a database connection (the default)
UNAVAILABLE = {"code": "unavailable", "message": "database unavailable, retry later"}
PLAIN_UNAVAILABLE = {"error": "service unavailable, try again"}


async def assert_refused(server: Server, token: str = TOKEN) -> None:
    """A new client cannot authenticate: closed with 1013 (try again later)."""
    async with asyncio.timeout(10):
        ws = await websockets.connect(server.url + "/reports")
        await ws.send(token)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013


async def plain(ws: ClientConnection, name: str, within: float = 5.0) -> Any:
    await ws.send(name)
    return await recv(ws, within)


async def subscribe(server: Server) -> tuple[ClientConnection, int]:
    """A connection subscribed to every report, and the version it was subscribed at."""
    ws = await connect(server)

    # NOTE: first waits for the server's change feed to have read the latest version (ping
    #   says 0 until then): subscribing earlier is a bug of its own, with its own test
    #   (test_subscribe_before_feed_has_read), that must not make these tests flaky.
    async def feed_has_read() -> bool:
        return bool((await call(ws, {"id": "p", "type": "ping"}))["result"]["version"])

    await eventually(feed_has_read, within=5)
    reply = await call(ws, {"id": "s", "type": "subscribe"})
    return ws, reply["result"]["version"]


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


async def status(server: Server, path: str) -> int:
    return await asyncio.to_thread(http_status, server.http + path)


async def seed_add(env: dict[str, str], name: str) -> tuple[int, str]:
    done = await asyncio.to_thread(run_cli, env, "add", name, "--title", name.title())
    return done.returncode, done.stderr


# -- PostgreSQL stopped mid-session --------------------------------------------------------


async def test_postgres_stopped_mid_session(
    make_server: Callable[..., Server],
    db_url: str,
    db_env: dict[str, str],
    seeded_repository: ReportRepository,
) -> None:
    """PostgreSQL goes away mid-session (the proxy in front of it resets every connection and
    refuses new ones, as a stopped server does) and comes back.

    Meanwhile: queries and writes get `unavailable` at once, the connections stay open, new
    clients are closed with 1013, /readyz is 503 and /healthz 200. seed.py writes straight to
    the real server. Afterwards the same connections work again without reconnecting, and the
    subscriber gets the changes committed during the outage, in order, then new ones.
    """
    if not db_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL server stopping is PostgreSQL's")
    real = make_url(db_url)
    async with TcpProxy(real.host or "127.0.0.1", real.port or 5432) as proxy:
        proxied = real.set(host="127.0.0.1", port=proxy.port)
        # NOTE: started in a thread: the proxy runs on this event loop, which must keep
        #   forwarding while the server starts.
        server = await asyncio.to_thread(
            make_server,
            database_url=proxied.render_as_string(hide_password=False),
            pool_timeout=str(POOL_TIMEOUT),
        )
        writer = await connect(server, WRITE_TOKEN)
        watcher, version = await subscribe(server)
        assert version == 4
        # NOTE: a token that logged in within REPORTS_TOKEN_RECHECK is known without the
        #   database; one never used before is not.
        await seeded_repository.create_token(name="unseen", token="unseen-token-0123456789")
        try:
            put = await call(writer, {"id": 1, "type": "put", "name": "before", "title": "B"})
            assert put["result"]["name"] == "before"
            assert (await next_event(watcher))["report"]["name"] == "before"
            assert await status(server, "/readyz") == 200

            await proxy.stop()
            stopped = time.monotonic()
            # (report1 was never read: no cache can answer for the database.)
            get = await call(writer, {"id": 2, "type": "get", "name": "report1"}, within=10)
            assert get["error"] == UNAVAILABLE
            assert await plain(writer, "report1", within=10) == PLAIN_UNAVAILABLE
            page = await call(writer, {"id": "l", "type": "list"}, within=10)
            assert page["error"] == UNAVAILABLE
            lost = await call(
                writer, {"id": 3, "type": "put", "name": "during", "title": "D"}, within=10
            )
            assert lost["error"] == UNAVAILABLE, "a write was acknowledged with the database down"
            assert (await call(writer, {"id": 4, "type": "ping"}))["result"]["pong"] is True
            took = time.monotonic() - stopped
            print(f"four errors within {took:.2f}s")
            assert took < POOL_TIMEOUT, "a request waited for a connection to the database"
            assert await status(server, "/readyz") == 503
            assert await status(server, "/healthz") == 200
            await assert_refused(server, "unseen-token-0123456789")
            for name in ("offline1", "offline2"):
                code, err = await seed_add(db_env, name)
                assert code == 0, err

            await proxy.start()
            restarted = time.monotonic()

            async def get_works() -> bool:
                reply = await call(writer, {"id": 5, "type": "get", "name": "offline2"}, 10)
                return "result" in reply

            await eventually(get_works, within=10)
            print(f"recovered within {time.monotonic() - restarted:.2f}s")
            events = [await next_event(watcher, within=10) for _ in range(2)]
            print(f"events within {time.monotonic() - restarted:.2f}s")
            assert [(e["report"]["name"], e["version"]) for e in events] == [
                ("offline1", 6),
                ("offline2", 7),
            ]
            put = await call(writer, {"id": 6, "type": "put", "name": "after", "title": "A"})
            assert put["result"]["name"] == "after"
            event = await next_event(watcher)
            assert (event["report"]["name"], event["version"]) == ("after", 8)
            assert await status(server, "/readyz") == 200
        finally:
            await writer.close()
            await watcher.close()
    names = {report.name for report in await seeded_repository.list_reports()}
    assert {"before", "offline1", "offline2", "after"} <= names
    assert "during" not in names


async def test_postgres_closing_the_services_connections_loses_no_query_and_no_change(
    make_server: Callable[..., Server], db_url: str, db_env: dict[str, str]
) -> None:
    """PostgreSQL closes every connection the server has (an administrator's
    pg_terminate_backend, a failover): the next query the cache cannot answer is answered, the
    next write is saved, and changes committed by the server and by another process reach the
    subscriber. Nobody sees an error."""
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's connections")
    server = make_server()
    writer = await connect(server, WRITE_TOKEN)
    watcher, version = await subscribe(server)
    try:
        got = await call(writer, {"id": 1, "type": "get", "name": "report1"})
        assert got["result"]["title"] == "Report 1"
        put = await call(writer, {"id": "w1", "type": "put", "name": "before", "title": "B"})
        assert put["result"]["version"] == version + 1
        assert (await next_event(watcher))["report"]["name"] == "before"
        admin = await connect_asyncpg(make_url(db_url))
        try:
            killed = await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
                "FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert killed >= 2, "the server's reader and listener were not connected"
        got = await call(writer, {"id": 2, "type": "get", "name": "report2"}, within=10)
        assert got.get("result", {}).get("title") == "Report 2", got
        put = await call(writer, {"id": "w2", "type": "put", "name": "after", "title": "A"})
        assert put.get("result", {}).get("version") == version + 2, put
        code, err = await seed_add(db_env, "elsewhere")
        assert code == 0, err
        events = [await next_event(watcher, within=10) for _ in range(2)]
        assert [(e["report"]["name"], e["version"]) for e in events] == [
            ("after", version + 2),
            ("elsewhere", version + 3),
        ]
    finally:
        await writer.close()
        await watcher.close()


async def test_postgres_outage_during_write_burst(
    make_server: Callable[..., Server],
    db_url: str,
    seeded_repository: ReportRepository,
) -> None:
    """Writers keep writing while the database goes away and comes back: every write they
    were told was saved is there, and a subscriber gets every committed change, in order."""
    if not db_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL server stopping is PostgreSQL's")
    real = make_url(db_url)
    acked: list[str] = []
    refused: list[str] = []
    refused_by = [0] * 4  # refusals, by writer
    closed: list[str] = []
    stop = asyncio.Event()

    async def write(k: int, ws: ClientConnection) -> None:
        n = 0
        while not stop.is_set():
            name, n = f"w{k}-{n}", n + 1
            try:
                reply = await call(ws, {"id": name, "type": "put", "name": name, "title": name})
            except ConnectionClosed as error:
                closed.append(f"{name}: {error}")
                return
            if "result" in reply:
                acked.append(name)
                await asyncio.sleep(0.01)  # well under the per-connection rate limit
            else:
                assert reply["error"] == UNAVAILABLE, reply
                refused.append(name)
                refused_by[k] += 1
                await asyncio.sleep(0.05)  # a client backs off before retrying

    async with TcpProxy(real.host or "127.0.0.1", real.port or 5432) as proxy:
        proxied = real.set(host="127.0.0.1", port=proxy.port)
        server = await asyncio.to_thread(
            make_server, database_url=proxied.render_as_string(hide_password=False)
        )
        watcher, version = await subscribe(server)
        writers = [await connect(server, WRITE_TOKEN) for _ in range(4)]
        tasks = [asyncio.create_task(write(k, ws)) for k, ws in enumerate(writers)]
        try:
            await eventually(lambda: len(acked) >= 20)
            await proxy.stop()
            at_cut = list(refused_by)

            def each_refused(times: int) -> bool:
                return all(n - m >= times for n, m in zip(refused_by, at_cut, strict=True))

            # NOTE: a writer sends a put once the last one is answered: when each has had one
            #   refused, every reply to a write made before the cut has arrived.
            await eventually(lambda: each_refused(1))
            acked_before = len(acked)
            await eventually(lambda: each_refused(10))
            assert len(acked) == acked_before, f"acknowledged while down: {acked[acked_before:]}"
            assert refused, "no write was refused while the database was down"
            await proxy.start()

            async def written_again() -> bool:
                return len(acked) >= acked_before + 20

            restarted = time.monotonic()
            await eventually(written_again, within=10)
            print(f"writes acknowledged again {time.monotonic() - restarted:.2f}s after restart")
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            assert closed == []
            stored = {
                report.name: report.version for report in await seeded_repository.list_reports()
            }
            missing = [name for name in acked if name not in stored]
            assert missing == [], f"acknowledged but missing: {missing}"
            latest = max(stored.values())
            events = [await next_event(watcher, within=10) for _ in range(latest - version)]
            assert [e["version"] for e in events] == list(range(version + 1, latest + 1))
            assert {e["report"]["name"] for e in events} == {
                name for name, v in stored.items() if v > version
            }
            saved = sorted(set(refused) & set(stored))
            print(f"{len(acked)} acknowledged, {len(refused)} refused ({saved} saved anyway)")
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for ws in (watcher, *writers):
                await ws.close()


async def test_subscribe_before_feed_has_read(
    make_server: Callable[..., Server], db_url: str, seeded_repository: ReportRepository
) -> None:
    """The database is down when the server starts, then comes back; a client subscribes
    before the change feed has read the latest version. It must either be refused
    (`unavailable`, retry later) or get every change committed after its subscription reply.

    When the database comes back, that window lasts until the feed's next retry (up to
    RETRY_INTERVAL, 0.5 s). The proxy holds it open: it lets one connection through (the
    client's, for authentication) and resets the rest (the feed's) until the change is
    committed, straight to PostgreSQL. Backend-independent: by hand, the same happens on
    SQLite with the file unreadable at start-up (5 runs out of 5).
    """
    if not db_url.startswith("postgresql"):
        pytest.skip("the proxy that holds the race open is PostgreSQL's")
    real = make_url(db_url)
    proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432)
    proxied = real.set(host="127.0.0.1", port=proxy.port)
    try:
        server = await asyncio.to_thread(
            make_server, database_url=proxied.render_as_string(hide_password=False)
        )
        assert await status(server, "/readyz") == 503
        for _ in range(5):
            await proxy.start(admit=1)  # the next connection is the client's, unless the
            try:  # feed's retry takes it first: then try again
                ws = await connect(server)
                break
            except ConnectionClosed:
                continue
        else:
            pytest.fail("the client never got the one connection through")
        try:
            reply = await call(ws, {"id": 1, "type": "subscribe"})
            await seeded_repository.add_reports([NewReport("fresh", "Fresh", "")])
            await proxy.start()
            if "error" in reply:
                assert reply["error"] == UNAVAILABLE
                return
            event = await next_event(ws, within=3)
            assert (event["report"]["name"], event["version"]) == ("fresh", 5)
            assert reply["result"]["version"] == 4  # what a client would resume from
        finally:
            await ws.close()
    finally:
        await proxy.stop()


# -- SQLite locked by another writer ---------------------------------------------------------

# NOTE: long enough for another connection's ping to be answered while a put waits, on a
#   loaded 2-core machine.
BUSY_TIMEOUT = 2.0


async def test_sqlite_locked_longer_than_busy_timeout(
    make_server: Callable[..., Server],
    db_url: str,
    db_env: dict[str, str],
    seeded_repository: ReportRepository,
) -> None:
    """Another process's connection holds SQLite's write lock (BEGIN IMMEDIATE and a write)
    for longer than the busy timeout (BUSY_TIMEOUT), then rolls back.

    Meanwhile: a put gets `unavailable` after about the busy timeout, its connection stays
    open, other connections are answered while it waits; reads go on (WAL: a writer does not
    block readers, who do not see its uncommitted write), /readyz stays 200; seed.py add
    fails with one line and status 1. Afterwards the same connection's put succeeds, and
    every acknowledged write is there and was pushed.
    """
    path = sqlite_path(db_url)
    if path is None:
        pytest.skip("a writer's lock on the database file is SQLite's")
    server = make_server(sqlite_busy_timeout=str(BUSY_TIMEOUT))
    env = {**db_env, "REPORTS_SQLITE_BUSY_TIMEOUT": str(BUSY_TIMEOUT)}
    writer = await connect(server, WRITE_TOKEN)
    reader = await connect(server)
    watcher, _ = await subscribe(server)
    try:
        put = await call(writer, {"id": 1, "type": "put", "name": "before", "title": "B"})
        assert put["result"]["name"] == "before"
        assert (await next_event(watcher))["version"] == 5

        other = sqlite3.connect(path, isolation_level=None, timeout=5)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("UPDATE reports SET title = 'Uncommitted' WHERE name = 'report4'")
            started = time.monotonic()
            await writer.send(json.dumps({"id": 2, "type": "put", "name": "during", "title": "D"}))
            locked_put = asyncio.create_task(recv(writer, within=BUSY_TIMEOUT + 5))
            assert (await call(reader, {"id": "r", "type": "ping"}))["result"]["pong"] is True
            assert not locked_put.done(), "the server stalls while a write waits for the lock"
            lost = await locked_put
            assert lost["id"] == 2, lost
            took = time.monotonic() - started
            print(f"locked put answered in {took:.2f}s")
            assert lost["error"] == UNAVAILABLE, "a write was acknowledged while locked out"
            assert BUSY_TIMEOUT - 0.05 <= took < BUSY_TIMEOUT + 5
            assert (await call(writer, {"id": 3, "type": "ping"}))["result"]["pong"] is True
            # WAL: readers are not blocked by a writer, and do not see its uncommitted write.
            get = await call(writer, {"id": 4, "type": "get", "name": "report4"})
            assert get["result"]["title"] == "Report 4"
            assert await plain(writer, "report1") == {"report": "Report 1"}
            assert await status(server, "/readyz") == 200
            started = time.monotonic()
            code, err = await seed_add(env, "seedlocked")
            print(f"locked seed.py failed in {time.monotonic() - started:.2f}s: {err!r}")
            assert code == 1
            assert len(err.splitlines()) == 1 and err.startswith("seed.py: error:"), err
            assert "locked" in err
        finally:
            other.execute("ROLLBACK")
            other.close()

        put = await call(writer, {"id": 5, "type": "put", "name": "during", "title": "D2"})
        assert put["result"]["title"] == "D2"
        code, err = await seed_add(env, "seedafter")
        assert code == 0, err
        events = [await next_event(watcher) for _ in range(2)]
        assert [(e["report"]["name"], e["version"]) for e in events] == [
            ("during", 6),
            ("seedafter", 7),
        ]
        get = await call(writer, {"id": 6, "type": "get", "name": "report4"})
        assert get["result"]["title"] == "Report 4"
    finally:
        for ws in (writer, reader, watcher):
            await ws.close()
    names = {report.name for report in await seeded_repository.list_reports()}
    assert {"before", "during", "seedafter"} <= names
    assert "seedlocked" not in names


# -- SQLite file unreadable ------------------------------------------------------------------

# NOTE: root reads any file whatever its mode, so the server runs without the two
#   capabilities that let root ignore file permissions, as a service account would.
DROP_DAC = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
]


class UnprivilegedServer(Server):
    """`serve` subject to file permissions even when the tests run as root."""

    def __init__(self, env: Mapping[str, str]) -> None:
        # NOTE: Server.__init__ with a command prefix; it takes none.
        prefix = DROP_DAC if os.geteuid() == 0 else []
        self.port = free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.url = f"ws://127.0.0.1:{self.port}"
        self.log_path = Path(env["TMPDIR"]) / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "reports_service", "serve", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*prefix, *command],
            cwd=ROOT,
            env={**env, "REPORTS_HOST": "127.0.0.1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_up()


def open_descriptors(pid: int, path: str) -> int:
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == path:
                count += 1
    return count


def run_unprivileged_cli(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python seed.py ARGS` subject to file permissions, like the server above."""
    prefix = DROP_DAC if os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, sys.executable, str(ROOT / "seed.py"), *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_sqlite_file_unreadable(
    db_url: str,
    db_env: dict[str, str],
    seeded_repository: ReportRepository,
    tmp_path: Path,
) -> None:
    """The database file loses its read permission (chmod 000) while servers run, then gets
    it back. The servers run without root's power to ignore permissions (see DROP_DAC).

    What really happens: a running server's connections hold the file open, so they go on
    serving reads and writes; only opening a new connection fails. So the test makes the
    running server need one (its pooled connections kept busy by puts waiting on a write
    lock): that query gets `unavailable` over a connection that stays open. A second server
    started during the outage can open nothing: /readyz 503, /healthz 200, new clients closed
    with 1013, and seed.py fails with one line. Once the file is readable again both serve
    and push changes without a restart, and every acknowledged write is there.
    """
    path = sqlite_path(db_url)
    if path is None:
        pytest.skip("file permissions are SQLite's")
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root needs setpriv to make a file unreadable to the server")
    env = {
        **db_env,
        "TMPDIR": str(tmp_path),
        "REPORTS_LOG_LEVEL": "DEBUG",
        "REPORTS_SQLITE_BUSY_TIMEOUT": "2",
    }
    servers: list[Server] = []
    clients: list[ClientConnection] = []
    try:
        first = await asyncio.to_thread(UnprivilegedServer, env)
        servers.append(first)
        writer = await connect(first, WRITE_TOKEN)
        reader = await connect(first)
        watcher, _ = await subscribe(first)
        clients += [writer, reader, watcher]
        put = await call(writer, {"id": 1, "type": "put", "name": "before", "title": "B"})
        assert put["result"]["version"] == 5
        assert (await next_event(watcher))["version"] == 5

        # NOTE: authenticated now: logging in during the outage may need a new connection.
        #   Enough for every descriptor the server can hold on the file (pool, point reader,
        #   change watcher).
        spare = [await connect(first, WRITE_TOKEN) for _ in range(12)]
        clients += spare
        # NOTE: and a point read made, so the point reader has its connection open too.
        assert (await call(reader, {"id": 0, "type": "get", "name": "report1"}))["result"]
        readers = [await connect(first) for _ in range(8)]
        clients += readers
        os.chmod(path, 0)
        try:
            # Open connections keep the file open: the running server goes on serving.
            get = await call(reader, {"id": 2, "type": "get", "name": "before"})
            assert get["result"]["title"] == "B"
            put = await call(writer, {"id": 3, "type": "put", "name": "pooled", "title": "P"})
            assert put["result"]["version"] == 6
            assert (await next_event(watcher))["version"] == 6

            # A new connection cannot open the file: make the server need one, by asking for
            # more lists and searches at once than it has pooled connections open (fewer than
            # it holds descriptors on the file), while puts wait for a write lock.
            held = open_descriptors(first.process.pid, path)
            assert held <= len(spare)
            blockers = spare[:held]
            other = sqlite3.connect(path, isolation_level=None, timeout=5)
            try:
                other.execute("BEGIN IMMEDIATE")
                for n, ws in enumerate(blockers):
                    await ws.send(json.dumps({"id": n, "type": "put", "name": "x", "title": "X"}))

                async def refused(request: dict[str, Any]) -> bool:
                    replies = await asyncio.gather(*(call(ws, request) for ws in readers))
                    for reply in replies:
                        assert "result" in reply or reply["error"] == UNAVAILABLE, reply
                    return any("error" in reply for reply in replies)

                # NOTE: a get (or a plain query) on SQLite is answered by the point reader's own
                #   connection, opened before the outage and kept; list and search use a pooled
                #   one, and need a new one when more are asked for at once than the pool holds.
                await eventually(lambda: refused({"id": 5, "type": "search", "q": "report3"}))
                await eventually(lambda: refused({"id": 7, "type": "list"}))
                assert "unable to open database file" in first.log()  # the reason
                assert (await call(reader, {"id": 6, "type": "ping"}))["result"]["pong"] is True
                for ws in blockers:
                    assert (await recv(ws))["error"] == UNAVAILABLE  # locked out, or no file
            finally:
                other.close()

            # A server started now opens nothing.
            second = await asyncio.to_thread(UnprivilegedServer, env)
            servers.append(second)
            assert await status(second, "/readyz") == 503
            assert await status(second, "/healthz") == 200
            await assert_refused(second)
            done = await asyncio.to_thread(
                run_unprivileged_cli, env, "add", "seedblocked", "--title", "S"
            )
            assert done.returncode == 1
            first_line = done.stderr.partition("\n")[0]
            assert first_line.startswith("seed.py: error:"), done.stderr
            assert "unable to open database file" in first_line
            # NOTE: not "exactly one line": now and then (about 1 run in 20, more under load)
            #   a traceback follows, from aiosqlite's worker thread of the connection that
            #   failed to open, which stops after asyncio.run() has closed the loop
            #   ("RuntimeError: Event loop is closed"). A bug of the CLI, reported; not
            #   tested here because no test can make it happen every time.
        finally:
            os.chmod(path, 0o644)

        get = await call(reader, {"id": 7, "type": "get", "name": "report3"})
        assert get["result"]["title"] == "Report 3"
        assert await plain(reader, "report2") == {"report": "Report 2"}

        async def second_ready() -> bool:
            return await status(second, "/readyz") == 200

        await eventually(second_ready, within=5)
        late = await connect(second)
        clients.append(late)
        get = await call(late, {"id": 1, "type": "get", "name": "pooled"})
        assert get["result"]["title"] == "P"

        # (subscribe() waits for the second server's change feed to have read the version.)
        subscriber, version = await subscribe(second)
        clients.append(subscriber)
        assert version == 6
        put = await call(writer, {"id": 8, "type": "put", "name": "after", "title": "A"})
        assert put["result"]["version"] == 7
        for ws in (watcher, subscriber):
            event = await next_event(ws)
            assert (event["report"]["name"], event["version"]) == ("after", 7)
    finally:
        for ws in clients:
            await ws.close()
        for srv in servers:
            await asyncio.to_thread(srv.stop)
    names = {report.name for report in await seeded_repository.list_reports()}
    assert {"before", "pooled", "after"} <= names
    assert not {"x", "seedblocked"} & names
