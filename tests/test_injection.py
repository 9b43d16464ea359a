"""Injection: names, titles, contents and search strings are data, on every backend.

SQL metacharacters, LIKE wildcards, NUL bytes, strings at and over the limits and odd Unicode go
through `put`, `get`, the plain query, `list`, `search` and `remove` with a write token, in JSON
and in MessagePack. What is stored comes back exactly; what cannot be stored is refused with
`invalid_request` before it reaches the database; nothing else in the database changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import hypothesis
import msgpack
import pytest
from falcon.testing import ASGIConductor
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from reports_service.app import create_app
from reports_service.config import Settings
from reports_service.protocol import RequestError, decode
from reports_service.records import MAX_NAME_LENGTH, MAX_TITLE_LENGTH
from reports_service.repository import ReportRepository
from reports_service.watch import PostgresWatcher

from .conftest import TOKEN, TUTORIAL, WRITE_TOKEN
from .waiting import eventually
from .wire import EPOCH, Wire

TUTORIAL_NAMES = [r.name for r in TUTORIAL]

INJECTIONS = {
    "sql": [
        "'; DROP TABLE reports; --",
        '" OR 1=1 --',
        "' OR '1'='1",
        "report1' --",
        'report1" --',
        "report1'; DELETE FROM reports WHERE '1'='1",
        "Robert'); DROP TABLE api_tokens;--",
        "x' UNION SELECT name, token_hash FROM api_tokens --",
        "1; UPDATE reports SET title = 'pwned'",
    ],
    "like": ["%", "_", "%%", "report%", "report_", "\\", "\\%", "\\_", "/", "//%", "[a-z]*"],
    "placeholders": [
        "$1",
        ":name",
        "%(name)s",
        "?",
        "{name}",
        '{"type": "get"}',
        "<script>alert(1)</script>",
        "../../etc/passwd",
    ],
    "unicode": [
        "\u202eevil\u202c",  # right-to-left override
        "a\u200fb\u200e",  # right-to-left and left-to-right marks
        "e\u0301\u0301\u0301",  # combining acute accents
        "😀👩\u200d👩\u200d👧🏳\ufe0f\u200d🌈",  # emoji and ZWJ sequences
        "\uffff",
        "x\ufffe",
        "\ufeffbom",
        "\U0010ffff",
        "\U0001d573\U0001d58a\U0001d591\U0001d591\U0001d594",  # Fraktur "Hello"
        "中文報告",
        "a\tb\nc\rd",
        "\x01\x1b[31m\x7f",
    ],
}
ALL_INJECTIONS = [text for group in INJECTIONS.values() for text in group]
NUL_MESSAGE = "report {} contains a NUL character"


@pytest.fixture(params=["json", "msgpack"])
async def writer(request: pytest.FixtureRequest, conductor: ASGIConductor) -> AsyncIterator[Wire]:
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text(WRITE_TOKEN)
        yield Wire(ws, binary=request.param == "msgpack")


async def plain(wire: Wire, name: str) -> Any:
    """The tutorial's plain query: the name as a text frame, or as a MessagePack string."""
    await (wire.ws.send_data(msgpack.packb(name)) if wire.binary else wire.ws.send_text(name))
    return await wire.recv()


def plain_text_is_a_query(name: str) -> bool:
    """Whether a text frame holding ``name`` is a plain query (not a JSON object with a type)."""
    try:
        return isinstance(decode(name), str)
    except RequestError:
        return False


async def assert_untouched(repository: ReportRepository, *extra: str) -> None:
    """The tutorial's reports are all there, unchanged, and nothing else but ``extra``."""
    reports = {r.name: r for r in await repository.list_reports()}
    assert sorted(reports) == sorted([*TUTORIAL_NAMES, *extra])
    for original in TUTORIAL:
        report = reports[original.name]
        assert (report.title, report.content) == (original.title, original.content)
    assert await repository.authenticate(TOKEN) is not None
    assert await repository.authenticate(WRITE_TOKEN) is not None


def is_postgres(settings: Settings) -> bool:
    return settings.database_url.startswith("postgresql")


