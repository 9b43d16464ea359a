"""A TCP proxy on loopback that a test can stop and restart, to play a database going away."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from .server import free_port

_CHUNK = 65536


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; ``stop()`` behaves like a stopped server.

    While stopped, every forwarded connection is cut (both sides reset) and new connections
    are refused, because nothing listens on the port; ``start()`` listens on the same port
    again. ``start(admit=n)`` lets only the next ``n`` connections through and resets the rest,
    to hold a race open: the server reconnects one way and not yet another. Use as
    ``async with TcpProxy(host, port) as proxy:``.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.accepted = 0
        self.reset = 0
        self._admit: int | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self, admit: int | None = None) -> None:
        self._admit = admit
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def stop(self) -> None:
        """Refuse new connections and reset every open one, client and upstream side."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        # NOTE: reset connections end their forwarding tasks; one still connecting upstream
        #   is cancelled.
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=1)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if server is not None:
            await asyncio.wait_for(server.wait_closed(), 5)

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._admit is not None:
            if self._admit <= 0:
                self.reset += 1
                writer.transport.abort()
                writer.close()
                return
            self._admit -= 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
            upstream = up_writer
            self._writers.add(up_writer)
            await _forward(reader, writer, up_reader, up_writer)
        except (OSError, TimeoutError):
            pass  # no upstream server: the client sees its connection reset
        except asyncio.CancelledError:
            pass  # by stop(): end quietly (asyncio logs a cancelled connection callback)
        finally:
            for side in (writer, upstream):
                if side is not None:
                    self._writers.discard(side)
                    side.transport.abort()
                    side.close()
            self._tasks.discard(task)


async def _forward(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    upstream: asyncio.StreamWriter,
) -> None:
    """Both directions until both ends are done; one side reset ends it (the caller resets
    the other)."""
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_pipe(reader, upstream))
            group.create_task(_pipe(up_reader, writer))
    except* OSError:
        pass


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then pass the end on (half-close) where possible."""
    while data := await source.read(_CHUNK):
        sink.write(data)
        await sink.drain()
    if sink.can_write_eof():
        with contextlib.suppress(OSError):
            sink.write_eof()


__all__ = ["TcpProxy"]
