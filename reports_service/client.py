"""A Python client of /reports that keeps the server's promise: every change once, in order.

``ReportsClient`` holds one WebSocket connection and replaces it by itself when it drops
(exponential backoff with full jitter). ``changes()`` resubscribes on every new connection
with ``since`` (the last version it received) and the database's ``epoch``, drops any version
it already has, and yields ``Resync`` when the server cannot replay what was missed.

Retry rules for a request whose reply was lost in a drop (after the reconnect, within the same
``request_timeout``): ``get``, ``list``, ``search``, ``ping`` and an unconditional ``put`` (the
same content again) are sent again; a conditional write (``if_version``) is sent again, and a
``conflict`` on that retry is raised as ``Conflict`` with ``retried=True``: the first attempt
may have made the change, read the report to know. An unconditional ``remove`` is never sent
again: it raises ``ConnectionLost``, since whether it happened is unknown. A request that
could not be sent at all is always sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .codes import Close
from .protocol import (
    Auth,
    ErrorBody,
    Get,
    ListReports,
    Page,
    Ping,
    Pong,
    Put,
    Remove,
    Removed,
    ReportEvent,
    ReportOut,
    Request,
    Search,
    Subscribe,
    Subscription,
    Unsubscribe,
    encode_binary,
    encode_text,
)

TokenProvider = Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class Resync:
    """Yielded by changes() when changes were missed that cannot be replayed: fetch again."""

    version: int  # the version live changes continue after
    epoch: str


@dataclass(frozen=True)
class Status:
    """Passed to ``on_status`` on every change of the connection's state."""

    state: Literal["connecting", "connected", "reconnecting", "closed"]
    delay: float | None = None  # seconds until the next attempt ("reconnecting")
    code: int | None = None  # close code of the drop that caused it, if any
    reason: str = ""  # close reason / error text, for people


class ClientError(Exception):
    """An error of the client; the message is for people, ``code`` the server's, if any."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class NotFound(ClientError):
    """No report by that name (or none this token may read)."""


class Forbidden(ClientError):
    """This token may not do that."""


class Conflict(ClientError):
    """``if_version`` was not the report's version: nothing was changed by this attempt.

    ``retried`` is True when it answered a retry after a drop: the first attempt, whose reply
    was lost, may have made the change.
    """

    def __init__(self, message: str, code: str | None = "conflict", retried: bool = False):
        super().__init__(message, code)
        self.retried = retried


class RateLimited(ClientError):
    """Too many messages: wait ``retry_after`` seconds."""

    def __init__(self, message: str, code: str | None = None, retry_after: float = 0.0):
        super().__init__(message, code)
        self.retry_after = retry_after


class Unavailable(ClientError):
    """The server or its database cannot answer now, or no connection within request_timeout."""


class ConnectionLost(Unavailable):
    """The connection dropped before the reply to a ``remove`` without ``if_version``: it may
    or may not have happened, and it is not sent again."""


class InvalidRequest(ClientError):
    """The server refused the request as invalid (the message says why)."""


class AuthenticationError(ClientError):
    """The token was refused (1008), or could not be refreshed: the client stops."""


_ERRORS: dict[str, type[ClientError]] = {
    "not_found": NotFound,
    "forbidden": Forbidden,
    "conflict": Conflict,
    "unavailable": Unavailable,
    "invalid_request": InvalidRequest,
    "unknown_type": InvalidRequest,
    "bad_cursor": InvalidRequest,
    "invalid_token": AuthenticationError,
}


def _error(body: ErrorBody) -> ClientError:
    if body.code == "rate_limited":
        return RateLimited(body.message, body.code, body.retry_after or 0.0)
    return _ERRORS.get(body.code, ClientError)(body.message, body.code)


class _Dropped(Exception):
    """The connection a request went out on dropped before its reply (``sent``: it was sent)."""

    def __init__(self, sent: bool) -> None:
        self.sent = sent


class _Ended(Exception):
    """The changes() iterator ends quietly: the client closed, or another changes() began."""


class _Feed:
    """One changes() iterator's state, kept across connections."""

    def __init__(self, names: Sequence[str] | None, since: int | None, size: int) -> None:
        self.names = list(names) if names is not None else None
        self.last = since  # the last version received (None: not subscribed yet)
        self.epoch: str | None = None
        self.ws: ClientConnection | None = None  # the connection it is subscribed on
        self.live = False  # the subscription reply came on ws: its events follow
        self.items: deque[ReportEvent | Resync] = deque()
        self.size = size
        self.error: BaseException | None = None
        self._changed = asyncio.Event()

    async def put(self, item: ReportEvent | Resync, awaited: Callable[[], bool]) -> None:
        """Keep ``item``, first waiting for room unless a reply is ``awaited``."""
        # NOTE: waiting here stops reading the connection: a consumer too slow for the server
        #   gets 4001, and the client resumes, rather than buffering without bound. But not
        #   while a request waits for its reply: the consumer may be the one waiting.
        while len(self.items) >= self.size and self.error is None and not awaited():
            self._changed.clear()
            await self._changed.wait()
        self.push(item)

    def push(self, item: ReportEvent | Resync) -> None:
        self.items.append(item)
        self._changed.set()

    def wake(self) -> None:
        self._changed.set()

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._changed.set()

    async def get(self) -> ReportEvent | Resync:
        while not self.items:
            if self.error is not None:
                raise self.error
            self._changed.clear()
            await self._changed.wait()
        item = self.items.popleft()
        self._changed.set()  # NOTE: room for the reader waiting in put()
        return item


