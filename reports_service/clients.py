"""The tutorial's command-line clients: type a message, see the reply, `q` to quit.

They outlive the server they talk to: after a dropped connection (a restart, 1012; a crash) they
connect again, with backoff, and go on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .client import ClientError, ReportsClient, Resync, Status
from .codes import Close
from .pipes import quiet_when_cut
from .protocol import ReportEvent

DEFAULT_URL = "ws://127.0.0.1:8000"
INTERRUPTED = 130  # NOTE: 128 + SIGINT, as a shell shows for a command stopped by Ctrl-C
RETRY_BASE = 0.5  # seconds before the first reconnect, doubled after each failed one ...
RETRY_CAP = 10.0  # ... up to this
FINAL = Close.POLICY_VIOLATION
"""The close code after which connecting again cannot help: a wrong, expired or revoked token,
or a limit that counts the token's connections or its messages."""
CLOSE_WORDS = {
    1000: "closed",
    1001: "going away",
    1006: "connection dropped",
    1011: "server error",
    1012: "server restart",
    1013: "try again later",
    4001: "too slow",
}
IDLE = "idle timeout"  # NOTE: the reason of the server's 1001 (resources/registry.py)
READS = frozenset({"get", "list", "search", "ping"})
UNREACHABLE = (OSError, InvalidHandshake, TimeoutError)


def _parser(prog: str, description: str, with_token: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--url",
        default=os.environ.get("REPORTS_URL", DEFAULT_URL),
        help="server base URL (env REPORTS_URL, default %(default)s)",
    )
    if with_token:
        parser.add_argument(
            "--token",
            default=os.environ.get("REPORTS_TOKEN"),
            help="access token for /reports (env REPORTS_TOKEN)",
        )
    return parser


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def backoff(attempt: int) -> float:
    """Seconds before reconnect ``attempt`` (0, 1, ...): exponential, capped, with jitter so
    that the clients of a restarted server do not all come back at the same instant."""
    # NOTE: between half and all of the exponential step, so the delay said is never "0.0 s".
    return random.uniform(0.5, 1.0) * min(RETRY_CAP, RETRY_BASE * 2.0**attempt)


def close_words(code: int | None, reason: str = "") -> str:
    """A close, for people: ``1012 server restart``."""
    code = 1006 if code is None else code
    return f"{code} {reason or CLOSE_WORDS.get(code, '')}".strip()


class Closed(Exception):
    """The server closed the connection for good (:data:`FINAL`); the message says why."""


def reports_read(line: str) -> bool:
    """Whether a line typed at the reports prompt only reads: a plain name, or a typed request
    that changes nothing. Only such a line is sent again when its reply was lost in a drop."""
    try:
        request = json.loads(line)
    except ValueError:
        return True
    return not isinstance(request, dict) or request.get("type") in READS


