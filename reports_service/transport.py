"""The one adapter to other libraries' internals (uvicorn's, websockets', Falcon's, aiosqlite's).

It closes with a deadline and drops a connection whose peer stopped reading (`close`,
`abort`), writes pushes at once or several together, each framed once for all its
subscribers (`send_now`, `pushes_together`), refuses a handshake with an HTTP status and
headers (`deny`: a 401 with `WWW-Authenticate`), lets an accepted connection go of what only
the handshake needed (`trim`), ends a connection's pending time (`handshake_done`, see
handshake.py), turns uvicorn's traceback for a client's invalid UTF-8 into one warning
(`CLIENT_FAULTS`) and keeps aiosqlite's late worker-thread errors quiet
(`quiet_late_driver_threads`). None of this is public API of those libraries: `check()` looks
at start-up whether it still holds and logs one line for each saving or guarantee that is
off; nothing here fails silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from falcon import WebSocketDisconnected
from falcon.asgi import Request, WebSocket
from falcon.asgi.ws import _WebSocketState
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, State

from . import handshake
from .metrics import count_close

logger = logging.getLogger("reports_service.transport")

UVICORN_WS = "websockets-sansio"  # the uvicorn WebSocket protocol whose internals are used

ABORT_OFF = "stalled peers cannot be aborted with this uvicorn; relying on timeouts"
HANDSHAKE_KEPT = "idle connections keep uvicorn's handshake response (memory saving off)"
HEADERS_KEPT = "idle connections keep Falcon's copy of the request headers (memory saving off)"
RECEIVER_KEPT = "idle connections keep a Falcon receive buffer each (memory saving off)"
CLIENT_FAULTS_OFF = "a client's invalid UTF-8 is logged by uvicorn as an ERROR with a traceback"
DENIAL_OFF = "refused handshakes get Falcon's HTTP 403, not a 401 with WWW-Authenticate"
STREAM_ABORT_OFF = "slow readers of an event stream cannot be dropped with this uvicorn"
EXIT_UNSEEN = "event streams are not ended when uvicorn stops: it waits its graceful timeout"
SEND_NOW_OFF = "each push waits for its subscriber's sender task (slower fan-out)"
FRAME_ONCE_OFF = "each push is framed again for every subscriber (slower fan-out)"
LATE_THREADS_OFF = "a late error in aiosqlite's worker thread may print a traceback in the CLI"
HEAD_DEADLINE_OFF = (
    "half-sent request heads are not timed out, nor pending connections capped, with this uvicorn"
)
NOT_UVICORN = (
    "connections not served by uvicorn keep the server's handshake state, "
    "and stalled peers are left to the server's timeouts"
)

CLIENT_FAULT_TEXT = "Invalid UTF-8 sequence received from client."  # uvicorn's log message
LATE_THREAD_NAME = "_connection_worker_thread"  # in the name of aiosqlite's worker threads

_announced: set[str] = set()  # the lines logged since the last check()


def _announce(line: str, level: int = logging.WARNING) -> None:
    """Log ``line`` unless it was since the last check(): once, not once per connection."""
    if line not in _announced:
        _announced.add(line)
        logger.log(level, line)


# -- the start-up check ---------------------------------------------------------------------


def check() -> list[str]:
    """Whether the internals used here are where they were: logs and returns one line for
    each saving or guarantee that is off with the installed versions (none: nothing logged).
    """
    off = [line for line, holds in _PROBES if not _holds(holds)]
    _announced.clear()
    for line in off:
        _announce(line)
    return off


def _holds(probe: Callable[[], bool]) -> bool:
    try:
        return probe()
    except Exception:  # an import, an attribute or a signature that moved
        return False


def _slots(cls: type) -> set[str]:
    names: set[str] = set()
    for kind in cls.__mro__:
        slots = getattr(kind, "__slots__", ())
        names.update((slots,) if isinstance(slots, str) else slots)
    return names


def _code_words(cls: type) -> set[str]:
    """The attribute and global names and the string constants in the code of ``cls``."""
    words: set[str] = set()
    codes = [f.__code__ for f in vars(cls).values() if inspect.isfunction(f)]
    while codes:
        code = codes.pop()
        words.update(code.co_names)
        for const in code.co_consts:
            if isinstance(const, str):
                words.add(const)
            elif inspect.iscode(const):
                codes.append(const)
    return words


def _uvicorn_class() -> Any:
    from uvicorn.config import WS_PROTOCOLS
    from uvicorn.importer import import_from_string

    return import_from_string(WS_PROTOCOLS[UVICORN_WS])


def _uvicorn_send_is_bound() -> bool:
    # NOTE: Falcon keeps the server's ASGI `send` as it is; uvicorn's is a method of its
    #   protocol object, which is how the protocol is found from a Falcon WebSocket.
    cls = _uvicorn_class()
    return "_asgi_send" in _slots(WebSocket) and inspect.iscoroutinefunction(cls.send)


def _abort_holds() -> bool:
    return _uvicorn_send_is_bound() and "transport" in _code_words(_uvicorn_class())


def _handshake_holds() -> bool:
    needed = {"handshake_complete", "response", "request"}
    return _uvicorn_send_is_bound() and needed <= _code_words(_uvicorn_class())


@functools.cache
def _can_send_now() -> bool:
    return _holds(_send_now_holds)


def _send_now_holds() -> bool:
    needed = {"handshake_complete", "close_sent", "disconnected", "writable", "conn"}
    needed |= {"transport", "send_text", "send_binary", "data_to_send"}
    return _uvicorn_send_is_bound() and needed <= _code_words(_uvicorn_class())


@functools.cache
def _can_frame_once() -> bool:
    return _holds(_frame_once_holds)


def _frame_once_holds() -> bool:
    # NOTE: what websockets' Protocol.send_text and send_frame do, and data_to_send reads
    needed = {"writes", "extensions", "debug", "expect_continuation_frame", "_state"}
    return needed <= _code_words(Protocol) and "writes" in Protocol.data_to_send.__code__.co_names


def _stream_abort_holds() -> bool:
    from uvicorn.protocols.http import h11_impl, httptools_impl

    cycles = (h11_impl.RequestResponseCycle, httptools_impl.RequestResponseCycle)
    return all(
        "transport" in _code_words(c) and inspect.iscoroutinefunction(c.send) for c in cycles
    )


def _exit_seen_holds() -> bool:
    from uvicorn.server import Server

    return {"should_exit"} <= _code_words(Server) and inspect.isfunction(Server.handle_exit)


def _denial_holds() -> bool:
    return {"_asgi_send", "_state"} <= _slots(WebSocket) and hasattr(_WebSocketState, "CLOSED")


def _headers_hold() -> bool:
    return "_asgi_headers" in _slots(Request)


def _receiver_holds() -> bool:
    from falcon.asgi import ws

    kind = ws._BufferedReceiver
    inspect.signature(kind).bind(_no_receive, 0)
    needed = {"_max_queue", "_pump_task", "client_disconnected"}
    return "_buffered_receiver" in _slots(WebSocket) and needed <= _slots(kind)


def _client_faults_hold() -> bool:
    return CLIENT_FAULT_TEXT in _code_words(_uvicorn_class())


def _late_threads_hold() -> bool:
    from aiosqlite import core

    # NOTE: a Thread's default name ends with its target's name: "Thread-3 (<target>)".
    target = getattr(core, LATE_THREAD_NAME)
    return inspect.isfunction(target) and LATE_THREAD_NAME in _code_words(core.Connection)


def _head_deadline_holds() -> bool:
    from uvicorn.config import Config
    from uvicorn.protocols.http import h11_impl, httptools_impl

    h11_hooks = ("connection_made", "connection_lost", "data_received", "handle_websocket_upgrade")
    httptools_hooks = (*h11_hooks[:3], "on_message_begin", "on_headers_complete", "_should_upgrade")
    return (
        "http_protocol_class" in _code_words(Config)
        and all(inspect.isfunction(getattr(h11_impl.H11Protocol, h)) for h in h11_hooks)
        and {"conn", "their_state"} <= _code_words(h11_impl.H11Protocol)
        and all(
            inspect.isfunction(getattr(httptools_impl.HttpToolsProtocol, h))
            for h in httptools_hooks
        )
        and "should_upgrade" in _code_words(httptools_impl.HttpToolsProtocol)
        and _uvicorn_send_is_bound()
    )


_PROBES: list[tuple[str, Callable[[], bool]]] = [
    (ABORT_OFF, _abort_holds),
    (SEND_NOW_OFF, _send_now_holds),
    (FRAME_ONCE_OFF, _frame_once_holds),
    (HANDSHAKE_KEPT, _handshake_holds),
    (HEADERS_KEPT, _headers_hold),
    (RECEIVER_KEPT, _receiver_holds),
    (CLIENT_FAULTS_OFF, _client_faults_hold),
    (LATE_THREADS_OFF, _late_threads_hold),
    (DENIAL_OFF, _denial_holds),
    (STREAM_ABORT_OFF, _stream_abort_holds),
    (EXIT_UNSEEN, _exit_seen_holds),
    (HEAD_DEADLINE_OFF, _head_deadline_holds),
]


# -- per connection -------------------------------------------------------------------------


async def close(ws: WebSocket, code: int, reason: str, within: float) -> None:
    """Close with ``code``; if the close frame cannot be sent in time, drop the connection."""
    try:
        async with asyncio.timeout(within):
            await ws.close(code, reason)
    except TimeoutError:
        abort(ws)
    except WebSocketDisconnected:
        pass


def handshake_done(ws: WebSocket) -> None:
    """The connection of ``ws`` is past its handshake and authentication: no longer pending
    (see handshake.py)."""
    handshake.done(getattr(ws, "_asgi_send", None))


def _uvicorn_protocol(ws: WebSocket) -> Any:
    """uvicorn's protocol object serving ``ws``, or None when another server serves it."""
    protocol = getattr(getattr(ws, "_asgi_send", None), "__self__", None)
    if type(protocol).__module__.startswith("uvicorn."):
        return protocol
    _announce(NOT_UVICORN, logging.INFO)
    return None