class ReportsClient:
    """A /reports connection that reconnects by itself; use ``async with``.

    ``url`` is the server's base URL (``ws://host:port``; /reports is appended) or the full
    /reports URL; or a list of them, servers of the same database, tried in turn. Exactly one
    of ``token`` and ``token_provider`` (an async function returning a fresh token, called on
    every connect and when the server warns of the expiry). ``binary`` sends MessagePack
    frames instead of JSON. A drop is followed by a new attempt after a random delay between
    0 and ``min(backoff_cap, backoff_base * 2**failures)`` seconds. A request waits at most
    ``request_timeout`` seconds, for a connection and its reply together, else
    ``Unavailable``; entering the context waits as long for the first connection.
    ``on_status`` is called with a ``Status`` on every change of the connection (it must not
    block). ``max_buffered`` changes are kept for changes() before the client stops reading.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        binary: bool = False,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        request_timeout: float = 30.0,
        on_status: Callable[[Status], None] | None = None,
        max_buffered: int = 1000,
    ) -> None:
        if (token is None) == (token_provider is None):
            raise ValueError("give exactly one of token and token_provider")
        bases = [u.rstrip("/") for u in ([url] if isinstance(url, str) else url)]
        self.urls = [b if b.endswith("/reports") else b + "/reports" for b in bases]
        self.url = self.urls[0]  # NOTE: the one connected to, or tried next
        self._token, self._provider, self._binary = token, token_provider, binary
        self._base, self._cap, self._timeout = backoff_base, backoff_cap, request_timeout
        self._on_status, self._max_buffered = on_status, max_buffered
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], ClientConnection, Any]] = {}
        self._ws: ClientConnection | None = None
        self._ready = asyncio.Event()  # set: _ws is logged in (or the client stopped)
        self._fatal: ClientError | None = None
        self._closing = False
        self._feed: _Feed | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_drop = ""

    async def __aenter__(self) -> ReportsClient:
        self._runner = asyncio.create_task(self._run(), name="reports-client")
        try:
            await self._connection(asyncio.get_running_loop().time() + self._timeout)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (1000) and end changes(); pending requests raise ClientError."""
        if self._closing:
            return
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for task in list(self._tasks):
            task.cancel()
        stopped = self._fatal is not None  # NOTE: _run said "closed" already
        self._stop(ClientError("the client is closed"), _Ended())
        if not stopped:
            self._status(Status("closed"))

    # -- requests --------------------------------------------------------------------------

    async def get(self, name: str) -> ReportOut:
        return msgspec.convert(await self._call(Get(name=name)), ReportOut)

    async def list(self, *, limit: int | None = None, cursor: str | None = None) -> Page:
        request = ListReports(cursor=cursor)
        if limit is not None:
            request.limit = limit
        return msgspec.convert(await self._call(request), Page)

    async def search(
        self, query: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page:
        request = Search(q=query, cursor=cursor)
        if limit is not None:
            request.limit = limit
        return msgspec.convert(await self._call(request), Page)

    async def put(
        self, name: str, title: str, content: str = "", *, if_version: int | None = None
    ) -> ReportOut:
        request = Put(name=name, title=title, content=content, if_version=if_version)
        return msgspec.convert(await self._call(request), ReportOut)

    async def remove(self, name: str, *, if_version: int | None = None) -> Removed:
        # NOTE: an unconditional remove sent twice could remove a report made meanwhile.
        request = Remove(name=name, if_version=if_version)
        return msgspec.convert(await self._call(request, if_version is not None), Removed)

    async def ping(self) -> Pong:
        return msgspec.convert(await self._call(Ping()), Pong)

    async def _call(self, request: Request, resend: bool = True) -> Any:
        """The result of ``request``, sent again after a drop if ``resend`` (or if it was not
        sent at all)."""
        deadline = asyncio.get_running_loop().time() + self._timeout
        retried = False
        while True:
            ws = await self._connection(deadline)
            try:
                async with asyncio.timeout_at(deadline):
                    return await self._exchange(ws, request)
            except TimeoutError:
                raise Unavailable(f"no reply within {self._timeout} s") from None
            except _Dropped as dropped:
                if dropped.sent and not resend:
                    raise ConnectionLost(
                        "the connection dropped before the reply: the remove may or may not "
                        "have happened (not sent again)"
                    ) from None
                retried = retried or dropped.sent
            except Conflict as conflict:
                if not retried:
                    raise
                raise Conflict(
                    f"{conflict}; this was a retry after a drop: the first attempt may have "
                    "made the change",
                    retried=True,
                ) from None

    async def _connection(self, deadline: float) -> ClientConnection:
        """The logged-in connection, waiting for it until ``deadline`` (loop time)."""
        while True:
            if self._fatal is not None:
                raise self._fatal
            if self._closing:
                raise ClientError("the client is closed")
            if self._ready.is_set() and self._ws is not None:
                return self._ws
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                detail = f" (last: {self._last_drop})" if self._last_drop else ""
                raise Unavailable(f"no connection to {self.url} within {self._timeout} s{detail}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), remaining)

    async def _exchange(
        self, ws: ClientConnection, request: Request, hook: Any = None, within: float | None = None
    ) -> Any:
        """Send ``request`` on ``ws`` and wait for its reply; ``hook`` sees a result first, in
        the reader (before any message after it)."""
        request.id = rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (future, ws, hook)
        if self._feed is not None:
            self._feed.wake()  # NOTE: a reader waiting for room reads on (see _Feed.put)
        try:
            try:
                await ws.send(encode_binary(request) if self._binary else encode_text(request))
            except ConnectionClosed:
                raise _Dropped(sent=False) from None
            async with asyncio.timeout(within):
                message = await future
        finally:
            self._pending.pop(rid, None)
        if "error" in message:
            raise _error(msgspec.convert(message["error"], ErrorBody))
        return message["result"]

    # -- changes ---------------------------------------------------------------------------

    async def changes(
        self, names: Sequence[str] | None = None, since: int | None = None
    ) -> AsyncGenerator[ReportEvent | Resync, None]:
        """Every change (to ``names``, or all) after ``since`` (None: from now), once each, in
        version order, across reconnects; ``Resync`` when missed changes cannot be replayed.

        One at a time per client: a new changes() ends the previous one. Raises
        AuthenticationError when the token is refused or cannot be refreshed.
        """
        if self._fatal is not None:
            raise self._fatal
        old = self._feed
        if old is not None:
            old.fail(_Ended())
            self._feed = None
            if old.ws is not None and old.ws is self._ws:
                with contextlib.suppress(ClientError, _Dropped, TimeoutError):
                    await self._exchange(old.ws, Unsubscribe(), within=self._timeout)
        feed = self._feed = _Feed(names, since, self._max_buffered)
        try:
            ws = self._ws if self._ready.is_set() else None
            if ws is not None and feed.ws is None:
                try:
                    await self._subscribe(ws, feed)
                except _Dropped:
                    pass  # NOTE: the next connection subscribes it
                except Unavailable:
                    await ws.close()  # NOTE: the feed is not ready: the next connection retries
            while True:
                yield await feed.get()
        except _Ended:
            return
        finally:
            if self._feed is feed:
                self._feed = None
                if feed.ws is not None and feed.ws is self._ws and self._fatal is None:
                    with contextlib.suppress(ClientError, _Dropped, TimeoutError):
                        await self._exchange(feed.ws, Unsubscribe(), within=self._timeout)

    async def _subscribe(self, ws: ClientConnection, feed: _Feed) -> None:
        """Subscribe ``feed`` on ``ws``, resuming after its last version where it has one."""
        feed.ws = ws

        def subscribed(result: Any, resync: bool = False) -> None:
            subscription = msgspec.convert(result, Subscription)
            if feed.last is None:
                feed.last = subscription.version
            feed.epoch, feed.live = subscription.epoch, True
            if resync:
                feed.push(Resync(subscription.version, subscription.epoch))

        epoch = feed.epoch if feed.last is not None else None
        request = Subscribe(names=feed.names, since=feed.last, epoch=epoch)
        try:
            await self._exchange(ws, request, subscribed, self._timeout)
        except InvalidRequest:
            if feed.last is None:
                raise
            # NOTE: the server replays at most REPORTS_SUBSCRIBER_QUEUE changes: more were
            #   missed (after a 4001, say). Start again from now, and say so.
            feed.last = None
            await self._exchange(
                ws, Subscribe(names=feed.names), lambda r: subscribed(r, True), self._timeout
            )

    # -- the connection --------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, and connect again after each drop, until the client closes or fails."""
        failures, code, reason = 0, None, ""
        try:
            while True:
                self._status(Status("connecting", code=code, reason=reason))
                code, reason, ready = await self._connect_once()
                self._last_drop = f"{code} {reason}".strip() if code else reason
                if self._fatal is not None:
                    break
                if code == Close.POLICY_VIOLATION and not (
                    self._provider is not None and reason == "token expired"
                ):
                    raise AuthenticationError(f"closed by the server: {code} {reason}")
                failures = 0 if ready else failures + 1
                self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]
                delay = random.uniform(0, min(self._cap, self._base * 2 ** min(failures, 32)))
                self._status(Status("reconnecting", delay, code, reason))
                await asyncio.sleep(delay)
        except ClientError as error:
            self._stop(error, error)
        self._status(Status("closed", code=code, reason=str(self._fatal or reason)))

    async def _connect_once(self) -> tuple[int | None, str, bool]:
        """One connection, from connecting to its drop: (close code, reason, was it ready)."""
        try:
            # NOTE: no limit on what the server sends: a page of big reports is legitimate.
            ws = await websockets.connect(self.url, max_size=None, open_timeout=self._timeout)
        except InvalidURI as error:
            raise ClientError(f"not a WebSocket URL: {error}") from None
        except (OSError, InvalidHandshake, TimeoutError) as error:
            return None, f"cannot connect to {self.url}: {error}", False
        reader = asyncio.create_task(self._read(ws), name="reports-client-reader")
        ready, failure = False, ""
        try:
            await self._login(ws)
            feed = self._feed
            if feed is not None and feed.ws is not ws:
                try:
                    await self._subscribe(ws, feed)
                except InvalidRequest as error:  # NOTE: the caller's names, say: theirs to see
                    feed.fail(error)
            self._ws, ready = ws, True
            self._ready.set()
            self._status(Status("connected"))
            await asyncio.shield(reader)
        except (_Dropped, TimeoutError):
            pass
        except AuthenticationError:
            raise
        except ClientError as error:
            failure = str(error)
        finally:
            if not reader.done():
                await ws.close()
                await reader
        return ws.close_code, ws.close_reason or failure, ready

    async def _login(self, ws: ClientConnection) -> None:
        token = self._token
        if self._provider is not None:
            try:
                token = await self._provider()
            except Exception as error:
                raise AuthenticationError(f"the token provider failed: {error!r}") from error
        assert token is not None
        await self._exchange(ws, Auth(token=token), within=self._timeout)

    async def _refresh(self, ws: ClientConnection) -> None:
        """Send a fresh token on ``ws`` (the server warned of the expiry)."""
        assert self._provider is not None
        try:
            token = await self._provider()
            await self._exchange(ws, Auth(token=token), within=self._timeout)
        except (_Dropped, TimeoutError, Unavailable, RateLimited):
            return  # NOTE: not refused; the next connection logs in with a fresh token
        except Exception as error:
            self._stop(AuthenticationError(f"the token could not be refreshed: {error}"))
            await ws.close()

    async def _read(self, ws: ClientConnection) -> None:
        """Route each message of ``ws``: replies to their requests, events to changes()."""
        try:
            async for data in ws:
                feed, item = self._route(ws, data)
                if feed is not None and item is not None:
                    await feed.put(item, lambda: bool(self._pending))
        except ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ready.clear()
                self._ws = None
            if self._feed is not None and self._feed.ws is ws:
                self._feed.live = False
            for future, sent_on, _ in list(self._pending.values()):
                if sent_on is ws and not future.done():
                    if self._closing:  # NOTE: no one waits for it now: no error to report
                        future.cancel()
                    else:
                        future.set_exception(_Dropped(sent=True))

    def _route(
        self, ws: ClientConnection, data: str | bytes
    ) -> tuple[_Feed | None, ReportEvent | Resync | None]:
        try:
            message = (
                msgspec.json.decode(data) if isinstance(data, str) else msgspec.msgpack.decode(data)
            )
        except msgspec.DecodeError:
            return None, None
        if not isinstance(message, dict):
            return None, None
        if "result" in message or "error" in message:
            entry = self._pending.get(message.get("id", -1))
            if entry is not None and not entry[0].done():
                try:
                    if entry[2] is not None and "result" in message:
                        entry[2](message["result"])
                    entry[0].set_result(message)
                except msgspec.ValidationError as error:
                    entry[0].set_exception(ClientError(f"an unexpected reply: {error}"))
            return None, None
        kind, feed = message.get("type"), self._feed
        if kind == "token.expiring" and self._provider is not None:
            task = asyncio.create_task(self._refresh(ws), name="reports-client-refresh")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if feed is None or not feed.live or feed.ws is not ws or feed.last is None:
            return None, None
        if kind == "resync":
            feed.last = int(message["version"])
            return feed, Resync(feed.last, feed.epoch or "")
        if kind not in ("report.added", "report.updated", "report.removed"):
            return None, None
        try:
            event = msgspec.convert(message, ReportEvent)
        except msgspec.ValidationError:
            return None, None
        if event.version <= feed.last:
            return None, None  # NOTE: already received (a replay overlapping live pushes)
        feed.last = event.version
        return feed, event

    def _stop(self, error: ClientError, feed_error: BaseException | None = None) -> None:
        """End everything with ``error``: pending and later requests, and changes()."""
        if self._fatal is None and not self._closing:
            self._fatal = error
        self._ready.set()  # NOTE: wakes requests waiting for a connection, to raise
        for future, _, _ in list(self._pending.values()):
            if not future.done():
                future.set_exception(error)
        if self._feed is not None:
            self._feed.fail(feed_error or error)

    def _status(self, status: Status) -> None:
        if self._on_status is not None:
            self._on_status(status)
