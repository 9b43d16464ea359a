"""The wire protocol: every message type, as the typed definitions the server and the docs share.

Text frames carry JSON, binary frames MessagePack; both hold the same messages. On /reports a
frame that decodes to an object with a ``type`` is a typed request; any other frame is the
tutorial's plain query, a bare report name.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgpack
import msgspec
from falcon.constants import WebSocketPayloadType
from msgspec import Meta, Struct

from .access import MAX_TOKEN_BYTES, Grant
from .records import MAX_CONTENT_LENGTH, MAX_NAME_LENGTH, MAX_TITLE_LENGTH, Change, Report

TEXT = WebSocketPayloadType.TEXT
BINARY = WebSocketPayloadType.BINARY

Payload = str | bytes
MAX_ID_LENGTH = 200
RequestId = (
    Annotated[str, Meta(max_length=MAX_ID_LENGTH)]
    | Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
    | None
)
"""A request's ``id``, echoed by its reply: a string of at most 200 characters, or a 64-bit
integer."""
Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
PageSize = Annotated[int, Meta(ge=1, le=100)]
Version = Annotated[int, Meta(ge=0, le=2**63 - 1)]
"""A changelog version; as ``if_version``, 0 stands for "no such report yet"."""
Cursor = Annotated[str, Meta(min_length=1, max_length=19, pattern="^[0-9]+$")]
"""The ``next`` of an earlier page: a version, in decimal digits."""
Epoch = Annotated[str, Meta(min_length=1, max_length=64)]
"""The database's epoch, from a subscription reply or a pong (see ``Subscribe.epoch``)."""
Query = Annotated[str, Meta(min_length=1, max_length=200)]
Names = Annotated[list[Name], Meta(max_length=1000)]

REPORT_NOT_FOUND = {"error": "report not found"}
UNAVAILABLE = {"error": "service unavailable, try again"}
INTERNAL = "the server failed to answer this message (the failure is logged)"
BAD_CURSOR = "cursor must be a `next` value from an earlier page"

ErrorCode = Literal[
    "invalid_request",  # not a valid request of its type: the message says what is wrong
    "unknown_type",  # a ``type`` this server does not know
    "not_found",  # no report by that name
    "bad_cursor",  # a cursor this server did not hand out
    "unavailable",  # the database cannot be reached now: retry later
    "forbidden",  # this token may not: write, write that report, or refresh to another subject
    "invalid_token",  # the token sent with ``auth`` does not authenticate
    "rate_limited",  # too many messages: wait `retry_after` seconds
    "conflict",  # ``if_version`` is not the report's version: nothing was changed
    "internal",  # the server failed to answer this request (a bug, logged): not worth retrying
]

# -- requests ------------------------------------------------------------------------------