def send_now(ws: WebSocket, frame: str | bytes) -> bool:
    """Send an encoded ``frame`` (text or binary) without waiting, if uvicorn would take it
    so; False, with nothing sent, when it would wait or this cannot tell.

    NOTE: what uvicorn's own ASGI send does for a message, without the task switch that each
    subscriber's sender task costs: a change pushed to 10,000 subscribers woke 10,000 tasks.
    Inside ``pushes_together()`` the frame is written when that block ends, with every other
    frame sent to that connection in it: one system call for all the changes one read of the
    changelog brings (the write is the fan-out's cost: see benchmarks/README.md). Anything
    uvicorn sends on the connection meanwhile writes the frames before it, in order. A frame
    pushed to many subscribers in a row is encoded and framed once (`_framed`).
    """
    if ws.closed or not _can_send_now():
        return False
    protocol = _uvicorn_protocol(ws)
    if (
        protocol is None
        or not protocol.handshake_complete
        or protocol.close_sent
        or protocol.disconnected
        or not protocol.writable.is_set()
        or protocol.transport.is_closing()
        or protocol.conn.state is not State.OPEN
    ):
        return False
    conn = protocol.conn
    if conn.extensions or conn.debug or conn.expect_continuation_frame or not _can_frame_once():
        if isinstance(frame, str):  # NOTE: the library frames it: compressed, or logged
            conn.send_text(frame.encode())
        else:
            conn.send_binary(frame)
    else:
        conn.writes.append(_framed(frame))
    if _held is None:
        _write_out(protocol)
    else:
        _held[protocol] = None
    return True