def read_line(prompt: str) -> asyncio.Future[str | None]:
    """The next line of stdin (None at its end), read by a thread of its own.

    NOTE: a daemon thread, not asyncio.to_thread: a prompt that stops (Ctrl-C, a 1008) while
    ``input`` waits must not wait at exit for the executor's thread, that is, for a line.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str | None] = loop.create_future()

    def settle(line: str | None, error: BaseException | None) -> None:
        if not future.done():
            future.set_result(line) if error is None else future.set_exception(error)

    def read() -> None:
        line: str | None = None
        error: BaseException | None = None
        try:
            line = input(prompt)
        except EOFError:
            pass
        except Exception as failed:  # NOTE: BrokenPipeError writing the prompt, raised by talk()
            error = failed
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, line, error)

    threading.Thread(target=read, name="prompt", daemon=True).start()
    return future


class Prompt:
    """One prompt's connection: made again after a drop, in the background while the user
    types, with backoff; the token is sent again on each."""

    def __init__(self, uri: str, token: str | None) -> None:
        self.uri = uri
        self.token = token
        self.ws: ClientConnection | None = None
        self.lost = ""
        self.reconnecting: asyncio.Task[None] | None = None

    async def open(self) -> None:
        ws = await websockets.connect(self.uri, open_timeout=10)
        if self.token is not None:
            await ws.send(self.token)
        self.ws = ws

    async def close(self) -> None:
        if self.reconnecting is not None:
            self.reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reconnecting
        if self.ws is not None:
            await self.ws.close()

    def dropped(self, code: int | None, reason: str) -> None:
        """The connection is gone: :class:`Closed` for good, else connect again."""
        self.ws = None
        self.lost = close_words(code, reason)
        if code == FINAL:
            raise Closed(f"connection closed by the server: {code} ({reason or 'policy'})")
        if reason != IDLE and self.reconnecting is None:
            self.reconnecting = asyncio.create_task(self.reconnect(wait_first=True))

    async def reconnect(self, wait_first: bool) -> None:
        """Until connected; the drop's reason stays in every line, not a failed retry's."""
        attempt = 0
        if not wait_first:  # NOTE: after an idle timeout: at once, and quietly when it works
            with contextlib.suppress(*UNREACHABLE):
                await self.open()
                return
        while True:
            delay = backoff(attempt)
            say(f"connection lost ({self.lost}), reconnecting in {delay:.1f} s")
            await asyncio.sleep(delay)
            try:
                await self.open()
            except UNREACHABLE:
                attempt += 1
                continue
            say("reconnected")
            return

    async def connection(self) -> ClientConnection:
        if self.ws is None and self.reconnecting is None:
            self.reconnecting = asyncio.create_task(self.reconnect(wait_first=False))
        if self.reconnecting is not None:
            try:
                await self.reconnecting
            finally:
                self.reconnecting = None
        assert self.ws is not None
        return self.ws

    async def line(self, prompt: str) -> str | None:
        """The next line typed, watching the connection meanwhile (a drop is seen, and mended,
        before the user types again)."""
        typed = read_line(prompt)
        while not typed.done():
            ws = self.ws
            if ws is None:  # NOTE: until the line, or a new connection to watch in turn
                mending: list[asyncio.Future[Any]] = []
                if self.reconnecting is not None:
                    mending.append(self.reconnecting)
                await asyncio.wait([typed, *mending], return_when=asyncio.FIRST_COMPLETED)
                if mending and mending[0].done():
                    self.reconnecting = None
                if self.ws is None:
                    break
                continue
            closed: asyncio.Future[Any] = asyncio.ensure_future(ws.wait_closed())
            await asyncio.wait([typed, closed], return_when=asyncio.FIRST_COMPLETED)
            if closed.done():
                self.dropped(ws.close_code, ws.close_reason or "")
            else:
                closed.cancel()
        return await typed

    async def ask(self, line: str, read: bool) -> str | bytes | None:
        """The reply to ``line``; None when it was lost and the line not sent again."""
        while True:
            ws = await self.connection()
            try:
                await ws.send(line)
            except ConnectionClosed as closed:  # NOTE: not sent, so safe to send again
                self.dropped(*_rcvd(closed))
                continue
            try:
                return await ws.recv()
            except ConnectionClosed as closed:
                self.dropped(*_rcvd(closed))
                if not read:
                    say("the reply was lost in the drop, and the line is not sent again: it may")
                    say("or may not have been done (look before you send it again)")
                    return None


def _rcvd(closed: ConnectionClosed) -> tuple[int | None, str]:
    return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, "")


async def talk(
    uri: str, prompt: str, token: str | None = None, read: Callable[[str], bool] | None = None
) -> int:
    """Send each line typed at ``prompt`` and print the reply, until `q` or end of input.

    A line whose reply a drop lost is sent again after the reconnect only when ``read`` says
    it only reads (every line, without ``read``).
    """
    session = Prompt(uri, token)
    try:
        await session.open()
    except (*UNREACHABLE, InvalidURI) as error:
        say(f"cannot connect to {uri}: {error}")
        return 1
    try:
        while True:
            message = await session.line(prompt)
            if message is None or message.casefold() == "q":
                return 0
            reply = await session.ask(message, read is None or read(message))
            if reply is not None:
                print(reply, flush=True)
    except Closed as closed:
        say(str(closed))
        return 1
    finally:
        await session.close()


def run(command: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run`` of a prompt; Ctrl-C ends it quietly."""
    try:
        status = asyncio.run(command)
    except KeyboardInterrupt:
        status = INTERRUPTED
    if any(thread.name == "prompt" and thread.is_alive() for thread in threading.enumerate()):
        # NOTE: stopped while ``input`` waits (Ctrl-C, a 1008): that thread holds stdin's lock,
        #   and the interpreter's shutdown would abort on it ("could not acquire lock").
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)
    return status