class Request(Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    """Every typed request has a ``type`` and an optional ``id`` its reply echoes."""

    id: RequestId = None


class Get(Request, tag="get"):
    """The whole report ``name``."""

    name: Name


class ListReports(Request, tag="list"):
    """Reports, most recently changed first, ``limit`` at a time; pass ``next`` as ``cursor``."""

    limit: PageSize = 20
    cursor: Cursor | None = None


class Search(Request, tag="search"):
    """Like ``list``, only reports whose title or content contains ``q`` (case-insensitive)."""

    q: Query
    limit: PageSize = 20
    cursor: Cursor | None = None


class Subscribe(Request, tag="subscribe"):
    """Push every change to ``names`` (all reports when absent) from now, or after ``since``.

    A resume sends the ``epoch`` its ``since`` came from: when the database now has another
    epoch (restored from a backup, or replaced), the reply is followed by ``resync``, whatever
    ``since`` is.
    """

    names: Names | None = None
    since: Version | None = None
    epoch: Epoch | None = None


class Unsubscribe(Request, tag="unsubscribe"):
    """Stop pushes for ``names``, or for everything when absent."""

    names: Names | None = None


class Ping(Request, tag="ping"):
    """Answered with the latest version this server has seen."""


Title = Annotated[str, Meta(max_length=MAX_TITLE_LENGTH)]
Content = Annotated[str, Meta(max_length=MAX_CONTENT_LENGTH)]


class Put(Request, tag="put"):
    """Add the report ``name``, or replace it; needs a token created with --write.

    With ``if_version``, only if the report is at that version (0: only if it does not
    exist); else the error ``conflict``, and nothing changes.
    """

    name: Name
    title: Title
    content: Content = ""
    if_version: Version | None = None


class Remove(Request, tag="remove"):
    """Remove the report ``name``; needs a token created with --write.

    With ``if_version``, only if the report is at that version; else ``conflict``.
    """

    name: Name
    if_version: Version | None = None


class Auth(Request, tag="auth"):
    """Authenticate with ``token``: as the first message, or later to refresh (same subject)."""

    token: Annotated[str, Meta(min_length=1, max_length=MAX_TOKEN_BYTES)]


AnyRequest = Get | ListReports | Search | Subscribe | Unsubscribe | Ping | Put | Remove | Auth
REQUEST_TYPES: tuple[type[Request], ...] = (
    Get,
    ListReports,
    Search,
    Subscribe,
    Unsubscribe,
    Ping,
    Put,
    Remove,
    Auth,
)
KNOWN_TYPES = frozenset(str(t.__struct_config__.tag) for t in REQUEST_TYPES)


class ReportIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of ``PUT /api/reports/{name}``: the report's new title and content."""

    title: Title
    content: Content = ""


# -- replies and events --------------------------------------------------------------------


Timestamp = Annotated[datetime, Meta(tz=True)]


class ReportOut(Struct, forbid_unknown_fields=True):
    """A whole report; ``version`` is the changelog version of its latest change."""

    name: str
    title: str
    content: str
    created_at: Timestamp
    updated_at: Timestamp
    version: int


class Page(Struct):
    """One page of reports, newest change first; ``next`` is the cursor of the next page."""

    reports: list[ReportOut]
    next: str | None


class Subscription(Struct):
    """The names now subscribed to (null: every report), the version pushes follow, and the
    epoch of the database that version belongs to."""

    names: list[str] | None
    version: int
    epoch: str


class Pong(Struct):
    """The latest changelog version this server has seen, and its database's epoch."""

    pong: bool
    version: int
    epoch: str


class Identity(Struct):
    """Who a connection is authenticated as, what it may do, and until when (null: no expiry)."""

    subject: str
    expires_at: Timestamp | None
    read: bool
    write: bool
    reports: list[str]


class ErrorBody(Struct, omit_defaults=True):
    """A stable ``code`` to act on and a ``message`` for people (``retry_after``: seconds)."""

    code: ErrorCode
    message: str
    retry_after: float | None = None


class Problem(Struct, omit_defaults=True):
    """An HTTP API error, as RFC 9457 problem details (``application/problem+json``).

    ``code`` is the same stable code as in a WebSocket error reply; ``retry_after`` is in
    seconds, as in the ``Retry-After`` header.
    """

    type: str
    title: str
    status: int
    detail: str
    code: ErrorCode | None = None
    retry_after: float | None = None


class GetReply(Struct):
    """Reply to ``get``, and to ``put`` with the report as stored."""

    id: RequestId
    result: ReportOut


class PageReply(Struct):
    """Reply to ``list`` and ``search``."""

    id: RequestId
    result: Page


class SubscriptionReply(Struct):
    """Reply to ``subscribe`` and ``unsubscribe``; pushed events follow it."""

    id: RequestId
    result: Subscription


class PongReply(Struct):
    """Reply to ``ping``."""

    id: RequestId
    result: Pong


class Removed(Struct, forbid_unknown_fields=True):
    """The report that was removed, and the changelog version of its removal."""

    name: str
    version: int


class RemoveReply(Struct):
    """Reply to ``remove``."""

    id: RequestId
    result: Removed


class AuthReply(Struct):
    """Reply to ``auth``: the permissions now in force."""

    id: RequestId
    result: Identity


class ErrorReply(Struct):
    """Reply to a request that failed; the connection stays open."""

    id: RequestId
    error: ErrorBody


class ReportEvent(Struct):
    """Pushed to subscribers: a report was added, updated or removed at ``version``."""

    type: Literal["report.added", "report.updated", "report.removed"]
    report: ReportOut
    version: int


class ResyncEvent(Struct):
    """Pushed instead of replaying when the changelog no longer reaches back to ``since``."""

    type: Literal["resync"]
    version: int


class TokenExpiring(Struct):
    """Pushed once, ``REPORTS_TOKEN_EXPIRY_WARNING`` seconds before the token expires: send
    ``auth`` with a new token, or the connection is closed with 1008 ``token expired``."""

    type: Literal["token.expiring"]
    expires_at: Timestamp


class PlainReport(Struct):
    """The tutorial's reply to a plain query."""

    report: str


class PlainError(Struct):
    error: str


Outgoing = (
    GetReply
    | PageReply
    | SubscriptionReply
    | PongReply
    | RemoveReply
    | AuthReply
    | ErrorReply
    | ReportEvent
    | ResyncEvent
    | TokenExpiring
)


class RequestError(Exception):
    """A request that gets an error reply; the connection stays open."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


class ProtocolError(ValueError):
    """A message that cannot be understood; its text is safe to send to the client."""


# -- encoding ------------------------------------------------------------------------------

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


def encode_text(message: object) -> str:
    """A message as the JSON of a text frame."""
    return _json_encode(message).decode()


def encode_binary(message: object) -> bytes:
    """A message as the MessagePack of a binary frame."""
    # NOTE: bytes stay bytes (MessagePack has a binary type); datetimes become the same
    #   RFC 3339 strings as in JSON.
    return msgpack.packb(msgspec.to_builtins(message, builtin_types=(bytes, bytearray)))


def payload_type(payload: Payload) -> WebSocketPayloadType:
    return BINARY if isinstance(payload, bytes) else TEXT


def unpack(data: bytes) -> Any:
    """Decode one MessagePack value, refusing anything that is not exactly one value."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # NOTE: msgpack raises ValueError, TypeError and its own errors alike
        raise ProtocolError("invalid MessagePack") from None


# -- decoding ------------------------------------------------------------------------------


def decode(payload: Payload) -> AnyRequest | str:
    """A typed request, or the report name of a plain query.

    Raises RequestError for a typed request that is not valid, ProtocolError for a binary
    frame that is neither a request nor a string.
    """
    if isinstance(payload, str):
        if not payload.startswith("{"):
            return payload
        try:
            value: Any = _json_decode(payload)
        except (msgspec.DecodeError, RecursionError):  # NOTE: nesting deeper than msgspec goes
            return payload
    else:
        value = unpack(payload)
    if isinstance(value, dict) and "type" in value:
        return to_request(value)
    if isinstance(payload, str):
        return payload
    if not isinstance(value, str):
        raise ProtocolError("a binary query must be a MessagePack string")
    return value


def to_request(value: dict[Any, Any]) -> AnyRequest:
    kind = value["type"]
    if not isinstance(kind, str) or kind not in KNOWN_TYPES:
        shown = repr(kind[:50]) if isinstance(kind, str) else f"of {type(kind).__name__}"
        raise RequestError(
            "unknown_type",
            f"unknown type {shown}: expected one of {', '.join(sorted(KNOWN_TYPES))}",
        )
    try:
        request: AnyRequest = msgspec.convert(value, AnyRequest)
        return request
    except msgspec.ValidationError as error:
        raise refused(error) from None
    except RecursionError:
        raise RequestError("invalid_request", "nested too deeply") from None


def refused(error: msgspec.ValidationError) -> RequestError:
    """The error reply to a request its definition refuses: ``bad_cursor`` for its cursor."""
    if str(error).endswith("- at `$.cursor`"):
        return RequestError("bad_cursor", BAD_CURSOR)
    return RequestError("invalid_request", str(error))


def request_id(payload: Payload) -> RequestId:
    """The ``id`` of an invalid request, if one can be read, so its error reply carries it."""
    try:
        value = _json_decode(payload) if isinstance(payload, str) else unpack(payload)
    except (msgspec.DecodeError, RecursionError, ProtocolError):
        return None
    found = value.get("id") if isinstance(value, dict) else None
    try:
        rid: RequestId = msgspec.convert(found, RequestId)
    except msgspec.ValidationError:  # NOTE: not one a reply may echo (a long one, an object)
        return None
    return rid


# -- building replies ----------------------------------------------------------------------


def report_out(report: Report) -> ReportOut:
    return ReportOut(
        report.name,
        report.title,
        report.content,
        report.created_at,
        report.updated_at,
        report.version,
    )


def event(change: Change) -> ReportEvent:
    kind: Any = f"report.{change.op}"
    return ReportEvent(kind, report_out(change.report), change.version)


@functools.lru_cache(maxsize=16)
def event_frame(change: Change, binary: bool) -> str | bytes:
    """The pushed event for ``change``, encoded once for all its subscribers."""
    pushed = event(change)
    return encode_binary(pushed) if binary else encode_text(pushed)


def error_reply(
    rid: RequestId, code: ErrorCode, message: str, retry_after: float | None = None
) -> ErrorReply:
    return ErrorReply(rid, ErrorBody(code, message, retry_after))


def rate_limited(payload: Payload, retry_after: float) -> Any:
    """The reply to a message refused for rate, in the shape the message asked for."""
    try:
        message = decode(payload)
    except (RequestError, ProtocolError):
        message = None
    if isinstance(message, Request):
        return error_reply(message.id, "rate_limited", "too many messages", round(retry_after, 3))
    return plain_rate_limited(retry_after)


def internal_error(payload: Payload) -> Any:
    """The reply to a message whose answer failed unexpectedly, in the shape it asked for."""
    try:
        message = decode(payload)
    except Exception:  # NOTE: the failure may have been in decoding it
        message = None
    if isinstance(message, Request):
        return error_reply(message.id, "internal", INTERNAL)
    return {"error": INTERNAL}


def plain_rate_limited(retry_after: float) -> dict[str, Any]:
    """The reply to a plain message (a query, an echo) refused for rate."""
    return {"error": "rate limited", "retry_after": round(retry_after, 3)}


def report_reply(report: Report | None) -> dict[str, str]:
    return REPORT_NOT_FOUND if report is None else {"report": report.title}


@functools.lru_cache(maxsize=1024)
def plain_text(reply: str | None) -> str:
    """The text frame of a plain query's reply, for the title ``reply`` (None: not found).

    NOTE: encoded once per title, not once per message; at most 1,024 titles of at most 500
    characters are kept.
    """
    return encode_text(REPORT_NOT_FOUND if reply is None else {"report": reply})


def echo_reply(payload: Payload) -> dict[str, Any]:
    """The echo route's reply: the message back (a text, or a MessagePack value) with the time."""
    message = payload if isinstance(payload, str) else unpack(payload)
    return {"message": message, "date": datetime.now(UTC).isoformat()}


def identity(grant: Grant) -> Identity:
    return Identity(grant.subject, grant.expires_at, grant.read, grant.write, list(grant.reports))


def first_message(payload: Payload) -> tuple[str | None, Auth | None]:
    """The access token in a first message (the text, a MessagePack string, or an ``auth``
    request), and the request when it was one (it gets a reply)."""
    if isinstance(payload, str):
        if not payload.startswith("{"):
            return payload, None
        try:
            value: Any = _json_decode(payload)
        except (msgspec.DecodeError, RecursionError):
            return payload, None
    else:
        try:
            value = unpack(payload)
        except ProtocolError:
            return None, None
    if isinstance(value, dict) and value.get("type") == "auth":
        try:
            request = msgspec.convert(value, Auth)
        except msgspec.ValidationError:
            return None, None
        return request.token, request
    if isinstance(payload, str):
        return payload, None
    return (value, None) if isinstance(value, str) else (None, None)
