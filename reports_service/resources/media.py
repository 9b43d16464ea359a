"""Falcon's WebSocket media handlers for the protocol: raw frames in, JSON or MessagePack out."""

from __future__ import annotations

from falcon import media

from ..protocol import encode_binary, encode_text


# NOTE: Falcon keeps each handler's serialize and deserialize on every WebSocket: as static
#   methods they are the same four functions for all, not four bound methods per connection.
class RawText(media.TextBaseHandlerWS):
    """Text frames arrive as the raw string (a report name need not be JSON); replies are JSON."""

    @staticmethod
    def serialize(media: object) -> str:
        return encode_text(media)

    @staticmethod
    def deserialize(payload: str) -> object:
        return payload


class RawBinary(media.BinaryBaseHandlerWS):
    """Binary frames arrive as raw bytes, decoded where needed; replies are MessagePack."""

    @staticmethod
    def serialize(media: object) -> bytes:
        return encode_binary(media)

    @staticmethod
    def deserialize(payload: bytes) -> object:
        return payload