@quiet_when_cut
def echo_main(argv: Sequence[str] | None = None) -> int:
    args = _parser("echo-client", "Talk to /echo.", with_token=False).parse_args(argv)
    return run(talk(args.url.rstrip("/") + "/echo", "Enter a message (q to exit): "))


# -- reports-client watch -------------------------------------------------------------------


def change_line(item: ReportEvent | Resync, as_json: bool) -> str:
    """One change as ``watch`` prints it: ``v12 updated report1 "Report 1"``, or JSON."""
    if isinstance(item, Resync):
        if as_json:
            return json.dumps({"type": "resync", "version": item.version})
        return f"v{item.version} resync"
    if as_json:
        fields = {"type": item.type, "name": item.report.name, "version": item.version}
        return json.dumps({**fields, "title": item.report.title})
    what = item.type.removeprefix("report.")
    return f"v{item.version} {what} {item.report.name} {json.dumps(item.report.title)}"


class Reconnects:
    """What ``watch`` says on stderr of the connection's changes: the drop and each retry's
    delay, then ``reconnected``.

    NOTE: the drop's own close (``1012 server restart``) stays in every retry's line, not the
    refused connection of a failed retry, which says nothing new.
    """

    def __init__(self) -> None:
        self.lost = ""
        self.connected = False

    def __call__(self, status: Status) -> None:
        if status.state == "connected":
            if self.lost:
                say("reconnected")
            self.lost, self.connected = "", True
        elif status.state != "reconnecting":
            return
        elif not self.connected:  # NOTE: not there yet at the start
            say(f"{status.reason or 'cannot connect'}, trying again in {status.delay or 0:.1f} s")
        else:
            if status.code is not None:
                self.lost = close_words(status.code, status.reason)
            elif not self.lost:
                self.lost = status.reason or "cannot connect"
            say(f"connection lost ({self.lost}), reconnecting in {status.delay or 0:.1f} s")


async def watch(url: str, token: str, names: list[str], since: int | None, as_json: bool) -> int:
    """Print every change as one line until stopped (SIGTERM, Ctrl-C: status 0)."""
    on_status = Reconnects()

    async def consume() -> None:
        async with ReportsClient(url, token=token, on_status=on_status) as client:
            async for item in client.changes(names or None, since):
                if isinstance(item, Resync):
                    say(
                        f"resynced at v{item.version}: earlier changes may be missing from this "
                        "output (the changelog no longer reaches back, or the database changed)"
                    )
                print(change_line(item, as_json), flush=True)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    watching = asyncio.create_task(consume())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([watching, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not watching.done():
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        return 0
    try:
        watching.result()
    except ClientError as error:
        say(f"reports-client watch: {error}")
        return 1
    return 0


def _watch_parser() -> argparse.ArgumentParser:
    parser = _parser(
        "reports-client watch",
        "Print every change to the reports, one line each, as it happens; after a dropped "
        "connection, connect again and go on from the last change printed.",
        with_token=True,
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="only these reports (default: all)"
    )
    parser.add_argument(
        "--since", type=int, metavar="N", help="first the changes after version N, then live ones"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def watch_main(argv: Sequence[str]) -> int:
    parser = _watch_parser()
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("an access token is needed: --token or REPORTS_TOKEN")
    if args.since is not None and args.since < 0:
        parser.error(f"--since {args.since}: must be at least 0")
    if not args.url.startswith(("ws://", "wss://")):
        parser.error(f"--url {args.url}: must start with ws:// or wss://")
    try:
        return asyncio.run(watch(args.url, args.token, args.names, args.since, args.json))
    except KeyboardInterrupt:
        return 0


@quiet_when_cut
def reports_main(argv: Sequence[str] | None = None) -> int:
    """The prompt; `reports-client watch ...` for the change printer."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["watch"]:
        return watch_main(argv[1:])
    parser = _parser("reports-client", "Ask /reports for reports by name.", with_token=True)
    parser.epilog = "reports-client watch [NAME ...] prints every change as it happens (--help)."
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("an access token is needed: --token or REPORTS_TOKEN")
    uri = args.url.rstrip("/") + "/reports"
    return run(talk(uri, "Name of the report (q to exit): ", args.token, reports_read))