# -- what goes in comes back ------------------------------------------------------------------


async def settle(settings: Settings) -> None:
    """Nothing to wait for: a write is read back at once (test_a_write_is_read_back_at_once)."""


async def round_trip(wire: Wire, settings: Settings, text: str, version: int) -> None:
    """put, get, plain query, list, search, remove ``text`` as name and title; ``version``: the
    latest before."""
    content = f"before {text} after"
    put = await wire.call({"id": 1, "type": "put", "name": text, "title": text, "content": content})
    await settle(settings)
    stored = put["result"]
    assert (stored["name"], stored["title"], stored["content"]) == (text, text, content)
    assert stored["version"] == version + 1

    got = await wire.call({"id": 2, "type": "get", "name": text})
    assert got == {"id": 2, "result": stored}
    if wire.binary or plain_text_is_a_query(text):
        assert await plain(wire, text) == {"report": text}

    listed = (await wire.call({"id": 3, "type": "list", "limit": 100}))["result"]
    assert listed["reports"][0] == stored
    assert [r["name"] for r in listed["reports"][1:]] == TUTORIAL_NAMES[::-1]

    found = (await wire.call({"id": 4, "type": "search", "q": text, "limit": 100}))["result"]
    expected = [text] + [
        r.name
        for r in reversed(TUTORIAL)
        if text.lower() in r.title.lower() or text.lower() in r.content.lower()
    ]
    assert [r["name"] for r in found["reports"]] == expected
    assert found["reports"][0] == stored

    removed = await wire.call({"id": 5, "type": "remove", "name": text})
    assert removed == {"id": 5, "result": {"name": text, "version": version + 2}}
    await settle(settings)
    missing = await wire.call({"id": 6, "type": "get", "name": text})
    assert missing == {
        "id": 6,
        "error": {"code": "not_found", "message": f"no report named {text!r}"},
    }
    if wire.binary or plain_text_is_a_query(text):
        assert await plain(wire, text) == {"error": "report not found"}


@pytest.mark.parametrize("group", list(INJECTIONS))
async def test_round_trip_through_every_request(
    writer: Wire, settings: Settings, seeded_repository: ReportRepository, group: str
) -> None:
    version = len(TUTORIAL)
    for text in INJECTIONS[group]:
        try:
            await round_trip(writer, settings, text, version)
        except AssertionError as error:
            raise AssertionError(f"{text!r}: {error}") from error
        version += 2
    await assert_untouched(seeded_repository)


async def test_unknown_names_are_not_found(
    writer: Wire, seeded_repository: ReportRepository
) -> None:
    for text in [*ALL_INJECTIONS, "report1 ", "REPORT1", "report", "x" * 60_000]:
        if writer.binary or plain_text_is_a_query(text):
            assert await plain(writer, text) == {"error": "report not found"}, text
        if len(text) <= MAX_NAME_LENGTH:
            reply = await writer.call({"id": 1, "type": "get", "name": text})
            assert reply["error"]["code"] == "not_found", text
            reply = await writer.call({"id": 1, "type": "remove", "name": text})
            assert reply["error"]["code"] == "not_found", text
    assert await plain(writer, "report1") == {"report": "Report 1"}
    await assert_untouched(seeded_repository)


async def test_search_wildcards_match_literally(
    writer: Wire, seeded_repository: ReportRepository
) -> None:
    pairs = {
        "%": ("100% sure", "100 percent sure"),
        "_": ("snake_case", "snakeXcase"),
        "\\": ("back\\slash", "backslash"),
        "/": ("a/b", "ab"),
        "//": ("a//b", "a/b/"),
        "[a]": ("[a]", "a"),
        "'": ("it's", "its"),
        '"': ('say "hi"', "say hi"),
    }
    for n, (literal, decoy) in enumerate(pairs.values()):
        for kind, title in (("match", literal), ("decoy", decoy)):
            reply = await writer.call({"type": "put", "name": f"{kind}{n}", "title": title})
            assert reply["result"]["title"] == title
    for n, q in enumerate(pairs):
        found = (await writer.call({"type": "search", "q": q, "limit": 100}))["result"]
        matches = {r["name"] for r in found["reports"]}
        assert f"match{n}" in matches, q
        assert f"decoy{n}" not in matches, q
        assert all(q in r["title"] or q in r["content"] for r in found["reports"]), q
    await assert_untouched(
        seeded_repository, *(f"{kind}{n}" for n in range(len(pairs)) for kind in ("match", "decoy"))
    )


