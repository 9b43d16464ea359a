"""Conditional writes: ``put`` and ``remove`` with ``if_version`` write only at that version.

In the repository, through the app (JSON and MessagePack), and raced end to end: of writers that
send the same ``if_version`` at once, exactly one wins; the others get ``conflict`` and change
nothing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from falcon.testing import ASGIConductor

from reports_service.errors import VersionConflict
from reports_service.records import NewReport
from reports_service.repository import ReportRepository

from .clients import call, connect, recv
from .conftest import TOKEN, WRITE_TOKEN
from .server import Server
from .wire import Wire

RACERS = 8


async def latest(repo: ReportRepository) -> int:
    return (await repo.changelog_bounds())[1]


# -- the repository ------------------------------------------------------------------------


async def test_put_report_adds_then_replaces(seeded_repository: ReportRepository) -> None:
    repo = seeded_repository
    before = await latest(repo)
    added, was_added = await repo.put_report(NewReport("fresh", "Fresh", "one"))
    assert was_added
    assert (added.name, added.title, added.content) == ("fresh", "Fresh", "one")
    assert added.version == before + 1
    assert added.created_at == added.updated_at

    replaced, was_added = await repo.put_report(NewReport("fresh", "Fresher", "two"))
    assert not was_added
    assert (replaced.title, replaced.content, replaced.version) == ("Fresher", "two", before + 2)
    assert replaced.created_at == added.created_at
    assert replaced.updated_at >= added.updated_at
    assert await repo.get_report(name="fresh") == replaced
    changes = await repo.changes_since(before, limit=10)
    assert [(c.op, c.report.content) for c in changes] == [("added", "one"), ("updated", "two")]


async def test_put_at_the_current_version_writes(seeded_repository: ReportRepository) -> None:
    current = await seeded_repository.get_report(name="report1")
    assert current is not None
    stored, was_added = await seeded_repository.put_report(
        NewReport("report1", "Report 1", "edited"), if_version=current.version
    )
    assert not was_added
    assert stored.content == "edited"
    assert stored.version == await latest(seeded_repository)


@pytest.mark.parametrize(
    ("name", "if_version", "current"),
    [("report1", 2, 1), ("report1", 0, 1), ("absent", 7, None)],
    ids=["stale", "zero-but-exists", "absent"],
)
async def test_put_at_another_version_writes_nothing(
    seeded_repository: ReportRepository, name: str, if_version: int, current: int | None
) -> None:
    repo = seeded_repository
    before = await latest(repo)
    stored = await repo.get_report(name=name)
    with pytest.raises(VersionConflict) as conflict:
        await repo.put_report(NewReport(name, "Overwritten", "lost"), if_version=if_version)
    assert conflict.value.current == current
    assert await repo.get_report(name=name) == stored
    assert await latest(repo) == before
    assert await repo.changes_since(before, limit=10) == []


async def test_put_at_version_zero_only_creates(seeded_repository: ReportRepository) -> None:
    repo = seeded_repository
    created, was_added = await repo.put_report(NewReport("new", "New", "first"), if_version=0)
    assert was_added
    with pytest.raises(VersionConflict) as conflict:
        await repo.put_report(NewReport("new", "New", "second"), if_version=0)
    assert conflict.value.current == created.version
    assert await repo.get_report(name="new") == created


async def test_remove_only_at_the_current_version(seeded_repository: ReportRepository) -> None:
    repo = seeded_repository
    before = await latest(repo)
    stored = await repo.get_report(name="report2")
    assert stored is not None
    with pytest.raises(VersionConflict) as conflict:
        await repo.remove_report(name="report2", if_version=stored.version + 1)
    assert conflict.value.current == stored.version
    assert await repo.get_report(name="report2") == stored
    assert await latest(repo) == before

    assert await repo.remove_report(name="report2", if_version=stored.version) == before + 1
    assert await repo.get_report(name="report2") is None
    assert await repo.remove_report(name="report2", if_version=stored.version) is None


# -- through the app -----------------------------------------------------------------------


async def login(wire: Wire, token: str) -> None:
    """The first message: the token, as a text frame or a MessagePack string."""
    await (wire.send(token) if wire.binary else wire.ws.send_text(token))


def put(n: int, name: str, content: str, if_version: int | None) -> dict[str, Any]:
    request = {"type": "put", "id": n, "name": name, "title": name.title(), "content": content}
    return request if if_version is None else {**request, "if_version": if_version}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
async def test_a_stale_put_or_remove_is_refused_and_pushes_nothing(
    conductor: ASGIConductor, binary: bool
) -> None:
    async with (
        conductor.simulate_ws("/reports") as writer_ws,
        conductor.simulate_ws("/reports") as watcher_ws,
    ):
        writer, watcher = Wire(writer_ws, binary), Wire(watcher_ws, binary)
        await login(writer, WRITE_TOKEN)
        await login(watcher, TOKEN)
        subscribed = await watcher.call({"type": "subscribe", "id": 1})
        version = subscribed["result"]["version"]

        first = await writer.call(put(2, "report1", "first", if_version=1))
        assert first["result"]["content"] == "first"
        assert first["result"]["version"] == version + 1
        event = await watcher.recv()
        assert (event["type"], event["version"]) == ("report.updated", version + 1)

        stale = await writer.call(put(3, "report1", "lost", if_version=1))
        assert stale["id"] == 3
        assert stale["error"]["code"] == "conflict"
        created = await writer.call(put(4, "report1", "lost", if_version=0))
        assert created["error"]["code"] == "conflict"
        removed = await writer.call({"type": "remove", "id": 5, "name": "report1", "if_version": 1})
        assert removed["error"]["code"] == "conflict"
        got = await writer.call({"type": "get", "id": 6, "name": "report1"})
        assert got["result"] == first["result"]

        # NOTE: the refused writes pushed nothing: the next event is the write after them.
        after = await writer.call(
            {"type": "remove", "id": 7, "name": "report1", "if_version": 1 + version}
        )
        assert after["result"] == {"name": "report1", "version": version + 2}
        event = await watcher.recv()
        assert (event["type"], event["version"]) == ("report.removed", version + 2)

        missing = await writer.call({"type": "remove", "id": 8, "name": "report1", "if_version": 1})
        assert missing["error"]["code"] == "not_found"
        new = await writer.call(put(9, "report1", "again", if_version=0))
        assert (new["result"]["content"], new["result"]["version"]) == ("again", version + 3)


@pytest.mark.parametrize("if_version", [-1, 2**63, "1", 1.5])
async def test_an_if_version_out_of_range_is_an_invalid_request(
    conductor: ASGIConductor, seeded_repository: ReportRepository, if_version: object
) -> None:
    stored = await seeded_repository.get_report(name="report1")
    async with conductor.simulate_ws("/reports") as ws:
        wire = Wire(ws, binary=False)
        await login(wire, WRITE_TOKEN)
        reply = await wire.call({**put(1, "report1", "x", None), "if_version": if_version})
        assert reply["error"]["code"] == "invalid_request"
        remove = {"type": "remove", "id": 2, "name": "report1", "if_version": if_version}
        assert (await wire.call(remove))["error"]["code"] == "invalid_request"
    assert await seeded_repository.get_report(name="report1") == stored


# -- a race, end to end --------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["report1", "brand-new"], ids=["replace", "create"])
async def test_of_racing_writers_exactly_one_wins(
    server: Server, seeded_repository: ReportRepository, name: str
) -> None:
    stored = await seeded_repository.get_report(name=name)
    if_version = 0 if stored is None else stored.version
    before = await latest(seeded_repository)
    writers = [await connect(server, WRITE_TOKEN) for _ in range(RACERS)]
    try:
        for n, ws in enumerate(writers):
            await ws.send(json.dumps(put(n, name, f"writer {n}", if_version)))
        replies = await asyncio.gather(*(recv(ws) for ws in writers))
    finally:
        for ws in writers:
            await ws.close()

    won = [r for r in replies if "result" in r]
    lost = [r for r in replies if "error" in r]
    assert len(won) == 1, replies
    assert [r["error"]["code"] for r in lost] == ["conflict"] * (RACERS - 1)
    winner = won[0]["result"]
    assert winner["content"] == f"writer {won[0]['id']}"
    final = await seeded_repository.get_report(name=name)
    assert final is not None
    assert (final.content, final.version) == (winner["content"], winner["version"])
    changes = await seeded_repository.changes_since(before, limit=100)
    assert [(c.version, c.report.content) for c in changes] == [
        (winner["version"], winner["content"])
    ]
    async with await connect(server, TOKEN) as reader:
        got = await call(reader, {"type": "get", "id": 1, "name": name})
        assert got["result"] == winner
