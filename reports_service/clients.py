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
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .codes import Close
from .pipes import quiet_when_cut

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
            if ws is None:
                await asyncio.wait([typed])
                break
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
    """``asyncio.run`` of a command; Ctrl-C ends it quietly."""
    try:
        return asyncio.run(command)
    except KeyboardInterrupt:
        return INTERRUPTED


@quiet_when_cut
def echo_main(argv: Sequence[str] | None = None) -> int:
    args = _parser("echo-client", "Talk to /echo.", with_token=False).parse_args(argv)
    return run(talk(args.url.rstrip("/") + "/echo", "Enter a message (q to exit): "))


@quiet_when_cut
def reports_main(argv: Sequence[str] | None = None) -> int:
    parser = _parser("reports-client", "Ask /reports for reports by name.", with_token=True)
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("an access token is needed: --token or REPORTS_TOKEN")
    uri = args.url.rstrip("/") + "/reports"
    return run(talk(uri, "Name of the report (q to exit): ", args.token, reports_read))