def _write_out(protocol: Any) -> None:
    """Write what ``protocol``'s connection has to send, in one write."""
    data = protocol.conn.data_to_send()
    if data:
        protocol.transport.write(b"".join(data))


_last_framed: tuple[str | bytes | None, bytes] = (None, b"")


def _framed(frame: str | bytes) -> bytes:
    """``frame`` as a server sends it (unmasked, no extension), framed once for all the
    subscribers it is pushed to in a row: what websockets' send_text would write."""
    global _last_framed
    last, framed = _last_framed
    if last is not frame:  # NOTE: the one kept alive here; frames are immutable
        if isinstance(frame, str):
            whole = Frame(Opcode.TEXT, frame.encode())
        else:
            whole = Frame(Opcode.BINARY, frame)
        framed = whole.serialize(mask=False, extensions=[])
        _last_framed = (frame, framed)
    return framed


_held: dict[Any, None] | None = None  # NOTE: inside pushes_together(): protocols to write


@contextlib.contextmanager
def pushes_together() -> Iterator[None]:
    """Frames sent by send_now() in this block are written at its end, each connection's in
    one write (the block must not await: other tasks would write in it too)."""
    global _held
    if _held is not None:  # NOTE: nested: the outer block writes
        yield
        return
    held: dict[Any, None] = {}
    _held = held
    try:
        yield
    finally:
        _held = None
        for protocol in held:
            if not protocol.transport.is_closing():
                _write_out(protocol)


