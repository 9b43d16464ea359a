"""Bad payloads on /reports: arbitrary frames as the first message and after the token; bad
requests to the HTTP API.

Hypothesis throws frames at the app in process (ASGIConductor, on a real migrated database):
arbitrary text and bytes, MessagePack of arbitrary values, JSON and MessagePack objects with a
``type`` (real ones and garbage) and random fields, values at every bound (digit strings and
JSON numbers of 19, 20, 4,300, 4,301 and 5,000 digits, integers at and around +-2**63 and
2**64, floats, strings one under, at and one over each field's length), deeply nested
structures, and big ones just within the message limit. The properties:

- as the FIRST message, a frame that is not an access token closes the connection with 1008,
  reason "invalid token" (the real token is accepted): never 1011, never another code;
- AFTER the token, every frame gets exactly one reply, in the frame's format (text: a JSON
  object, binary: a MessagePack map), that is ``{"report": str}``, ``{"error": str}``,
  ``{"id", "result"}`` or ``{"id", "error": {"code": <a documented ErrorCode>, "message"}}``;
  its ``id`` is the request's; no internal detail leaks into it; the connection stays open (a
  ping after every frame is answered). Events pushed to a fuzzed ``subscribe`` may arrive
  between replies and are checked too;
- the same on a connection over its rate limit: every frame gets one ``rate_limited`` reply.
- HTTP API requests with query parameters, conditional headers, ``Last-Event-ID``,
  ``Authorization`` and bodies at their bounds get a status below 500, errors as problem details;
- every field of every request type (read from protocol.REQUEST_TYPES), and every HTTP parameter
  and header, is also sent at each bound once per run, not left to chance;
- nothing logs an error or a traceback meanwhile (the service's loggers, Falcon's, uvicorn's,
  asyncio's), and no reply is the last resort's ``internal``;
- JWT-shaped garbage given to the JWT verifier (random header and payload JSON, base64url
  encoded, random or real signatures over garbage claims) is refused with InvalidToken
  (KeysUnavailable too, for a JWKS URL), or makes a well-formed grant: never another error.

One app per backend serves every example: hypothesis calls a sync test, which runs its coroutine
on one module-wide ``asyncio.Runner`` (a fresh app per example would spend most of the time
starting and stopping it). The fuzz runs in full on SQLite and with a third of the examples on
PostgreSQL: the protocol layer is the same, only database errors differ.

Invalid UTF-8 cannot be sent in process (the simulator takes a ``str``): the end-to-end test at
the bottom sends it over a raw socket to a real server and expects 1007.

The bugs this fuzz found (deep nesting, odd cursors, reply formats, a full replay) each have a
test of their own below.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import pathlib
import re
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar, get_args

import falcon
import hypothesis
import msgpack
import msgspec
import pytest
from falcon.testing import ASGIConductor, ASGIWebSocketSimulator
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from jwt.algorithms import get_default_algorithms

from reports_service.access import Grant, InvalidToken, KeysUnavailable
from reports_service.app import create_app
from reports_service.config import Settings
from reports_service.jwt_keys import JWTVerifier, verifier_for
from reports_service.protocol import KNOWN_TYPES, REQUEST_TYPES, ErrorCode
from reports_service.records import NewReport
from reports_service.repository import ReportRepository, repository_for

from .conftest import TOKEN, TUTORIAL, WRITE_TOKEN
from .databases import PostgresTemplate, SQLiteTemplate, backends
from .jwts import SECRET, JWKSServer, b64, ec_key, ed25519_key, public_jwk, rsa_key, write_jwks
from .rawws import INVALID_DATA, RawWebSocket, raw_connection, read_response_head, request_bytes
from .rawws import TEXT as TEXT_OPCODE
from .server import Server
from .wire import EPOCH

T = TypeVar("T")

POLICY_VIOLATION = 1008
ERROR_CODES = frozenset(get_args(ErrorCode))
REPLY_TIMEOUT = 5.0  # seconds a reply may take before the frame counts as unanswered
MAX_MESSAGE = 65536  # REPORTS_MAX_MESSAGE_BYTES default: every frame stays within it
REPORT_NAMES = [r.name for r in TUTORIAL]

# the `result` of each successful reply, by its keys
REPORT_KEYS = frozenset({"name", "title", "content", "created_at", "updated_at", "version"})
SUBSCRIPTION_KEYS = frozenset({"names", "version", "epoch"})
RESULT_SHAPES = frozenset(
    {
        REPORT_KEYS,  # get, put
        frozenset({"reports", "next"}),  # list, search
        SUBSCRIPTION_KEYS,  # subscribe, unsubscribe
        frozenset({"pong", "version", "epoch"}),  # ping
        frozenset({"name", "version"}),  # remove
        frozenset({"subject", "expires_at", "read", "write", "reports"}),  # auth
    }
)
EVENT_TYPES = frozenset({"report.added", "report.updated", "report.removed"})

# What an internal failure would leak into a reply: a traceback, an exception class name, a
# driver, library or SQL. Flagged only when the frame does not hold the same text (error
# messages quote the offending field or value).
LEAK = re.compile(
    r"Traceback|File \"|\b[A-Za-z_]*(?:Error|Exception)\b|sqlalchemy|asyncpg|aiosqlite"
    r"|sqlite3|psycopg|msgspec|msgpack\.|\bSELECT\b|\bINSERT\b|\bUPDATE\b|\bDELETE\b"
)

HYPOTHESIS = hypothesis.settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# NOTE: a falsifying example of several big frames has a long repr; hypothesis warns about it,
#   which would replace the report of the failure under `-W error`.
quiet_big_examples = pytest.mark.filterwarnings(
    "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"
)


# -- the apps under test, one database per backend --------------------------------------------

# NOTE: where a traceback would show: the service's loggers, Falcon's, uvicorn's, asyncio's.
WATCHED_LOGGERS = ("", "reports_service", "falcon", "uvicorn.error", "asyncio")


class FailureLog(logging.Handler):
    """Every log record of an error or with a traceback, from any watched logger."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.found.append(logging.Formatter().format(record))

    def check(self) -> None:
        """Nothing logged an error or a traceback since the last check."""
        found, self.found = self.found, []
        assert not found, "logged:\n" + "\n".join(found)[:3000]