async def test_large_content_round_trips(writer: Wire) -> None:
    # NOTE: within the 64 KiB message limit, which the app enforces in process too.
    content = ("'; DROP TABLE reports; -- %_\\ 😀\n" * 1_000)[:20_000]
    put = await writer.call(
        {"id": 1, "type": "put", "name": "big", "title": "t", "content": content}
    )
    got = await writer.call({"id": 2, "type": "get", "name": "big"})
    assert put["result"]["content"] == got["result"]["content"] == content


# -- limits -----------------------------------------------------------------------------------

AT_THE_LIMIT = [
    "n" * MAX_NAME_LENGTH,
    "'" * MAX_NAME_LENGTH,
    "%" * MAX_NAME_LENGTH,
    "😀" * MAX_NAME_LENGTH,  # 200 characters, 800 bytes of UTF-8
    "e\u0301" * (MAX_NAME_LENGTH // 2),  # 200 code points, 100 graphemes
]


async def test_name_at_the_limit_is_stored(
    writer: Wire, seeded_repository: ReportRepository
) -> None:
    for name in AT_THE_LIMIT:
        title = name[:MAX_TITLE_LENGTH]
        put = await writer.call({"id": 1, "type": "put", "name": name, "title": title})
        assert put["result"]["name"] == name
        got = await writer.call({"id": 2, "type": "get", "name": name})
        assert got["result"] == put["result"]
        assert await plain(writer, name) == {"report": title}
    await assert_untouched(seeded_repository, *AT_THE_LIMIT)


# (request, the field in the error message, its limit)
OVER_THE_LIMIT: list[tuple[dict[str, Any], str, int]] = [
    ({"type": "put", "name": "n" * 201, "title": "t"}, "name", MAX_NAME_LENGTH),
    ({"type": "put", "name": "😀" * 201, "title": "t"}, "name", MAX_NAME_LENGTH),
    ({"type": "put", "name": "n", "title": "'" * 501}, "title", MAX_TITLE_LENGTH),
    ({"type": "get", "name": "'" * 201}, "name", MAX_NAME_LENGTH),
    ({"type": "remove", "name": "%" * 201}, "name", MAX_NAME_LENGTH),
    ({"type": "search", "q": "%" * 201}, "q", 200),
    ({"type": "search", "q": "😀" * 201}, "q", 200),
    ({"type": "search", "q": "x" * 60_000}, "q", 200),
    ({"type": "subscribe", "names": ["n" * 201]}, "names[0]", MAX_NAME_LENGTH),
]


async def test_over_the_limit_is_invalid_request(
    writer: Wire, seeded_repository: ReportRepository
) -> None:
    for n, (request, field, limit) in enumerate(OVER_THE_LIMIT):
        reply = await writer.call({"id": n, **request})
        assert reply == {
            "id": n,
            "error": {
                "code": "invalid_request",
                "message": f"Expected `str` of length <= {limit} - at `$.{field}`",
            },
        }
    await assert_untouched(seeded_repository)


async def test_search_at_the_limit_is_answered(writer: Wire) -> None:
    for q in ("%" * 200, "😀" * 200, "'" * 200):
        reply = await writer.call({"id": 1, "type": "search", "q": q})
        assert reply == {"id": 1, "result": {"reports": [], "next": None}}


# -- what cannot be stored --------------------------------------------------------------------


async def test_nul_is_refused_before_the_database(
    writer: Wire, seeded_repository: ReportRepository
) -> None:
    # NOTE: PostgreSQL cannot store NUL in text: it is refused on every backend, in one line.
    for field in ("name", "title", "content"):
        for value in ("\x00", "re\x00port", "report\x00", "'\x00; DROP TABLE reports; --"):
            request = {"type": "put", "name": "nul", "title": "t", "content": "c", field: value}
            reply = await writer.call({**request, "id": 1})
            assert reply == {
                "id": 1,
                "error": {"code": "invalid_request", "message": NUL_MESSAGE.format(field)},
            }, (field, value)
    await assert_untouched(seeded_repository)


async def test_nul_in_a_name_finds_nothing(
    writer: Wire, seeded_repository: ReportRepository
) -> None:
    for name in ("\x00", "report1\x00", "report1\x00' OR 1=1 --"):
        assert await plain(writer, name) == {"error": "report not found"}, name
        reply = await writer.call({"id": 1, "type": "get", "name": name})
        assert reply["id"] == 1
        assert reply["error"]["code"] in ("not_found", "invalid_request"), reply
    await assert_untouched(seeded_repository)


async def test_nul_in_a_removed_name_finds_nothing(
    request: pytest.FixtureRequest,
    settings: Settings,
    writer: Wire,
    seeded_repository: ReportRepository,
) -> None:
    for name in ("\x00", "report1\x00", "report1\x00' OR 1=1 --"):
        reply = await writer.call({"id": 1, "type": "remove", "name": name})
        assert reply["id"] == 1
        assert reply["error"]["code"] in ("not_found", "invalid_request"), reply
    await assert_untouched(seeded_repository)


async def test_nul_in_search_matches_nothing(
    writer: Wire, seeded_repository: ReportRepository
) -> None:
    # NOTE: SQLite's lower() and LIKE read text only up to a NUL: '\x00' would match every
    #   report, '1\x00zzz' report1.
    for q in ("\x00", "1\x00zzz", "Report 1\x00 and more"):
        reply = await writer.call({"id": 1, "type": "search", "q": q})
        assert reply["id"] == 1
        if "error" in reply:
            assert reply["error"]["code"] == "invalid_request", (q, reply)
        else:
            assert reply["result"] == {"reports": [], "next": None}, (q, reply)
    await assert_untouched(seeded_repository)


async def test_nul_in_subscribe_names_is_not_a_database_error(
    request: pytest.FixtureRequest,
    settings: Settings,
    conductor: ASGIConductor,
) -> None:
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text(TOKEN)
        wire = Wire(ws, binary=False)  # NOTE: JSON: subscription replies come as text anyway
        reply = await wire.call({"id": 1, "type": "subscribe", "names": ["a\x00b"], "since": 0})
        assert reply.get("result") == {
            "names": ["a\x00b"],
            "version": len(TUTORIAL),
            "epoch": EPOCH,
        } or (reply["error"]["code"] == "invalid_request"), reply


LONE_SURROGATES = [
    '{"type": "put", "id": 1, "name": "a\\ud800b", "title": "t"}',  # lone high surrogate
    '{"type": "put", "id": 1, "name": "lone", "title": "\\udc00"}',  # lone low surrogate
    '{"type": "put", "id": 1, "name": "swapped", "title": "\\ude00\\ud83d"}',
    '{"type": "get", "id": 1, "name": "\\ud800"}',
    '{"type": "search", "id": 1, "q": "\\ud800"}',
]


async def test_lone_surrogate_in_json_is_an_error(
    conductor: ASGIConductor, seeded_repository: ReportRepository
) -> None:
    # NOTE: msgspec refuses a lone surrogate escape as malformed JSON, and a text frame that is
    #   not a JSON object is the tutorial's plain query, for a report named like the whole frame:
    #   "report not found". A typed invalid_request would do as well.
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text(WRITE_TOKEN)
        for frame in LONE_SURROGATES:
            await ws.send_text(frame)
            reply = await ws.receive_json()
            assert reply == {"error": "report not found"} or (
                reply["id"] == 1 and reply["error"]["code"] == "invalid_request"
            ), (frame, reply)
    await assert_untouched(seeded_repository)


async def test_surrogate_in_msgpack_is_invalid_messagepack(
    conductor: ASGIConductor, seeded_repository: ReportRepository
) -> None:
    # A MessagePack str must be UTF-8; U+D800 encoded as if it were (CESU-8) is not.
    frame = (
        b"\x83"
        + b"".join(msgpack.packb(part) for part in ("type", "put", "title", "t", "name"))
        + b"\xa3\xed\xa0\x80"
    )
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text(WRITE_TOKEN)
        await ws.send_data(frame)
        reply = msgpack.unpackb(await ws.receive_data())
    assert reply == {"error": "invalid MessagePack"}
    await assert_untouched(seeded_repository)


# -- any name within the limits ---------------------------------------------------------------

# NOTE: no surrogates (not valid UTF-8 on the wire) and no NUL (refused, see above); names
#   have no leading or trailing whitespace (refused, test_protocol.py).
text = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
report_names = st.text(text, min_size=1, max_size=MAX_NAME_LENGTH).filter(
    lambda s: s == s.strip() and s != ""
)


@hypothesis.settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=report_names,
    title=st.text(text, max_size=MAX_TITLE_LENGTH),
    content=st.text(text, max_size=2_000),
    binary=st.booleans(),
)
async def test_any_name_round_trips(
    conductor: ASGIConductor,
    settings: Settings,
    name: str,
    title: str,
    content: str,
    binary: bool,
) -> None:
    async with conductor.simulate_ws("/reports") as ws:
        await ws.send_text(WRITE_TOKEN)
        wire = Wire(ws, binary)
        put = await wire.call(
            {"id": 1, "type": "put", "name": name, "title": title, "content": content}
        )
        assert (put["result"]["name"], put["result"]["title"]) == (name, title)
        assert put["result"]["content"] == content
        await settle(settings)
        got = await wire.call({"id": 2, "type": "get", "name": name})
        assert got == {"id": 2, "result": put["result"]}
        if binary or plain_text_is_a_query(name):
            assert await plain(wire, name) == {"report": title}


