"""What every WebSocket route does around its messages: admit, count, receive within limits."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Generic, TypeVar

from falcon import WebSocketDisconnected
from falcon.asgi import Request, WebSocket

from .. import transport
from ..access import Grant
from ..codes import Close
from ..config import Settings
from ..limits import Refused
from ..metrics import count_close
from ..protocol import BINARY, TEXT, Payload, internal_error
from .connection import Connection
from .registry import ConnectionRegistry

logger = logging.getLogger("reports_service.ws")

S = TypeVar("S")


class WebSocketRoute(Generic[S]):
    """A WebSocket route: admits the connection within the caps, counts it while served,
    receives within the limits and closes it when refused. Subclasses answer the messages.

    NOTE: an idle connection waits in :meth:`_receive` with no other frame, task or context
    manager of ours (see :class:`Connection` on memory per idle connection).
    """

    route: ClassVar[str]

    def __init__(self, registry: ConnectionRegistry, settings: Settings) -> None:
        self._registry = registry
        self._settings = settings

    def open(self, req: Request, conn: Connection) -> S:
        """The connection's state (a session), once admitted."""
        raise NotImplementedError

    async def answer(self, state: S, conn: Connection, payload: Payload) -> Any:
        """The reply to one message, or None for none."""
        raise NotImplementedError

    async def finish(self, state: S) -> None:
        """The connection is over (its state was made by :meth:`open`)."""

    def grant_of(self, req: Request) -> Grant | None:
        """What the connection's token may do (it counts against the per-token cap), if any."""
        return None

    async def on_websocket(self, req: Request, ws: WebSocket) -> None:
        if ws.unaccepted:
            await ws.accept()
        transport.trim(req, ws)
        conn = Connection(ws, self.route, self._settings, self.grant_of(req))
        try:
            await self._serve(req, conn)
        except Refused as refused:
            logger.info("closing connection on %s: %s", self.route, refused.reason)
            await conn.close(refused.code, refused.reason)
        finally:
            logger.info("websocket closed on %s", self.route)

    async def _serve(self, req: Request, conn: Connection) -> None:
        self._registry.admit(conn)
        try:
            state = self.open(req, conn)
            try:
                await self._receive(state, conn)
            finally:
                conn.listener = None  # NOTE: the session may hold the connection: no cycle
                await self.finish(state)
        finally:
            self._registry.release(conn)

    async def _receive(self, state: S, conn: Connection) -> None:
        while True:
            try:
                payload = await conn.ws.receive_media()
            except WebSocketDisconnected as disconnected:
                count_close(disconnected.code)
                return
            assert isinstance(payload, (str, bytes))  # NOTE: a tuple: no union built per message
            if not conn.received(payload):
                await conn.close(Close.MESSAGE_TOO_BIG, "message too big")
                return
            # NOTE: the answer is written out here, not in a coroutine of its own per message. A
            #   failure nobody expected gets an error reply, not a 1011; it is logged here, in
            #   the service's format, and the connection and its other requests go on
            #   (CancelledError is not an Exception: it still ends the task).
            kind = BINARY if isinstance(payload, bytes) else TEXT
            try:
                reply = await self.answer(state, conn, payload)
                if reply is not None:
                    await conn.send(reply, kind)
                reply = None
            except (Refused, WebSocketDisconnected):
                raise
            except Exception:
                logger.exception("failed to answer a message on %s", self.route)
                reply = internal_error(payload)
            if reply is not None:
                await conn.send(reply, kind)
            del payload, reply  # NOTE: not kept while waiting for the next message
