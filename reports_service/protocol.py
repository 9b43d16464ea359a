"""Message formats: JSON in text frames, MessagePack in binary frames."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgpack
import orjson
from falcon import media
from falcon.constants import WebSocketPayloadType

from .records import Report

TEXT = WebSocketPayloadType.TEXT
BINARY = WebSocketPayloadType.BINARY

Payload = str | bytes

REPORT_NOT_FOUND = {"error": "report not found"}
UNAVAILABLE = {"error": "service unavailable, try again"}


class ProtocolError(ValueError):
    """A message that cannot be understood; its text is safe to send to the client."""


class RawText(media.TextBaseHandlerWS):
    """Text frames arrive as the raw string (a report name need not be JSON); replies are JSON."""

    def serialize(self, media: object) -> str:
        return orjson.dumps(media, default=_default).decode()

    def deserialize(self, payload: str) -> object:
        return payload


class RawBinary(media.BinaryBaseHandlerWS):
    """Binary frames arrive as raw bytes, decoded where needed; replies are MessagePack."""

    def serialize(self, media: object) -> bytes:
        return msgpack.packb(media, default=_default)

    def deserialize(self, payload: bytes) -> object:
        return payload


def _default(value: object) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def unpack(data: bytes) -> Any:
    """Decode one MessagePack value, refusing anything that is not exactly one value."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # NOTE: msgpack raises ValueError, TypeError and its own errors alike
        raise ProtocolError("invalid MessagePack") from None


def payload_type(payload: Payload) -> WebSocketPayloadType:
    return BINARY if isinstance(payload, bytes) else TEXT


def echo_reply(payload: Payload) -> dict[str, Any]:
    """The echo route's reply: the message back (a text, or a MessagePack value) with the time."""
    message = payload if isinstance(payload, str) else unpack(payload)
    return {"message": message, "date": datetime.now(UTC).isoformat()}


def report_name(payload: Payload) -> str:
    """The report name a plain query asks for: the text itself, or a MessagePack string."""
    if isinstance(payload, str):
        return payload
    name = unpack(payload)
    if not isinstance(name, str):
        raise ProtocolError("a binary query must be a MessagePack string")
    return name


def token_of(payload: Payload) -> str | None:
    """The access token in a first message: the text, or a MessagePack string."""
    if isinstance(payload, str):
        return payload
    try:
        token = unpack(payload)
    except ProtocolError:
        return None
    return token if isinstance(token, str) else None


def report_reply(report: Report | None) -> dict[str, Any]:
    return REPORT_NOT_FOUND if report is None else {"report": report.title}