@contextlib.contextmanager
def watching_the_log() -> Iterator[FailureLog]:
    handler = FailureLog()
    loggers = [logging.getLogger(name) for name in WATCHED_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@dataclasses.dataclass
class Target:
    """The apps of one backend, served in process, and the event loop they run on.

    ``conductor`` has no rate limit; ``throttled`` answers one message, then refuses every
    other for rate. Neither refuses an address for failed logins: the fuzz fails thousands.
    """

    backend: str
    runner: asyncio.Runner
    conductor: ASGIConductor
    throttled: ASGIConductor
    log: FailureLog

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the apps' loop; it fails if anything logged an error meanwhile."""
        result = self.runner.run(coro)
        self.log.check()
        return result

    def examples(self, count: int) -> int:
        """``count`` on SQLite, a third of it on PostgreSQL."""
        return count if self.backend == "sqlite" else max(10, count // 3)


async def _seed(config: Settings) -> None:
    repository = repository_for(config)
    try:
        await repository.add_reports(TUTORIAL)
        await repository.create_token(name="test", token=TOKEN)
        await repository.create_token(name="writer", token=WRITE_TOKEN, can_write=True)
    finally:
        await repository.dispose()


@pytest.fixture(scope="module", params=backends())
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """One migrated, seeded database, and apps on it, for every fuzz example of a backend."""
    postgres: PostgresTemplate | None = None
    if request.param == "sqlite":
        template: SQLiteTemplate = request.getfixturevalue("sqlite_template")
        url = template.new_database(tmp_path_factory.mktemp("fuzz"))
    else:
        postgres = request.getfixturevalue("postgres_template")
        url = postgres.new_database()
    # NOTE: a short changelog keeps short the replays that a fuzzed `subscribe` with `since`
    #   asks for, however many writes the fuzz made before.
    config = Settings(
        database_url=url,
        auth_timeout=5.0,
        auth_failures=0,
        changelog_retention=50,
        rate_limit=0,
        max_message_bytes=MAX_MESSAGE,
    )
    slow = dataclasses.replace(config, rate_limit=1e-6, rate_burst=1, rate_strikes=10**9)
    try:
        with (
            asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner,
            watching_the_log() as log,
        ):
            runner.run(_seed(config))
            conductors = [ASGIConductor(create_app(config)), ASGIConductor(create_app(slow))]
            for conductor in conductors:
                runner.run(conductor.__aenter__())
            try:
                yield Target(request.param, runner, conductors[0], conductors[1], log)
            finally:
                for conductor in conductors:
                    runner.run(conductor.__aexit__(None, None, None))
    finally:
        if postgres is not None:
            postgres.drop(url)


def connect(conductor: ASGIConductor) -> AbstractAsyncContextManager[ASGIWebSocketSimulator]:
    # NOTE: ASGI spec 2.3+ carries the close reason; the simulator's default (2.1) drops it.
    return conductor.simulate_ws("/reports", spec_version="2.4")


# -- strategies -------------------------------------------------------------------------------

# NOTE: st.text() draws no surrogates: a real server cannot deliver one (it is not valid
#   UTF-8, see the 1007 test), only the in-process simulator could.
MSGPACK_INT = st.integers(min_value=-(2**63), max_value=2**64 - 1)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond 64 bits too: JSON has no limit
    st.floats(),  # NaN and infinities make invalid JSON: a plain query then
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
msgpack_scalars = st.one_of(
    st.none(),
    st.booleans(),
    MSGPACK_INT,
    st.floats(),
    st.text(max_size=30),
    st.binary(max_size=30),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=10)),
    st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999)),
)
msgpack_keys = st.one_of(
    st.text(max_size=10),
    st.binary(max_size=5),  # a map key the server takes (strict_map_key allows bytes)
    MSGPACK_INT,  # a map key the server refuses: invalid MessagePack
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(msgpack_keys, inner, max_size=5),
    max_leaves=20,
)


def size(frame: str | bytes) -> int:
    return len(frame) if isinstance(frame, bytes) else len(frame.encode())