def abort(ws: WebSocket) -> None:
    """Drop the connection at once (uvicorn), freeing what its peer did not read."""
    # NOTE: ASGI has no call to drop a connection. When the peer stops reading, uvicorn waits
    #   for its buffer to drain before sending anything, a close frame included, and even its
    #   ping timeout only calls transport.close(), which also waits to flush. Aborting the
    #   asyncio transport its protocol holds frees the buffers at once.
    protocol = _uvicorn_protocol(ws)
    if protocol is None:
        return
    drop = getattr(getattr(protocol, "transport", None), "abort", None)
    if not callable(drop):  # NOTE: uvloop's transports are not asyncio.Transport subclasses
        _announce(ABORT_OFF)
        return
    logger.info("dropping a connection that stopped reading")
    count_close(1006)
    with contextlib.suppress(Exception):
        drop()


async def deny(
    req: Request, ws: WebSocket, status: int, headers: dict[str, str], detail: str
) -> None:
    """Refuse the handshake with an HTTP response (ASGI's denial response) where the server
    offers one; else Falcon's refusal, which servers send as HTTP 403."""
    if "websocket.http.response" not in req.scope.get("extensions", {}) or not _denial_holds():
        await ws.close()
        return
    body = (detail + "\n").encode()
    head = {**headers, "content-type": "text/plain; charset=utf-8"}
    start = {
        "type": "websocket.http.response.start",
        "status": status,
        "headers": [(k.encode(), v.encode()) for k, v in head.items()],
    }
    try:
        await ws._asgi_send(start)
        await ws._asgi_send({"type": "websocket.http.response.body", "body": body})
    except Exception:  # NOTE: the client left before its answer: nothing to tell anyone
        logger.debug("the client left before its handshake was refused")
    # NOTE: so that Falcon does not send a close of its own after the response.
    ws._state = _WebSocketState.CLOSED
    protocol = _uvicorn_protocol(ws)
    if protocol is not None and hasattr(protocol, "handshake_complete"):
        # NOTE: uvicorn marks a handshake done when it refuses one itself, not after an HTTP
        #   response of ours: it would log an ERROR for every refused token.
        protocol.handshake_complete = True


def trim(req: Request, ws: WebSocket) -> None:
    """Lets go of what an accepted connection no longer needs, for as long as it stays open.

    An idle connection's memory is the budget that matters (see benchmarks/): every byte
    held here is held by each of thousands of connections.
    """
    _drop_request_headers(req)
    _share_idle_receiver(ws)
    _drop_uvicorn_handshake(ws)


def _drop_request_headers(req: Request) -> None:
    # NOTE: the request headers (the scope's list, which uvicorn keeps too, and the copy
    #   Falcon's Request makes of it) are read up to the handshake only: by uvicorn, by
    #   OriginMiddleware and, through req.remote_addr (cached by then), by AuthMiddleware and
    #   LoggingMiddleware. The routes never read them: req.get_header() finds none from here.
    scope_headers = req.scope.get("headers")
    if isinstance(scope_headers, list):  # NOTE: falcon.testing's is an iterator, consumed
        scope_headers.clear()
    headers = getattr(req, "_asgi_headers", None)
    if isinstance(headers, dict):
        headers.clear()
    else:
        _announce(HEADERS_KEPT)


def _share_idle_receiver(ws: WebSocket) -> None:
    # NOTE: Falcon makes a receive buffer (with its deque) for every WebSocket, even when
    #   it is turned off (max_receive_queue = 0, see app.py), and then never uses it: one
    #   idle instance serves all the connections of an event loop.
    receiver: Any = getattr(ws, "_buffered_receiver", None)
    if getattr(receiver, "_max_queue", None) == 0 and getattr(receiver, "_pump_task", 1) is None:
        ws._buffered_receiver = _idle_receiver(type(receiver))
    else:
        _announce(RECEIVER_KEPT)


def _drop_uvicorn_handshake(ws: WebSocket) -> None:
    # NOTE: uvicorn keeps the handshake's HTTP response (and its headers) on its protocol
    #   object after the handshake, and reads it only to send it. It keeps the request too,
    #   read only to build the scope, and so does the websockets parser that made it (a local
    #   of its generator, for the connection's life): its headers, about 1.8 KiB, are
    #   emptied (websockets' public Headers.clear()).
    protocol = _uvicorn_protocol(ws)
    if protocol is None:
        return
    if getattr(protocol, "handshake_complete", None) is True and hasattr(protocol, "response"):
        protocol.response = None
        headers = getattr(getattr(protocol, "request", None), "headers", None)
        if isinstance(headers, Headers):
            headers.clear()
    else:
        _announce(HANDSHAKE_KEPT)


