"""Live pushes end to end: uvicorn, a real client, and seed.py changing reports meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from websockets.exceptions import ConnectionClosed

from reports_service.records import NewReport
from reports_service.repository import ReportRepository

from .clients import PUSH_WITHIN, call, connect, recv
from .conftest import WRITE_TOKEN
from .server import Server, run_cli

SEND_TIMEOUT = 5.0  # seconds; generous, so that the others' pushes come well within it


async def test_seed_script_changes_are_pushed_promptly(
    server: Server, db_env: dict[str, str]
) -> None:
    async with await connect(server) as ws:
        assert (await call(ws, {"id": 1, "type": "subscribe"}))["result"]["version"] == 4
        steps = [
            (("add", "pushed", "--title", "Pushed"), "report.added", "Pushed"),
            (("add", "pushed", "--title", "Pushed 2", "--replace"), "report.updated", "Pushed 2"),
            (("remove", "pushed"), "report.removed", "Pushed 2"),
        ]
        for version, (args, kind, title) in enumerate(steps, start=5):
            done = await asyncio.to_thread(run_cli, db_env, *args)
            assert done.returncode == 0, done.stderr
            event = await recv(ws, within=PUSH_WITHIN)
            assert (event["type"], event["version"]) == (kind, version)
            assert event["report"]["name"] == "pushed" and event["report"]["title"] == title


async def test_a_put_is_pushed_by_its_own_process_as_the_changelog_has_it(
    server: Server,
) -> None:
    # NOTE: the writing process pushes its own change without reading it back; a replay
    #   reads the changelog. A subscriber must not be able to tell them apart.
    writes = [("p1", "P1"), ("p1", "P1 v2"), ("p2", "P2")]
    async with await connect(server) as ws, await connect(server, WRITE_TOKEN) as writer:
        assert (await call(ws, {"id": 1, "type": "subscribe"}))["result"]["version"] == 4
        pushed = []
        for n, (name, title) in enumerate(writes):
            put = {"id": n, "type": "put", "name": name, "title": title, "content": f"c{n}"}
            assert "result" in await call(writer, put)
            pushed.append(await recv(ws, within=PUSH_WITHIN))
    async with await connect(server) as ws:
        assert (await call(ws, {"id": 1, "type": "subscribe", "since": 4}))["result"]
        replayed = [await recv(ws) for _ in writes]
    assert [(e["type"], e["version"]) for e in pushed] == [
        ("report.added", 5),
        ("report.updated", 6),
        ("report.added", 7),
    ]
    assert pushed == replayed


async def test_reconnect_with_since_gets_exactly_the_missed_changes(
    server: Server, db_env: dict[str, str]
) -> None:
    async with await connect(server) as ws:
        seen = (await call(ws, {"id": 1, "type": "subscribe"}))["result"]["version"]
    for args in (
        ("add", "m1", "--title", "M1"),
        ("add", "m2", "--title", "M2"),
        ("add", "m1", "--title", "M1 v2", "--replace"),
        ("remove", "m2"),
    ):
        assert run_cli(db_env, *args).returncode == 0
    async with await connect(server) as ws:
        reply = await call(ws, {"id": 2, "type": "subscribe", "since": seen})
        assert reply["result"]["version"] == seen + 4
        missed = [await recv(ws) for _ in range(4)]
        assert [(e["type"], e["report"]["name"], e["version"]) for e in missed] == [
            ("report.added", "m1", seen + 1),
            ("report.added", "m2", seen + 2),
            ("report.updated", "m1", seen + 3),
            ("report.removed", "m2", seen + 4),
        ]
        # Nothing twice: the next message is the answer to this ping, then live changes.
        assert (await call(ws, {"id": 3, "type": "ping"}))["id"] == 3
        assert run_cli(db_env, "add", "m3", "--title", "M3").returncode == 0
        assert (await recv(ws))["version"] == seen + 5


async def test_resync_when_history_is_gone(
    make_server: Callable[..., Server], db_env: dict[str, str]
) -> None:
    server = make_server(changelog_retention="3")
    env = {**db_env, "REPORTS_CHANGELOG_RETENTION": "3"}
    for n in range(5):
        assert run_cli(env, "add", f"h{n}", "--title", f"H{n}").returncode == 0
    async with await connect(server) as ws:
        reply = await call(ws, {"id": 1, "type": "subscribe", "since": 2})
        assert reply["result"]["version"] == 9
        assert await recv(ws) == {"type": "resync", "version": 9}
        assert (await call(ws, {"id": 2, "type": "ping"}))["id"] == 2
        assert run_cli(env, "add", "h9", "--title", "H9").returncode == 0
        assert (await recv(ws))["version"] == 10
    async with await connect(server) as ws:
        await call(ws, {"id": 1, "type": "subscribe", "since": 8})
        assert [(await recv(ws))["version"] for _ in range(2)] == [9, 10]
    async with await connect(server) as ws:
        await call(ws, {"id": 1, "type": "subscribe", "since": 99})
        assert await recv(ws) == {"type": "resync", "version": 10}


async def test_a_transaction_of_many_changes_reaches_every_subscriber_whole_and_in_order(
    make_server: Callable[..., Server], seeded_repository: ReportRepository
) -> None:
    """One read of the changelog brings many changes: they are written to each subscriber in
    groups (transport.pushes_together), with a put of this process between two of the reads:
    each subscriber gets every change once, in version order, and the put's reply."""
    server = make_server(subscriber_queue="10")
    subscribers = [await connect(server) for _ in range(3)]
    writer = await connect(server, WRITE_TOKEN)
    try:
        for ws in subscribers:
            assert (await call(ws, {"id": 1, "type": "subscribe"}))["result"]["version"] == 4
        await seeded_repository.add_reports([NewReport(f"t{n}", f"T{n}", "") for n in range(50)])
        put = await call(writer, {"id": 2, "type": "put", "name": "after", "title": "After"})
        assert put["result"]["version"] == 55
        await seeded_repository.add_reports([NewReport(f"u{n}", f"U{n}", "") for n in range(20)])
        for ws in subscribers:
            events = [await recv(ws, within=PUSH_WITHIN) for _ in range(71)]
            assert [e["version"] for e in events] == list(range(5, 76))
            names = [e["report"]["name"] for e in events]
            assert names == [f"t{n}" for n in range(50)] + ["after"] + [f"u{n}" for n in range(20)]
            assert (await call(ws, {"id": 3, "type": "ping"}))["id"] == 3  # NOTE: nothing more
    finally:
        for ws in (*subscribers, writer):
            await ws.close()