def repeated(char: str, most: int) -> st.SearchStrategy[str]:
    """``char`` repeated: 2000 to ``most`` bytes of UTF-8."""
    width = len(char.encode())
    return st.integers(2_000 // width, most // width).map(lambda n: char * n)


BIG_CHARS = "x%_'é€😀\x00"
big_field = st.sampled_from(BIG_CHARS).flatmap(lambda c: repeated(c, 12_000))
big_text = st.sampled_from(BIG_CHARS).flatmap(lambda c: repeated(c, MAX_MESSAGE))


def fitted(build: Callable[[str], str | bytes]) -> Callable[[str], str | bytes]:
    """``build`` given less and less of its text until the frame is within the limit."""

    def fit(text: str) -> str | bytes:
        while size(frame := build(text)) > MAX_MESSAGE:
            text = text[: len(text) * 9 // 10]
        return frame

    return fit


ids = st.one_of(
    st.integers(), st.text(max_size=10), json_scalars, st.lists(st.integers(), max_size=2)
)
names = st.one_of(
    st.sampled_from([*REPORT_NAMES, "nope", "", " report1", "report1 "]),
    st.text(max_size=20),
    st.text(min_size=195, max_size=205),  # around the 200-character limit
    big_field,
    json_values,
)
cursors = st.one_of(
    st.integers(0, 2**63 - 1).map(str),
    st.integers(10**19, 10**30).map(str),  # 20 digits and more: too long
    st.from_regex(r"\A[0-9]{0,5}\Z"),
    st.text(max_size=5),
    json_values,
)

# -- values at every bound --------------------------------------------------------------------

INT64 = 2**63
# NOTE: a version has at most 19 digits; Python's int() refuses more than 4,300 (ValueError).
DIGIT_COUNTS = [1, 18, 19, 20, 4299, 4300, 4301, 5000]
digit_strings = st.builds(
    lambda count, digit, sign: sign + digit * count,
    st.sampled_from(DIGIT_COUNTS),
    st.sampled_from("0159"),
    st.sampled_from(["", "", "-", "+", " "]),
)
BOUND_INTS = [n + d for n in (INT64, -INT64, 2**64) for d in (-1, 0, 1)] + [-1, 0, 1, 100, 101]
BOUND_FLOATS = [0.0, -0.0, 0.5, 1.0, 100.0, 101.0, 1e19, 2.0**63, 2.0**64, 1e308, -1e308, 5e-324]
bound_ints = st.sampled_from(BOUND_INTS)
bound_floats = st.sampled_from(BOUND_FLOATS)
# the most each bounded field may hold (protocol.py), and one less and one more
LENGTHS = {"id": 200, "name": 200, "title": 500, "q": 200, "token": 8192, "cursor": 19}


def around(most: int) -> st.SearchStrategy[str]:
    """Strings of ``most - 1``, ``most`` and ``most + 1`` characters (one or more bytes each)."""
    return st.builds(
        lambda char, count: char * count,
        st.sampled_from(BIG_CHARS + "9"),
        st.sampled_from([most - 1, most, most + 1]),
    )


def at_bounds(field: str) -> st.SearchStrategy[Any]:
    """Values at a bound of ``field``, or of any number or string a server converts."""
    found: list[st.SearchStrategy[Any]] = [digit_strings, bound_ints, bound_floats]
    if field in LENGTHS:
        found.append(around(LENGTHS[field]))
    if field == "names":
        found.append(st.sampled_from([999, 1000, 1001]).map(lambda n: [f"n{i}" for i in range(n)]))
    return st.one_of(found)


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": ids,
    "name": names,
    "title": st.one_of(
        st.text(max_size=20), st.text(min_size=495, max_size=505), big_field, json_values
    ),
    "content": st.one_of(st.text(max_size=50), big_field, json_values),
    "limit": st.one_of(st.integers(-2, 105), st.integers(), json_values),
    "cursor": cursors,
    "q": st.one_of(st.text(max_size=10), st.sampled_from(["%", "_", "report", "Report 1"]), names),
    "names": st.one_of(
        st.lists(names, max_size=5), st.lists(st.sampled_from(REPORT_NAMES)), json_values
    ),
    "since": st.one_of(st.integers(-2, 10), st.integers(), json_values),
    "if_version": st.one_of(st.integers(-2, 10), st.integers(), json_values),
    "token": st.one_of(st.sampled_from([TOKEN, WRITE_TOKEN]), st.text(max_size=20), json_values),
}
FIELDS = {field: st.one_of(values, at_bounds(field)) for field, values in FIELDS.items()}
type_values = st.one_of(
    st.sampled_from(sorted(KNOWN_TYPES)),
    st.sampled_from(sorted(KNOWN_TYPES)).map(str.upper),
    st.text(max_size=12),
    json_values,
)


report_names = st.one_of(
    st.sampled_from([*REPORT_NAMES, "fuzzed", "nope"]),
    st.text(min_size=1, max_size=200),
)
# a valid value for each field of each type, the required ones first
VALID: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "get": {"name": report_names},
    "list": {"limit": st.integers(1, 100), "cursor": st.integers(0, 60).map(str)},
    "search": {
        "q": st.sampled_from(["%", "_", "report", "Report 1", "\\"]) | st.text(min_size=1),
        "limit": st.integers(1, 100),
        "cursor": st.integers(0, 60).map(str),
    },
    "subscribe": {
        "names": st.lists(report_names, max_size=5) | st.none(),
        "since": st.integers(0, 60) | st.none(),
    },
    "unsubscribe": {"names": st.lists(report_names, max_size=5) | st.none()},
    "ping": {},
    "put": {
        "name": report_names,
        "title": st.text(max_size=500),
        "content": st.text(max_size=2_000) | big_field,
    },
    "remove": {"name": report_names},
}
REQUIRED = {"get": 1, "search": 1, "put": 2, "remove": 1}


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request of a real type with valid fields: required ones, and some optional ones."""
    kind = draw(st.sampled_from(sorted(VALID)))
    fields = list(VALID[kind])
    required = REQUIRED.get(kind, 0)
    chosen = fields[:required] + [f for f in fields[required:] if draw(st.booleans())]
    request: dict[str, Any] = {"type": kind, **{f: draw(VALID[kind][f]) for f in chosen}}
    if draw(st.booleans()):
        request["id"] = draw(st.integers() | st.text(max_size=10))
    return request


@st.composite
def typed_requests(draw: st.DrawFn) -> dict[Any, Any]:
    """An object with a ``type``: a valid request, or one with fields of any value, or extras."""
    if draw(st.booleans()):
        request: dict[Any, Any] = draw(valid_requests())
        if draw(st.integers(0, 2)):
            return request
    else:
        request = {"type": draw(type_values)}
    for field in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=4, unique=True)):
        request[field] = draw(FIELDS[field])
    if draw(st.integers(0, 4)) == 0:
        request.update(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=3)))
    return request


@st.composite
def long_numbers(draw: st.DrawFn) -> str:
    """A request with a field set to a JSON number of many digits (json.dumps refuses them)."""
    request = json.dumps(draw(typed_requests()))
    field = draw(st.sampled_from(sorted(FIELDS)))
    digits = draw(st.sampled_from("159")) * draw(st.sampled_from(DIGIT_COUNTS))
    number = draw(st.sampled_from(["", "-"])) + digits + draw(st.sampled_from(["", ".5", "e3"]))
    frame = f"{request[:-1]}, {json.dumps(field)}: {number}}}"
    hypothesis.assume(size(frame) <= MAX_MESSAGE)
    return frame


@st.composite
def encoded(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> str | bytes:
    """A value as JSON text or as MessagePack, whichever can carry it within the limit."""
    value = draw(values)
    found: list[str | bytes] = []
    with contextlib.suppress(OverflowError, TypeError, ValueError):  # ints over 64 bits
        found.append(msgpack.packb(value))
    with contextlib.suppress(TypeError, ValueError):  # bytes, MessagePack extension types
        found.append(json.dumps(value, ensure_ascii=draw(st.booleans())))
    fits = [frame for frame in found if size(frame) <= MAX_MESSAGE]
    hypothesis.assume(fits)
    return draw(st.sampled_from(fits))


def packed(value: Any) -> bytes:
    return msgpack.packb(value)


def nested(
    open_: str, close: str, inner: str = "null", *, most: int = 10_000
) -> st.SearchStrategy[str]:
    return st.integers(1, most).map(lambda n: open_ * n + inner + close * n)


def msgpack_nested(
    level: bytes, inner: bytes = b"\xc0", *, most: int = 2_000
) -> st.SearchStrategy[bytes]:
    # NOTE: msgpack refuses more than 1024 levels (StackError): "invalid MessagePack".
    return st.integers(1, most).map(lambda n: level * n + inner)


TYPED_GET_NAME = b"\x82" + packed("type") + packed("get") + packed("name")
# deeply nested, as JSON text and as MessagePack
deep_frames: st.SearchStrategy[str | bytes] = st.one_of(
    nested("[", "]"),  # not an object: a plain query
    nested(" [", "] "),
    # NOTE: a JSON object nested deeper than ~500 levels is a known bug (deep_json_request).
    nested('{"a":', "}", most=300),  # an object with no type: a plain query
    nested('{"type":"get","name":[', "]}", most=300),
    nested('{"type":', "}", most=300),
    msgpack_nested(b"\x91"),  # [[[...]]]
    msgpack_nested(b"\x81" + packed("a")),  # {"a": {"a": ...}}
    msgpack_nested(b"\x91", packed("report1")),
    msgpack_nested(b"\x91", b"\xc0" * 3),  # trailing bytes after the value
    msgpack_nested(b"\x91", b""),  # truncated
    msgpack_nested(b"\x91").map(lambda body: TYPED_GET_NAME + body),  # {"type":"get","name":[[
    # NOTE: a MessagePack `type` nested deeper than ~950 levels is a known bug (deep_type).
    msgpack_nested(b"\x91", most=500).map(lambda body: b"\x81" + packed("type") + body),
)
# big, but within the message limit
big_frames: st.SearchStrategy[str | bytes] = st.one_of(
    big_text,
    big_text.map(fitted(lambda s: json.dumps({"type": "get", "id": 1, "name": s}))),
    big_text.map(fitted(lambda s: json.dumps({"type": "search", "q": s}, ensure_ascii=False))),
    big_text.map(
        fitted(lambda s: json.dumps({"type": "put", "name": "big", "title": "t", "content": s}))
    ),
    big_text.map(fitted(packed)),
    big_text.map(fitted(lambda s: packed({"type": "get", "name": s}))),
    st.integers(1, 6_000).map(lambda n: packed(list(range(n)))),
    st.integers(1, 3_000).map(
        lambda n: json.dumps({"type": "ping", **{f"k{i}": i for i in range(n)}})
    ),
    st.integers(1, 2_000).map(lambda n: json.dumps({"type": "subscribe", "names": ["r"] * n})),
    st.integers(1, 1_200).map(
        lambda n: packed({"type": "unsubscribe", "names": [f"n{i}" for i in range(n)]})
    ),
    st.binary(min_size=10_000, max_size=MAX_MESSAGE),
)
garbage: st.SearchStrategy[str | bytes] = st.one_of(
    st.text(),
    st.text().map(lambda s: "{" + s),  # through the JSON decoder
    st.binary(),
    st.binary().map(lambda b: b"\x81" + b),  # a MessagePack map header, then anything
    encoded(json_values),
    st.builds(packed, msgpack_values),
)
frames: st.SearchStrategy[str | bytes] = st.one_of(
    garbage,
    encoded(typed_requests()),
    encoded(valid_requests()),
    encoded(typed_requests()),
    encoded(valid_requests()),
    long_numbers(),
    deep_frames | big_frames,
)


# -- what the server decodes -----------------------------------------------------------------


def server_value(frame: str | bytes) -> Any:
    """What the server decodes a frame to: a JSON object (text starting with "{"), a MessagePack
    value; None when it does not."""
    try:
        if isinstance(frame, str):
            return msgspec.json.decode(frame) if frame.startswith("{") else None
        return msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception:  # NOTE: RecursionError included: nesting deeper than the decoders go
        return None


# -- checking what comes back -----------------------------------------------------------------


class Closed(AssertionError):
    """The app closed the connection."""


def closed(ws: ASGIWebSocketSimulator) -> Closed:
    return Closed(f"closed with {ws.close_code} {ws.close_reason!r}")


async def receive(ws: ASGIWebSocketSimulator) -> tuple[bool, Any]:
    """(binary, decoded value) of the next message, in either format."""
    try:
        # NOTE: the simulator's public receive_* raise on the wrong type after taking the
        #   message: _receive() is the one call that takes either.
        event = await asyncio.wait_for(ws._receive(), REPLY_TIMEOUT)
    except falcon.WebSocketDisconnected:
        raise closed(ws) from None
    except TimeoutError:
        raise AssertionError(f"no message within {REPLY_TIMEOUT}s") from None
    if event.get("bytes") is not None:
        data: bytes = event["bytes"]
        return True, msgpack.unpackb(data, raw=False)
    text: str = event["text"]
    return False, json.loads(text)


async def send(ws: ASGIWebSocketSimulator, frame: str | bytes) -> None:
    try:
        if isinstance(frame, str):
            await ws.send_text(frame)
        else:
            await ws.send_data(frame)
    except falcon.WebSocketDisconnected:
        raise closed(ws) from None


def expected_id(frame: str | bytes) -> Any:
    """The ``id`` a typed reply to ``frame`` must carry: the request's, if it is a valid one."""
    value = server_value(frame)
    found = value.get("id") if isinstance(value, dict) else None
    if isinstance(found, str):
        return found if len(found) <= LENGTHS["id"] else None
    if isinstance(found, int) and not isinstance(found, bool):
        return found if -INT64 <= found < INT64 else None
    return None