# -- found on the way -------------------------------------------------------------------------

NOTIFY_LATENCY = 0.2  # seconds; PostgreSQL delivers NOTIFY asynchronously, with no bound


def late_notify(landed: set[str]) -> Callable[..., None]:
    """PostgresWatcher._on_notify, NOTIFY_LATENCY late; adds each version to ``landed``."""

    def on_notify(self: PostgresWatcher, *args: object) -> None:
        def land() -> None:
            self._notified = True
            landed.add(str(args[-1]))

        asyncio.get_running_loop().call_later(NOTIFY_LATENCY, land)

    return on_notify


async def test_a_write_is_read_back_at_once(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    seeded_repository: ReportRepository,
) -> None:
    # NOTE: a slow notification, as under load; SQLite's watcher is not affected.
    landed: set[str] = set()
    monkeypatch.setattr(PostgresWatcher, "_on_notify", late_notify(landed))

    async def notification_landed(version: int) -> None:
        if is_postgres(settings):
            await eventually(lambda: str(version) in landed)

    app = create_app(settings)
    # NOTE: nothing raises inside the conductor: it would skip the app's shutdown.
    async with ASGIConductor(app) as conductor, conductor.simulate_ws("/reports") as ws:
        await ws.send_text(WRITE_TOKEN)
        wire = Wire(ws, binary=False)
        put = await wire.call({"type": "put", "name": "cached", "title": "v1"})
        await notification_landed(put["result"]["version"])
        settled = await wire.call({"type": "get", "name": "cached"})  # now cached
        removed = await wire.call({"type": "remove", "name": "cached"})
        after_remove = await wire.call({"id": 1, "type": "get", "name": "cached"})
        await notification_landed(removed["result"]["version"])
        await wire.call({"type": "get", "name": "cached"})  # not found, cached as such
        await wire.call({"type": "put", "name": "cached", "title": "v2"})
        after_put = await wire.call({"id": 2, "type": "get", "name": "cached"})
    assert settled["result"]["title"] == "v1"
    seen = (after_remove.get("error", {}).get("code"), after_put.get("result", {}).get("title"))
    assert seen == ("not_found", "v2"), (after_remove, after_put)
