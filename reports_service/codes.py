"""The WebSocket close codes this service sends, defined once (the docs are built from these)."""

from __future__ import annotations

from enum import IntEnum

from falcon.asgi_spec import WSCloseCode
from websockets.frames import CloseCode


class Close(IntEnum):
    """A close code: the standard ones by websockets' names, and the service's own (4000s)."""

    GOING_AWAY = CloseCode.GOING_AWAY  # idle for too long
    POLICY_VIOLATION = CloseCode.POLICY_VIOLATION  # token, rate or per-token cap
    MESSAGE_TOO_BIG = CloseCode.MESSAGE_TOO_BIG
    TRY_AGAIN_LATER = CloseCode.TRY_AGAIN_LATER  # server full, or the database is down
    SLOW_CONSUMER = 4001  # a subscriber fell too far behind
    PATH_NOT_FOUND = WSCloseCode.PATH_NOT_FOUND  # Falcon's, for a path with no route