def check_no_leak(reply: Any, frame: str | bytes) -> None:
    shown = repr(reply)
    sent = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
    with contextlib.suppress(RecursionError):  # NOTE: frames nested deeper than repr goes
        sent += repr(server_value(frame))
    for match in LEAK.finditer(shown):
        assert match.group() in sent, f"internal detail {match.group()!r} in reply {shown[:300]}"


def is_event(message: Any) -> bool:
    return isinstance(message, dict) and "type" in message and "id" not in message


def check_event(event: dict[str, Any]) -> None:
    if event["type"] == "resync":
        assert set(event) == {"type", "version"} and isinstance(event["version"], int), event
        return
    assert event["type"] in EVENT_TYPES, event
    assert set(event) == {"type", "report", "version"}, event
    assert frozenset(event["report"]) == REPORT_KEYS, event


def check_retry_after(value: Any) -> None:
    assert isinstance(value, int | float) and not isinstance(value, bool) and value >= 0, value


def check_reply(binary: bool, reply: Any, frame: str | bytes) -> None:
    """One reply to ``frame``: its format, its shape, its id, and nothing internal in it."""
    assert isinstance(reply, dict), f"reply is not an object: {reply!r}"
    keys = set(reply)
    assert binary == isinstance(frame, bytes), f"reply in the wrong format: {reply!r}"
    if keys == {"report"}:
        assert isinstance(reply["report"], str)
    elif keys <= {"error", "retry_after"} and "error" in keys:
        assert isinstance(reply["error"], str) and reply["error"], reply
        if "retry_after" in keys:
            assert reply["error"] == "rate limited", reply
            check_retry_after(reply["retry_after"])
    elif keys == {"id", "result"}:
        assert reply["id"] == expected_id(frame), reply
        assert isinstance(reply["result"], dict), reply
        assert frozenset(reply["result"]) in RESULT_SHAPES, reply
    elif keys == {"id", "error"}:
        assert reply["id"] == expected_id(frame), reply
        error = reply["error"]
        assert isinstance(error, dict), reply
        assert {"code", "message"} <= set(error) <= {"code", "message", "retry_after"}, reply
        assert error["code"] in ERROR_CODES, reply
        assert error["code"] != "internal", f"the server failed to answer: {reply!r}"
        assert isinstance(error["message"], str) and error["message"], reply
        if "retry_after" in error:
            assert error["code"] == "rate_limited", reply
            check_retry_after(error["retry_after"])
    else:
        raise AssertionError(f"unexpected reply {reply!r}")
    check_no_leak(reply, frame)


