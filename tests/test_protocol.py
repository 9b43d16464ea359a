"""Every typed action, in JSON text frames and in MessagePack binary frames."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from falcon.testing import ASGIConductor
from sqlalchemy import text

from reports_service.records import NewReport
from reports_service.repository import ReportRepository

from .conftest import TOKEN, WRITE_TOKEN
from .waiting import eventually
from .wire import EPOCH, Wire


@pytest.fixture(params=["json", "msgpack"])
async def wire(request: pytest.FixtureRequest, conductor: ASGIConductor) -> AsyncIterator[Wire]:
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text(TOKEN)
        yield Wire(ws, binary=request.param == "msgpack")


async def test_get(wire: Wire) -> None:
    reply = await wire.call({"id": 1, "type": "get", "name": "report2"})
    assert reply["id"] == 1
    report = reply["result"]
    assert report["name"] == "report2"
    assert report["title"] == "Report 2"
    assert report["content"] == "This is the content of report 2"
    assert report["version"] == 2
    assert report["created_at"] and report["updated_at"]


async def test_get_missing_is_not_found(wire: Wire) -> None:
    reply = await wire.call({"id": "x", "type": "get", "name": "nope"})
    assert reply == {"id": "x", "error": {"code": "not_found", "message": "no report named 'nope'"}}


async def test_list_pages_newest_first(wire: Wire, seeded_repository: ReportRepository) -> None:
    await seeded_repository.add_reports(
        [NewReport(f"extra{i}", f"Extra {i}", "") for i in range(5)]
    )
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        request: dict[str, Any] = {"id": 2, "type": "list", "limit": 3}
        if cursor:
            request["cursor"] = cursor
        page = (await wire.call(request))["result"]
        seen += [r["name"] for r in page["reports"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [f"extra{i}" for i in range(4, -1, -1)] + [f"report{n}" for n in range(4, 0, -1)]


async def test_search_title_and_content(wire: Wire, seeded_repository: ReportRepository) -> None:
    await seeded_repository.add_reports(
        [
            NewReport("a", "Quarterly sales", "numbers"),
            NewReport("b", "Other", "mentions SALES in the content"),
            NewReport("c", "100% sure_thing", "x"),
        ]
    )
    found = (await wire.call({"id": 3, "type": "search", "q": "sales"}))["result"]
    assert [r["name"] for r in found["reports"]] == ["b", "a"]
    assert found["next"] is None
    literal = (await wire.call({"id": 4, "type": "search", "q": "0% s"}))["result"]
    assert [r["name"] for r in literal["reports"]] == ["c"]
    underscore = (await wire.call({"id": 5, "type": "search", "q": "e_t"}))["result"]
    assert [r["name"] for r in underscore["reports"]] == ["c"]
    paged = (await wire.call({"id": 6, "type": "search", "q": "report", "limit": 2}))["result"]
    assert len(paged["reports"]) == 2 and paged["next"] is not None


async def test_ping(wire: Wire) -> None:
    assert await wire.call({"id": 7, "type": "ping"}) == {
        "id": 7,
        "result": {"pong": True, "version": 4, "epoch": EPOCH},
    }


async def test_subscribe_pushes_changes(wire: Wire, seeded_repository: ReportRepository) -> None:
    reply = await wire.call({"id": 8, "type": "subscribe"})
    assert reply == {"id": 8, "result": {"names": None, "version": 4, "epoch": EPOCH}}
    await seeded_repository.add_reports([NewReport("live", "Live", "1")])
    added = await wire.recv()
    assert added["type"] == "report.added"
    assert added["version"] == 5
    assert added["report"]["name"] == "live" and added["report"]["title"] == "Live"
    await seeded_repository.add_reports([NewReport("live", "Live 2", "2")], replace=True)
    updated = await wire.recv()
    assert (updated["type"], updated["version"], updated["report"]["title"]) == (
        "report.updated",
        6,
        "Live 2",
    )
    await seeded_repository.remove_report(name="live")
    removed = await wire.recv()
    assert (removed["type"], removed["version"], removed["report"]["name"]) == (
        "report.removed",
        7,
        "live",
    )


async def test_subscribe_to_names_only(wire: Wire, seeded_repository: ReportRepository) -> None:
    reply = await wire.call({"id": 9, "type": "subscribe", "names": ["b", "a"]})
    assert reply["result"]["names"] == ["a", "b"]
    await seeded_repository.add_reports([NewReport("c", "C", ""), NewReport("b", "B", "")])
    event = await wire.recv()
    assert event["report"]["name"] == "b"
    assert (await wire.call({"id": 10, "type": "ping"}))["id"] == 10


async def test_unsubscribe_stops_pushes(wire: Wire, seeded_repository: ReportRepository) -> None:
    await wire.call({"id": 1, "type": "subscribe"})
    reply = await wire.call({"id": 2, "type": "unsubscribe"})
    assert reply == {"id": 2, "result": {"names": [], "version": 4, "epoch": EPOCH}}
    await seeded_repository.add_reports([NewReport("quiet", "Q", "")])

    async def feed_has_read() -> bool:
        reply = await wire.call({"id": 3, "type": "ping"})
        assert reply["id"] == 3, reply  # not a push
        return bool(reply["result"]["version"] == 5)

    await eventually(feed_has_read)  # NOTE: a push would have been queued before this reply
    assert (await wire.call({"id": 4, "type": "ping"}))["id"] == 4


async def test_unsubscribe_some_names(wire: Wire, seeded_repository: ReportRepository) -> None:
    await wire.call({"id": 1, "type": "subscribe", "names": ["a", "b"]})
    reply = await wire.call({"id": 2, "type": "unsubscribe", "names": ["a"]})
    assert reply["result"]["names"] == ["b"]
    await seeded_repository.add_reports([NewReport("a", "A", ""), NewReport("b", "B", "")])
    assert (await wire.recv())["report"]["name"] == "b"


async def test_resume_with_since(wire: Wire, seeded_repository: ReportRepository) -> None:
    await seeded_repository.add_reports([NewReport("r5", "Five", "")])
    await seeded_repository.add_reports([NewReport("r5", "Five again", "")], replace=True)
    reply = await wire.call({"id": 1, "type": "subscribe", "since": 4})
    assert reply["result"]["version"] == 6
    replayed = [await wire.recv(), await wire.recv()]
    assert [(e["type"], e["version"]) for e in replayed] == [
        ("report.added", 5),
        ("report.updated", 6),
    ]
    await seeded_repository.add_reports([NewReport("r7", "Seven", "")])
    assert (await wire.recv())["version"] == 7


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        ({"id": 1, "type": "teleport"}, "unknown_type", "unknown type 'teleport'"),
        ({"id": 1, "type": ["get"]}, "unknown_type", "unknown type"),
        ({"id": 1, "type": "get"}, "invalid_request", "missing required field `name`"),
        ({"id": 1, "type": "get", "name": 5}, "invalid_request", "Expected `str`"),
        ({"id": 1, "type": "get", "name": "x", "extra": 1}, "invalid_request", "unknown field"),
        ({"id": 1, "type": "list", "limit": 0}, "invalid_request", "limit"),
        ({"id": 1, "type": "list", "limit": 101}, "invalid_request", "limit"),
        ({"id": 1, "type": "list", "cursor": "abc"}, "bad_cursor", "cursor"),
        ({"id": 1, "type": "search", "q": ""}, "invalid_request", "q"),
        ({"id": 1, "type": "subscribe", "since": -1}, "invalid_request", "since"),
        ({"id": 1, "type": "subscribe", "names": "report1"}, "invalid_request", "names"),
        ({"id": [1], "type": "ping"}, "invalid_request", "id"),
    ],
)
async def test_bad_requests_get_error_replies(
    wire: Wire, request_: dict[str, Any], code: str, fragment: str
) -> None:
    reply = await wire.call(request_)
    assert reply["error"]["code"] == code
    assert fragment in reply["error"]["message"]
    assert reply["id"] == (1 if request_["id"] == 1 else None)
    assert (await wire.call({"id": 2, "type": "ping"}))["id"] == 2


async def test_plain_queries_still_work_beside_typed_ones(wire: Wire) -> None:
    assert (await wire.call({"id": 1, "type": "ping"}))["result"]["pong"] is True
    await (wire.ws.send_data(b"\xa7report1") if wire.binary else wire.ws.send_text("report1"))
    assert await wire.recv() == {"report": "Report 1"}
    await wire.send({"no": "type"})
    assert await wire.recv() == (
        {"error": "a binary query must be a MessagePack string"}
        if wire.binary
        else {"error": "report not found"}
    )


async def test_put_and_remove_need_a_write_token(wire: Wire) -> None:
    reply = await wire.call({"id": 1, "type": "put", "name": "w", "title": "W"})
    assert reply["error"]["code"] == "forbidden"
    reply = await wire.call({"id": 2, "type": "remove", "name": "report1"})
    assert reply["error"]["code"] == "forbidden"
    assert (await wire.call({"id": 3, "type": "get", "name": "report1"}))["result"]


@pytest.fixture(params=["json", "msgpack"])
async def writer(request: pytest.FixtureRequest, conductor: ASGIConductor) -> AsyncIterator[Wire]:
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text(WRITE_TOKEN)
        yield Wire(ws, binary=request.param == "msgpack")


async def reply_and_event(wire: Wire, request: dict[str, Any]) -> tuple[Any, Any]:
    """The reply to a write and the event it pushes to this subscriber, in either order."""
    await wire.send(request)
    first, second = await wire.recv(), await wire.recv()
    return (first, second) if "id" in first else (second, first)


async def test_put_and_remove(writer: Wire, seeded_repository: ReportRepository) -> None:
    await writer.call({"id": 0, "type": "subscribe", "names": ["w"]})
    put, event = await reply_and_event(
        writer, {"id": 1, "type": "put", "name": "w", "title": "W", "content": "c"}
    )
    assert (put["id"], put["result"]["name"], put["result"]["version"]) == (1, "w", 5)
    assert event["type"] == "report.added"
    stored = await seeded_repository.get_report(name="w")
    assert stored is not None and stored.title == "W"
    again, event = await reply_and_event(
        writer, {"id": 2, "type": "put", "name": "w", "title": "W2"}
    )
    assert again["result"]["title"] == "W2" and again["result"]["content"] == ""
    assert event["type"] == "report.updated"
    removed, event = await reply_and_event(writer, {"id": 3, "type": "remove", "name": "w"})
    assert removed == {"id": 3, "result": {"name": "w", "version": 7}}
    assert event["type"] == "report.removed"
    assert await seeded_repository.get_report(name="w") is None
    missing = await writer.call({"id": 4, "type": "remove", "name": "w"})
    assert missing["error"]["code"] == "not_found"
    bad = await writer.call({"id": 5, "type": "put", "name": " w", "title": "x"})
    assert bad["error"]["code"] == "invalid_request"
    assert "leading or trailing spaces" in bad["error"]["message"]


async def _epoch(repository: ReportRepository) -> str:
    async with repository.engine.connect() as conn:
        return str((await conn.execute(text("SELECT epoch FROM database_epoch"))).scalar_one())


async def test_ping_and_subscription_carry_the_databases_epoch(
    wire: Wire, seeded_repository: ReportRepository
) -> None:
    epoch = await _epoch(seeded_repository)
    assert epoch == EPOCH
    assert (await wire.call({"id": 1, "type": "ping"}))["result"]["epoch"] == epoch
    assert (await wire.call({"id": 2, "type": "subscribe"}))["result"]["epoch"] == epoch


async def test_resume_with_the_same_epoch_replays(
    wire: Wire, seeded_repository: ReportRepository
) -> None:
    epoch = await _epoch(seeded_repository)
    await seeded_repository.add_reports([NewReport("r5", "Five", "")])
    reply = await wire.call({"id": 1, "type": "subscribe", "since": 4, "epoch": epoch})
    assert reply["result"] == {"names": None, "version": 5, "epoch": epoch}
    assert [(e["type"], e["version"]) for e in [await wire.recv()]] == [("report.added", 5)]


async def test_resume_from_another_databases_epoch_resyncs(
    wire: Wire, seeded_repository: ReportRepository
) -> None:
    """Versions 1..4 exist here too, but they are not the ones the client saw: no replay."""
    epoch = await _epoch(seeded_repository)
    reply = await wire.call({"id": 1, "type": "subscribe", "since": 2, "epoch": "f" * 32})
    assert reply["result"] == {"names": None, "version": 4, "epoch": epoch}
    assert await wire.recv() == {"type": "resync", "version": 4}
    await seeded_repository.add_reports([NewReport("r5", "Five", "")])
    assert (await wire.recv())["version"] == 5


@pytest.mark.parametrize("epoch", ["", "e" * 65, 5])
async def test_a_malformed_epoch_is_refused(wire: Wire, epoch: object) -> None:
    reply = await wire.call({"id": 1, "type": "subscribe", "since": 2, "epoch": epoch})
    assert reply["error"]["code"] == "invalid_request" and "epoch" in reply["error"]["message"]