_IDLE_RECEIVERS: dict[asyncio.AbstractEventLoop, Any] = {}


def _idle_receiver(kind: type) -> Any:
    # NOTE: one per event loop: Falcon's receiver keeps the loop it was made in. A closed
    #   loop's is let go when another loop makes its own.
    loop = asyncio.get_running_loop()
    receiver = _IDLE_RECEIVERS.get(loop)
    if receiver is None:
        for old in [other for other in list(_IDLE_RECEIVERS) if other.is_closed()]:
            _IDLE_RECEIVERS.pop(old, None)
        receiver = _IDLE_RECEIVERS[loop] = kind(_no_receive, 0)
    return receiver


async def _no_receive() -> dict[str, object]:
    raise RuntimeError("the idle receive buffer never receives")


# -- other libraries' log text and thread names ---------------------------------------------


class ClientFaultFilter(logging.Filter):
    """uvicorn logs a client's invalid UTF-8 as an ERROR with a traceback; it is the client's
    fault and the connection is closed with 1007, so one WARNING line without the traceback
    (else any client can fill the error log with tracebacks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == CLIENT_FAULT_TEXT:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


CLIENT_FAULTS = ClientFaultFilter()  # for uvicorn's "uvicorn.error" logger


def quiet_late_driver_threads(args: threading.ExceptHookArgs) -> None:
    """A threading.excepthook: aiosqlite's worker thread may report a failure to open a
    SQLite file after asyncio.run() closed the loop; the CLI already printed it as one line."""
    if args.thread is not None and LATE_THREAD_NAME in args.thread.name:
        return
    threading.__excepthook__(args)


# -- per HTTP response ----------------------------------------------------------------------

SEND = "reports_service.send"  # NOTE: the scope key under which the app keeps the ASGI send
ON_DISCONNECT = "reports_service.on_disconnect"  # NOTE: and a callable to call on disconnect


def keep_send(scope: dict[str, Any], send: Any) -> None:
    """Remember the server's ``send`` of an HTTP request, so its response can be dropped."""
    scope[SEND] = send


def watch_disconnect(scope: dict[str, Any], receive: Any) -> Any:
    """``receive``, calling ``scope[ON_DISCONNECT]`` (if set) when the client is gone.

    NOTE: Falcon learns of a closed event stream only at its next event; with this, the
    stream ends (and frees its place under the caps) as soon as the server sees it.
    """

    async def receive_watched() -> Any:
        message = await receive()
        if message["type"] == "http.disconnect" and (hook := scope.get(ON_DISCONNECT)):
            hook()
        return message

    return receive_watched


def on_disconnect(req: Request, hook: Callable[[], None]) -> None:
    req.scope[ON_DISCONNECT] = hook


# -- the server -----------------------------------------------------------------------------


def uvicorn_server() -> Any:
    """The uvicorn server running this process (found at start-up through the SIGTERM handler
    it installs), or None."""
    # NOTE: uvicorn closes WebSockets with 1012 when it stops, but only waits for responses
    #   under way, an endless event stream included, until its graceful-shutdown timeout, then
    #   cancels them with a traceback. Its `should_exit` tells the streams to end first.
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if type(server).__module__.startswith("uvicorn.") and hasattr(server, "should_exit"):
        return server
    return None


def exiting(server: Any) -> bool:
    """Whether ``server`` (from :func:`uvicorn_server`) has been told to stop."""
    return server is not None and server.should_exit is True


def abort_response(req: Request) -> None:
    """Drop the connection of a response under way (an event stream whose reader stalled).

    NOTE: as for a WebSocket (see :func:`abort`): uvicorn's ``send`` is a method of its
    request-response cycle, which holds the asyncio transport; aborting it ends the pending
    send at once, and Falcon then ends the response.
    """
    cycle = getattr(req.scope.get(SEND), "__self__", None)
    drop = getattr(getattr(cycle, "transport", None), "abort", None)
    if not type(cycle).__module__.startswith("uvicorn.") or not callable(drop):
        _announce(STREAM_ABORT_OFF)
        return
    logger.info("dropping an event stream that stopped reading")
    with contextlib.suppress(Exception):
        drop()