def is_rate_limited(reply: Any) -> bool:
    if not isinstance(reply, dict):
        return False
    error = reply.get("error")
    if isinstance(error, dict):
        return error.get("code") == "rate_limited"
    return error == "rate limited" and "retry_after" in reply


async def exchange(
    ws: ASGIWebSocketSimulator, frame: str | bytes, probe: str, *, throttled: bool = False
) -> None:
    """Send ``frame``, then a ping; expect one reply to the frame, and the ping answered."""
    await send(ws, frame)
    await send(ws, json.dumps({"type": "ping", "id": probe}))
    replies: list[tuple[bool, Any]] = []
    answered = False
    # NOTE: subscribe replies go through the connection's outbox, direct replies do not: the
    #   ping's answer may come first.
    while not (answered and replies):
        binary, message = await receive(ws)
        if is_event(message):
            check_event(message)
        elif isinstance(message, dict) and message.get("id") == probe and not binary:
            if throttled:
                assert is_rate_limited(message), message
            else:
                assert message["result"]["pong"] is True, message
            answered = True
        else:
            replies.append((binary, message))
    assert len(replies) == 1, f"{len(replies)} replies: {replies!r}"
    check_reply(*replies[0], frame)
    if throttled:
        assert is_rate_limited(replies[0][1]), replies[0][1]


def describe(frame: str | bytes) -> str:
    shown = repr(frame[:200])
    return shown + (f"... ({len(frame)} long)" if len(frame) > 200 else "")


# -- the properties ---------------------------------------------------------------------------

first_frames: st.SearchStrategy[str | bytes] = st.one_of(
    frames,
    st.sampled_from([TOKEN, WRITE_TOKEN, TOKEN + " ", " " + TOKEN, TOKEN.upper(), TOKEN[:-1]]),
    st.sampled_from([TOKEN, WRITE_TOKEN, TOKEN + "\x00"]).map(packed),
    st.just(json.dumps(TOKEN)),
    st.just(json.dumps({"token": TOKEN})),
)


def is_token(frame: str | bytes) -> bool:
    token = frame if isinstance(frame, str) else server_value(frame)
    return token in (TOKEN, WRITE_TOKEN)


@quiet_big_examples
def test_any_first_message_is_a_token_or_closes_1008(target: Target) -> None:
    async def first(frame: str | bytes) -> None:
        async with connect(target.conductor) as ws:
            await send(ws, frame)
            try:
                await send(ws, json.dumps({"type": "ping", "id": "after-token"}))
                binary, reply = await receive(ws)
            except Closed:
                assert not is_token(frame), f"the token {frame!r} was refused"
                assert (ws.close_code, ws.close_reason) == (POLICY_VIOLATION, "invalid token")
                return
            assert is_token(frame), f"{describe(frame)} was taken for a token"
            assert not binary and reply["id"] == "after-token", reply

    @hypothesis.settings(HYPOTHESIS, max_examples=target.examples(1000))
    @given(frame=first_frames)
    def first_message(frame: str | bytes) -> None:
        target.run(first(frame))

    first_message()


async def _session(
    conductor: ASGIConductor, token: str, sent: list[str | bytes], *, throttled: bool = False
) -> None:
    async with connect(conductor) as ws:
        await send(ws, token if len(sent) % 2 else packed(token))
        if throttled:  # spend the one message the rate allows
            await send(ws, json.dumps({"type": "ping", "id": 0}))
            assert (await receive(ws))[1]["id"] == 0
        for n, frame in enumerate(sent):
            try:
                await exchange(ws, frame, probe=f"\x1fprobe-{n}", throttled=throttled)
            except AssertionError as error:
                raise AssertionError(f"after {describe(frame)}: {error}") from error


@quiet_big_examples
@pytest.mark.parametrize("token", [TOKEN, WRITE_TOKEN], ids=["read", "write"])
def test_any_later_message_gets_one_well_formed_reply(target: Target, token: str) -> None:
    @hypothesis.settings(HYPOTHESIS, max_examples=target.examples(300 if token == TOKEN else 200))
    @given(sent=st.lists(frames, min_size=1, max_size=12))
    def later_messages(sent: list[str | bytes]) -> None:
        target.run(_session(target.conductor, token, sent))

    later_messages()


@quiet_big_examples
def test_any_message_over_the_rate_gets_one_rate_limited_reply(target: Target) -> None:
    @hypothesis.settings(HYPOTHESIS, max_examples=target.examples(100))
    @given(sent=st.lists(frames, min_size=1, max_size=12))
    def over_the_rate(sent: list[str | bytes]) -> None:
        target.run(_session(target.throttled, WRITE_TOKEN, sent, throttled=True))

    over_the_rate()