async def test_a_replay_longer_than_the_queue_is_paced_and_one_too_long_refused(
    make_server: Callable[..., Server], seeded_repository: ReportRepository
) -> None:
    """A resume may reach back REPORTS_REPLAY_LIMIT versions, however small the queue: the
    replay goes in batches, each sent before the next is read. Further back, an error."""
    server = make_server(subscriber_queue="10", replay_limit="100")
    await seeded_repository.add_reports([NewReport(f"p{n}", f"P{n}", "") for n in range(100)])
    async with await connect(server) as ws:
        reply = await call(ws, {"id": 1, "type": "subscribe", "since": 4})
        assert reply["result"]["version"] == 104
        assert [(await recv(ws))["version"] for _ in range(100)] == list(range(5, 105))
        assert (await call(ws, {"id": 2, "type": "ping"}))["id"] == 2  # NOTE: nothing twice
    async with await connect(server) as ws:
        reply = await call(ws, {"id": 1, "type": "subscribe", "since": 3})
        assert reply["error"]["code"] == "invalid_request"
        assert "more than 100 changes since 3" in reply["error"]["message"]


async def test_stalled_subscriber_is_closed_and_does_not_delay_others(
    make_server: Callable[..., Server], seeded_repository: ReportRepository
) -> None:
    server = make_server(subscriber_queue="50", send_timeout=str(SEND_TIMEOUT))
    batches, per_batch = 60, 10
    stalled = await connect(server, max_queue=1, max_size=None)
    healthy = await connect(server, max_size=None)
    try:
        await call(stalled, {"id": 1, "type": "subscribe"})
        await call(healthy, {"id": 1, "type": "subscribe"})
        lags = []
        for b in range(batches):
            batch = [NewReport(f"big{b}-{i}", "Big", "x" * 50_000) for i in range(per_batch)]
            await seeded_repository.add_reports(batch)
            committed = time.monotonic()
            events = [await recv(healthy, within=SEND_TIMEOUT) for _ in range(per_batch)]
            lags.append(time.monotonic() - committed)
            assert [e["report"]["name"] for e in events] == [r.name for r in batch]
        # NOTE: a batch that waited on the stalled subscriber would lag by its send timeout.
        assert max(lags) < SEND_TIMEOUT, lags
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(SEND_TIMEOUT + 10):
                while True:
                    await stalled.recv()
        code = closed.value.rcvd.code if closed.value.rcvd else None
        assert code in (4001, None)  # None: dropped before the close frame got through
        assert "closing slow subscriber" in server.log()
        assert (await call(healthy, {"id": 2, "type": "ping"}))["id"] == 2
    finally:
        await stalled.close()
        await healthy.close()