# -- the HTTP API -----------------------------------------------------------------------------

ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)  # what a header may carry
http_scalars = st.one_of(digit_strings, bound_ints.map(str), bound_floats.map(str))
http_values = st.one_of(
    http_scalars,
    st.text(max_size=20),
    st.sampled_from(["", "0", "-1", "100", "101", "2", "report", "%", "*", "report1,report2"]),
    st.sampled_from(sorted(LENGTHS.values())).flatmap(around),
)
header_values = st.one_of(
    http_scalars,
    http_scalars.map(lambda v: f'"{v}"'),
    http_scalars.map(lambda v: f'W/"{v}"'),
    st.text(ASCII, max_size=30),
    st.sampled_from(["*", '"1"', '"1", "2"', '""', '"', "W/", ", "]),
)
path_names = st.one_of(
    st.sampled_from([*REPORT_NAMES, "fuzzed"]),
    digit_strings.map(lambda v: v.strip(" +")),
    st.sampled_from([199, 200, 201, 5000]).map(lambda n: "x" * n),
    st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=20),
)
authorizations = st.one_of(
    st.just(f"Bearer {WRITE_TOKEN}"),
    st.just(f"Bearer {TOKEN}"),
    st.sampled_from([8191, 8192, 8193]).map(lambda n: "Bearer " + "9" * n),
    st.text(ASCII, max_size=30),
)


@dataclasses.dataclass
class HttpRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes | None = None

    def __repr__(self) -> str:
        shown = f"{self.method} {self.path[:200]} {self.query!r:.300} {self.headers!r:.300}"
        return shown + (f" {self.body[:200]!r}" if self.body is not None else "")


def params(*names: str) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Query parameters: the route's own names (some repeated) and unknown ones, at bounds."""
    name = st.one_of(st.sampled_from(names), st.text(max_size=8))
    return st.lists(st.tuples(name, http_values), max_size=4)


@st.composite
def http_requests(draw: st.DrawFn) -> HttpRequest:
    """A request to the HTTP API: any route, query parameters, conditional headers and body."""
    headers = {"Authorization": draw(mostly_valid(authorizations))}
    for header in ("If-Match", "If-None-Match", "Last-Event-ID"):
        if draw(st.booleans()):
            headers[header] = draw(header_values)
    route = draw(st.sampled_from(["list", "report", "changes"]))
    if route == "list":
        return HttpRequest("GET", "/api/reports", draw(params("limit", "cursor", "q")), headers)
    if route == "changes":
        # NOTE: an unknown parameter too, checked last: a stream never starts, and every
        #   other parameter and header is parsed first.
        query = [*draw(params("since", "names")), ("end", "")]
        return HttpRequest("GET", "/api/changes", query, headers)
    method = draw(st.sampled_from(["GET", "PUT", "DELETE"]))
    path = "/api/reports/" + urllib.parse.quote(draw(path_names), safe="")
    if method != "PUT":
        return HttpRequest(method, path, [], headers)
    fields = draw(st.sampled_from([["title"], ["title", "content"], ["content"], []]))
    body: dict[str, Any] = {field: draw(FIELDS[field]) for field in fields}
    headers["Content-Type"] = "application/json"
    return HttpRequest("PUT", path, [], headers, json.dumps(body).encode())


def mostly_valid(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """The first of ``values`` most of the time (a request that gets past authentication)."""
    return st.one_of(st.just(f"Bearer {WRITE_TOKEN}"), st.just(f"Bearer {WRITE_TOKEN}"), values)


async def _http(conductor: ASGIConductor, request: HttpRequest) -> None:
    result = await conductor.simulate_request(
        request.method,
        request.path,
        query_string=urllib.parse.urlencode(request.query),
        headers=request.headers,
        body=request.body,
    )
    status = result.status_code
    assert status < 500, f"{status} {result.text[:300]}"
    if status >= 400:
        assert result.headers["content-type"] == "application/problem+json", result.headers
        problem = result.json
        assert problem["status"] == status and problem["detail"], problem
        assert problem.get("code") in ERROR_CODES | {None}, problem
        check_no_leak(problem, json.dumps(request.query) + repr(request))


@quiet_big_examples
def test_any_http_request_gets_no_5xx(target: Target) -> None:
    @hypothesis.settings(HYPOTHESIS, max_examples=target.examples(600))
    @given(request=http_requests())
    def http_request(request: HttpRequest) -> None:
        target.run(_http(target.conductor, request))

    http_request()


# -- every field at every bound, each once ------------------------------------------------------

# NOTE: what the fuzz finds only by luck, sent every run: each field of each request, and each
#   HTTP parameter and header, at each bound.
BOUND_VALUES: list[Any] = [
    *(digit * count for count in DIGIT_COUNTS for digit in "09"),
    "-" + "9" * 4301,
    *BOUND_INTS,
    *BOUND_FLOATS,
]
BASE = {"name": "report1", "title": "Title", "q": "report", "token": WRITE_TOKEN}


def values_at_bounds(field: str) -> list[Any]:
    lengths = [LENGTHS[field] + d for d in (-1, 0, 1)] if field in LENGTHS else []
    return BOUND_VALUES + [char * n for n in lengths for char in "x😀"]


def bound_frames(kind: type[msgspec.Struct]) -> Iterator[str | bytes]:
    """Requests of ``kind`` valid but for one field at one bound: as JSON, MessagePack, and
    JSON numbers of every length."""
    tag = str(kind.__struct_config__.tag)
    fields = kind.__struct_fields__
    base = {"type": tag, **{f: BASE[f] for f in fields if f in BASE}}
    found: list[str | bytes] = []
    for field in fields:
        for value in values_at_bounds(field):
            request = {**base, field: value}
            found.append(json.dumps(request, ensure_ascii=False))
            with contextlib.suppress(OverflowError):
                found.append(packed(request))
        for count in DIGIT_COUNTS:
            text = json.dumps({**base, field: 0})
            found.append(text.replace(f'"{field}": 0', f'"{field}": {"9" * count}'))
    # NOTE: a frame over the message limit closes the connection (1009): not one to send here
    yield from (frame for frame in found if size(frame) <= MAX_MESSAGE)


@pytest.mark.parametrize("kind", REQUEST_TYPES, ids=lambda kind: kind.__struct_config__.tag)
def test_every_field_at_every_bound_gets_one_reply(
    target: Target, kind: type[msgspec.Struct]
) -> None:
    target.run(_session(target.conductor, WRITE_TOKEN, list(bound_frames(kind))))


def bound_http_requests() -> Iterator[HttpRequest]:
    auth = {"Authorization": f"Bearer {WRITE_TOKEN}"}
    values = [str(v) for v in BOUND_VALUES] + ["x" * 201, "9" * 8193]
    for value in values:
        for name in ("limit", "cursor", "q"):
            yield HttpRequest("GET", "/api/reports", [(name, value)], auth)
        for name in ("since", "names"):
            yield HttpRequest("GET", "/api/changes", [(name, value), ("end", "")], auth)
        headers = {**auth, "Last-Event-ID": value}
        yield HttpRequest("GET", "/api/changes", [("end", "")], headers)
        for tag in (value, f'"{value}"', f'W/"{value}"'):
            yield HttpRequest("GET", "/api/reports/report1", [], {**auth, "If-None-Match": tag})
            yield HttpRequest("DELETE", "/api/reports/nope", [], {**auth, "If-Match": tag})
            put = {**auth, "If-Match": tag, "Content-Type": "application/json"}
            yield HttpRequest("PUT", "/api/reports/bounds", [], put, b'{"title": "T"}')
        yield HttpRequest("GET", "/api/reports/" + value.strip("+ "), [], auth)
        yield HttpRequest("GET", "/api/reports", [], {"Authorization": f"Bearer {value}"})
    for field in ("title", "content"):
        for value in values_at_bounds(field):
            body = json.dumps({"title": "T", field: value}).encode()
            headers = {**auth, "Content-Type": "application/json"}
            yield HttpRequest("PUT", "/api/reports/bounds", [], headers, body)


def test_every_http_parameter_at_every_bound_gets_no_5xx(target: Target) -> None:
    async def send_all() -> None:
        for request in bound_http_requests():
            try:
                await _http(target.conductor, request)
            except AssertionError as error:
                raise AssertionError(f"{request!r}: {error}") from error

    target.run(send_all())


# -- known bugs -------------------------------------------------------------------------------


async def _reply_to(conductor: ASGIConductor, frame: str | bytes) -> tuple[bool, Any]:
    async with connect(conductor) as ws:
        await send(ws, TOKEN)
        await send(ws, frame)
        return await receive(ws)


DEEP = 10_000


@pytest.mark.parametrize(
    "frame",
    [
        '{"a":' + "[" * DEEP + "]" * DEEP + "}",
        '{"type":"get","id":1,"name":' + "[" * DEEP + "]" * DEEP + "}",
    ],
    ids=["untyped", "typed"],
)
def test_deeply_nested_json_object_gets_an_error_reply(target: Target, frame: str) -> None:
    binary, reply = target.run(_reply_to(target.conductor, frame))
    check_reply(binary, reply, frame)


def test_deeply_nested_msgpack_type_gets_unknown_type(target: Target) -> None:
    frame = b"\x81" + packed("type") + b"\x91" * 1000 + b"\xc0"
    binary, reply = target.run(_reply_to(target.conductor, frame))
    check_reply(binary, reply, frame)
    assert reply["error"]["code"] == "unknown_type"


@pytest.mark.parametrize(
    "cursor", ["\u00b2", "9999999999999999999", str(2**63), "9" * 4300, "9" * 4301, "0" * 5000]
)
def test_cursor_out_of_range_is_bad_cursor(target: Target, cursor: str) -> None:
    frame = json.dumps({"type": "list", "id": 1, "cursor": cursor})
    binary, reply = target.run(_reply_to(target.conductor, frame))
    check_reply(binary, reply, frame)
    assert reply["error"]["code"] == "bad_cursor", reply


@pytest.mark.parametrize("subscribe_first", [False, True], ids=["unsubscribe", "resubscribe"])
def test_subscription_reply_comes_in_the_request_format(
    target: Target, subscribe_first: bool
) -> None:
    async def formats() -> list[bool]:
        found = []
        async with connect(target.conductor) as ws:
            await send(ws, TOKEN)
            if subscribe_first:
                await send(ws, json.dumps({"type": "subscribe", "id": 1}))
                found.append((await receive(ws))[0])
            await send(ws, packed({"type": "unsubscribe", "id": 2}))
            found.append((await receive(ws))[0])
        return found

    assert target.run(formats()) == ([False, True] if subscribe_first else [True])


async def test_resume_with_as_many_changes_as_the_queue_holds(
    settings: Settings, seeded_repository: ReportRepository
) -> None:
    queue = 5
    await seeded_repository.add_reports([NewReport(f"new{n}", "New", "") for n in range(queue)])
    app = create_app(dataclasses.replace(settings, subscriber_queue=queue))
    received: list[Any] = []
    # NOTE: nothing raises inside the conductor: it would skip the app's shutdown.
    async with ASGIConductor(app) as conductor, connect(conductor) as ws:
        await send(ws, TOKEN)
        await send(ws, json.dumps({"type": "subscribe", "id": 1, "since": len(TUTORIAL)}))
        with contextlib.suppress(AssertionError):  # Closed, or nothing more
            while len(received) < 1 + queue:
                received.append((await receive(ws))[1])
        closed_with = ws.close_code
    latest = len(TUTORIAL) + queue
    assert closed_with is None
    assert received[0] == {"id": 1, "result": {"names": None, "version": latest, "epoch": EPOCH}}
    assert [event["version"] for event in received[1:]] == list(
        range(len(TUTORIAL) + 1, latest + 1)
    )


# -- JWT-shaped garbage, to the verifier ------------------------------------------------------

JWT_KEYS: dict[str, Any] = {"rsa-1": rsa_key(), "ec-1": ec_key(), "ed-1": ed25519_key()}
JWT_ALGS = ["HS256", "RS256", "PS256", "ES256", "EdDSA", "none", "None", "HS512", "RS384", ""]
NOW = int(time.time())


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = json_values) -> Any:
    """Mostly ``good``, sometimes ``bad``: garbage that still gets past the first checks."""
    # NOTE: hypothesis draws the first branch of one_of more often than the others.
    return st.one_of(good, good, good, bad)


timestamps = mostly(
    st.integers(NOW - 1000, NOW + 1000),
    st.one_of(
        st.floats(NOW - 1000, NOW + 1000),
        st.sampled_from([0, -1, 2**31, 2**63, 10**30, 1e300, float("inf"), float("nan"), True]),
        st.integers(NOW, NOW + 1000).map(str),
        json_values,
    ),
)
jwt_headers = st.fixed_dictionaries(
    {"alg": mostly(st.sampled_from(JWT_ALGS))},
    optional={
        "kid": mostly(st.sampled_from([*JWT_KEYS, "nope", ""])),
        "typ": mostly(st.just("JWT")),
    },
)
rare_headers = st.fixed_dictionaries(
    {},
    optional={
        "crit": st.just(["exp"]) | st.lists(st.text(max_size=5), max_size=2) | json_values,
        "b64": st.booleans() | json_values,
    },
)
jwt_claims = st.fixed_dictionaries(
    {
        "sub": mostly(st.sampled_from(["alice", "", "x" * 201]) | st.text(max_size=30)),
        "exp": timestamps,
    },
    optional={
        "nbf": timestamps,
        "iat": timestamps,
        "aud": mostly(st.sampled_from(["reports", ["reports", "x"], "other", []])),
        "iss": mostly(st.sampled_from(["https://idp", "https://idp/", "idp"])),
        "scope": mostly(st.sampled_from(["reports:read", "reports:read reports:write", ""])),
        "reports": mostly(st.lists(st.text(max_size=10), max_size=3)),
    },
)


@st.composite
def jwt_segment(draw: st.DrawFn, values: st.SearchStrategy[dict[str, Any]]) -> str:
    """One base64url segment: JSON of a drawn object, sometimes of any value or of any bytes."""
    kind = draw(st.integers(0, 9))  # one in ten garbage
    if kind == 0:
        return b64(draw(st.binary(max_size=40)))
    value = draw(json_values) if kind == 1 else draw(values)
    return b64(json.dumps(value, ensure_ascii=draw(st.booleans())).encode())


@st.composite
def jwt_shaped(draw: st.DrawFn) -> str:
    """Three base64url segments: garbage, or garbage claims under a real signature."""
    how = draw(st.sampled_from(["random", "empty", "secret", "key"]))
    header = draw(jwt_headers)
    if draw(mostly(st.just(False), st.just(True))):
        header.update(draw(rare_headers))
    kid = draw(st.sampled_from(sorted(JWT_KEYS)))
    alg = {"rsa-1": draw(st.sampled_from(["RS256", "PS256"])), "ec-1": "ES256"}.get(kid, "EdDSA")
    fits = draw(mostly(st.just(True), st.just(False)))  # mostly the header that fits the key
    if how == "secret" and fits:
        header["alg"] = "HS256"
    elif how == "key" and fits:
        header.update(alg=alg, kid=kid)
    segments = f"{draw(jwt_segment(st.just(header)))}.{draw(jwt_segment(jwt_claims))}"
    signature = b""
    if how == "random":
        signature = draw(st.binary(max_size=300))
    elif how == "secret":
        signature = get_default_algorithms()["HS256"].sign(segments.encode(), SECRET.encode())
    elif how == "key":
        signature = get_default_algorithms()[alg].sign(segments.encode(), JWT_KEYS[kid])
    return f"{segments}.{b64(signature)}"


def check_grant(grant: Grant) -> None:
    assert isinstance(grant.subject, str) and 0 < len(grant.subject) <= 200, grant
    assert grant.kind == "jwt" and grant.expires_at is not None, grant
    assert grant.reports and all(isinstance(p, str) and p for p in grant.reports), grant


def fuzz_verifier(verifier: JWTVerifier, *, url: bool, examples: int) -> None:
    allowed: tuple[type[Exception], ...] = (
        (InvalidToken, KeysUnavailable) if url else (InvalidToken,)
    )

    async def verify(token: str) -> None:
        with contextlib.suppress(*allowed):
            check_grant(await verifier.verify(token))
            hypothesis.event("accepted")

    with asyncio.Runner() as runner:

        @hypothesis.settings(HYPOTHESIS, max_examples=examples)
        @given(token=jwt_shaped())
        def garbage_is_refused(token: str) -> None:
            runner.run(verify(token))

        garbage_is_refused()


def jwt_settings(jwks: str, *, strict: bool) -> Settings:
    """The secret and a JWKS; ``strict``: an audience and an issuer too."""
    aud, iss = ("reports", "https://idp") if strict else ("", "")
    return Settings(jwt_secret=SECRET, jwt_jwks=jwks, jwt_audience=aud, jwt_issuer=iss)


def test_jwt_shaped_garbage_is_refused(tmp_path: pathlib.Path) -> None:
    keys = [public_jwk(key, kid) for kid, key in JWT_KEYS.items()]
    verifier = verifier_for(
        jwt_settings(str(write_jwks(tmp_path / "jwks.json", *keys)), strict=False)
    )
    assert verifier is not None
    fuzz_verifier(verifier, url=False, examples=1000)


def test_jwt_shaped_garbage_is_refused_with_a_jwks_url() -> None:
    with JWKSServer([public_jwk(key, kid) for kid, key in JWT_KEYS.items()]) as server:
        verifier = verifier_for(jwt_settings(server.url, strict=True))
        assert verifier is not None
        fuzz_verifier(verifier, url=True, examples=300)


# -- invalid UTF-8, end to end ----------------------------------------------------------------

INVALID_UTF8 = [b"\xff", b"report\xc3\x28", b"\xed\xa0\x80", b'{"type":"get","name":"\xc0\xaf"}']


@contextlib.contextmanager
def open_reports(port: int) -> Iterator[RawWebSocket]:
    """A raw connection to /reports past the opening handshake."""
    with raw_connection(port) as sock:
        sock.sendall(request_bytes(port, "/reports", {}))
        response = read_response_head(sock)
        assert response.status == 101, response
        yield RawWebSocket(sock, response.rest)


@pytest.mark.e2e
def test_invalid_utf8_text_closes_1007(server: Server) -> None:
    for payload in INVALID_UTF8:
        with open_reports(server.port) as ws:  # after the token
            ws.send(TEXT_OPCODE, TOKEN.encode())
            ws.send(TEXT_OPCODE, b"report1")
            frame = ws.recv_frame()
            assert frame.opcode == TEXT_OPCODE
            assert json.loads(frame.payload) == {"report": "Report 1"}
            ws.send(TEXT_OPCODE, payload)
            ws.expect_failure(INVALID_DATA)
        with open_reports(server.port) as ws:  # as the token
            ws.send(TEXT_OPCODE, payload)
            ws.expect_failure(INVALID_DATA)
    assert server.process.poll() is None
    log = server.log()
    assert "Exception in ASGI application" not in log, log
    # One WARNING line per invalid message (uvicorn's own ERROR with a traceback is turned
    # into it): a client cannot fill the error log with tracebacks.
    assert "Traceback" not in log and " ERROR " not in log, log
    warnings = [line for line in log.splitlines() if "Invalid UTF-8 sequence" in line]
    assert len(warnings) == 2 * len(INVALID_UTF8), log
    assert all("WARNING" in line for line in warnings), warnings
