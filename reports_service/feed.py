"""The change feed: notices changes committed by any process and fans them out in this one.

It also keeps the per-process report cache correct: every change carries the report as it is
after the change, and a query first asks the (microsecond) commit watcher whether anything was
committed since, catching up before it trusts the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

from . import tasks
from .errors import ServiceError
from .metrics import FEED_LAG, FEED_VERSION, QUEUE_DEPTH, SUBSCRIBERS, query_done
from .records import Change, Report, utcnow
from .repository import ReportRepository
from .watch import CommitWatcher, watcher_for

logger = logging.getLogger("reports_service.feed")

BATCH = 500
# NOTE: the most changes of one read, and about the most characters of them, pushed together
#   before the loop is let go; PUSH_BYTES stays below uvicorn's 64 KiB write high-water mark.
PUSH_TOGETHER = 16
PUSH_BYTES = 32_768
RETRY_INTERVAL = 0.5
STOP_TIMEOUT = 5.0
MISSING = object()
MAX_CACHED_CONTENT = 16_384  # characters; larger reports are always read from the database
ENTRY_OVERHEAD = 400
"""Bytes a cached report takes besides its text: the objects, two datetimes, the dict slot."""


class Subscriber(Protocol):
    def deliver(self, change: Change) -> None:
        """Take one change; must not block (the feed calls every subscriber in turn)."""

    @property
    def queue_depth(self) -> int:
        """Messages waiting to be sent to this subscriber."""


class ChangeFeed:
    """Reads the changelog past the last version seen whenever something was committed.

    ``version`` is the latest change this process has applied. Every change after it will be
    delivered, once, in version order, to every subscriber registered at that time.
    """

    def __init__(
        self,
        repository: ReportRepository,
        *,
        interval: float,
        cache_bytes: int = 0,
        watcher: CommitWatcher | None = None,
        together: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        """``together``: a block whose pushes are written together, each subscriber's in one
        write (transport.pushes_together, where the server allows it)."""
        self._repository = repository
        self._together = together
        self._interval = interval
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # NOTE: set by the watcher, by written(), and by stop()
        self._watcher = watcher or watcher_for(repository.engine)
        self._watcher.wake_with(self._wake.set)
        self._lock = asyncio.Lock()
        self._behind = True  # NOTE: something may be committed that no read started after
        self._catch_ups = 0
        self._checked_this_tick = False
        self._loop: asyncio.AbstractEventLoop | None = None  # NOTE: the loop start() ran in
        # NOTE: an OrderedDict evicts the oldest in O(1); a dict's first key slows down as
        #   deletions pile up at its front.
        self._cache: OrderedDict[str, Report | None] = OrderedDict()
        self._cache_budget = cache_bytes
        self._cache_bytes = 0  # NOTE: an estimate (ENTRY_OVERHEAD + characters), kept exact
        self.version: int | None = None
        self.epoch = ""  # NOTE: the database's (see models.DatabaseEpoch), read with version

    def add(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)
        SUBSCRIBERS.set(len(self._subscribers))

    def discard(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        SUBSCRIBERS.set(len(self._subscribers))

    # -- reading through the cache ---------------------------------------------------------

    def cached(self, name: str) -> object:
        """The report ``name`` (a Report, or None) from the cache, if it may be trusted now
        without waiting for anything; else MISSING, and :meth:`report` answers."""
        # NOTE: the same checks as report()'s, without a coroutine: most queries are hits.
        if not self._watcher.connected or self.version is None:
            return MISSING
        if self._behind or self._lock.locked() or self._is_behind_this_tick():
            return MISSING
        return self._cache.get(name, MISSING)

    async def report(self, name: str) -> Report | None:
        """The report ``name`` as committed when this call started: cached, or read."""
        if self._watcher.connected and self.version is not None:
            if self._behind or self._lock.locked() or self._is_behind_this_tick():
                await self.catch_up()
            cached = self._cache.get(name, MISSING)
            if cached is not MISSING:
                return cached  # type: ignore[return-value]
        seen = self.version
        started = time.perf_counter()
        report = await self._repository.get_report(name=name)
        query_done(started)
        # NOTE: kept only if no change was applied during the read; else it may be stale.
        if self._cacheable(report) and seen is not None and seen == self.version:
            self._store(report.name if report is not None else name, report)
        return report

    def written(self, change: Change | None = None) -> None:
        """This process just committed a change: read the changelog before trusting the cache.

        (Its own PostgreSQL notification may arrive after the writer's reply.) The loop is woken
        too, so this process's subscribers get the change at once. Given the ``change`` it
        committed, when that is the next version, it is applied and pushed here, without
        waiting for a read, also while one is under way (the read skips it: it applies only
        versions after the latest applied); the next read still looks for others' commits.
        """
        if change is not None and self.version is not None and change.version == self.version + 1:
            self._apply(change)
            self._measure(change)
        self._behind = True
        self._wake.set()

    def _is_behind_this_tick(self) -> bool:
        # NOTE: one check per event-loop iteration serves every query handled in it: their
        #   messages had all arrived before the iteration's first check, and the flag is reset
        #   (call_soon) before the next iteration handles any newly arrived message.
        if self._checked_this_tick:
            return False
        self._checked_this_tick = True
        # NOTE: the loop kept, not asked for: on Python 3.11 asking costs a getpid() system
        #   call, once per message at one connection (benchmarks: syscalls).
        (self._loop or asyncio.get_running_loop()).call_soon(self._new_tick)
        return self._is_behind()

    def _is_behind(self) -> bool:
        """Whether something may have been committed that no read has started after.

        The watcher forgets a commit once asked; ``_behind`` remembers it until a read starts.
        """
        if not self._behind and self._watcher.changed():
            self._behind = True
        return self._behind

    def _new_tick(self) -> None:
        self._checked_this_tick = False

    def _cacheable(self, report: Report | None) -> bool:
        return bool(self._cache_budget) and (
            report is None or len(report.content) <= MAX_CACHED_CONTENT
        )

    def _store(self, name: str, report: Report | None) -> None:
        """Cache ``report`` under ``name``, evicting the oldest entries beyond the budget."""
        cache = self._cache
        if name in cache:
            self._cache_bytes -= _cost(name, cache[name])
        cache[name] = report
        self._cache_bytes += _cost(name, report)
        while self._cache_bytes > self._cache_budget and cache:
            old_name, old = cache.popitem(last=False)
            self._cache_bytes -= _cost(old_name, old)

    def _forget(self, name: str) -> None:
        self._cache_bytes -= _cost(name, self._cache.pop(name))

    @property
    def cached_bytes(self) -> int:
        """What the cache holds now, by the same estimate as its budget."""
        return self._cache_bytes

    # -- the loop --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._task is None:
            with contextlib.suppress(ServiceError):  # NOTE: the loop retries
                await self._watcher.connect()
                await self.catch_up()
            self._task = asyncio.create_task(self._run(), name="change-feed")

    async def stop(self) -> None:
        # NOTE: asked to stop rather than cancelled, so a connection being opened is closed
        #   properly; cancelled only if a database call hangs.
        if self._task is not None:
            self._stopping.set()
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT)
            except TimeoutError:
                await tasks.cancel(self._task)
            self._task = None
        await self._watcher.close()
        self._loop = None

    async def _run(self) -> None:
        """Reads whenever woken (see watch.py) or the watcher's pause has passed."""
        failing = False
        while not self._stopping.is_set():
            self._wake.clear()  # NOTE: before the check: a commit during it wakes the next one
            try:
                if not self._watcher.connected:
                    await self._watcher.connect()
                    self._behind = True
                if self._is_behind():
                    await self.catch_up()
                if failing:
                    logger.info("change feed recovered at version %s", self.version)
                failing = False
            except ServiceError as error:
                if not failing:
                    logger.warning("change feed paused: %s", error)
                failing = True
            with contextlib.suppress(TimeoutError):
                pause = RETRY_INTERVAL if failing else self._watcher.pause(self._interval)
                await asyncio.wait_for(self._wake.wait(), pause)

    async def catch_up(self) -> None:
        """Apply every change committed so far, once, in order."""
        asked = self._catch_ups
        async with self._lock:
            if self._catch_ups != asked and not self._is_behind():
                # NOTE: a catch-up finished while this one waited for the lock, and nothing was
                #   committed that its read may have missed. Without this, each query that
                #   arrives during one catch-up would read the changelog again, one by one.
                return
            self._behind = False  # NOTE: the read below starts after every commit seen so far
            try:
                await self._read_changes()
            except BaseException:
                self._behind = True
                raise
            self._catch_ups += 1

    async def _read_changes(self) -> None:
        if self.version is None:
            _, self.version, self.epoch = await self._repository.changelog_bounds()
            self._cache.clear()
            self._cache_bytes = 0
        while True:
            batch = await self._repository.changes_since(self.version, limit=BATCH)
            for group in _groups(batch):
                with self._together():  # NOTE: each subscriber's pushes in one write
                    for change in group:
                        if change.version > self.version:  # NOTE: else written() applied it
                            self._apply(change)
                if self._subscribers:
                    # NOTE: let the connections' senders drain between groups, so that a burst
                    #   (one transaction adding many reports) does not overflow a subscriber
                    #   that keeps up.
                    await asyncio.sleep(0)
            if batch:
                self._measure(batch[-1])
            if len(batch) < BATCH:
                break

    def _apply(self, change: Change) -> None:
        self.version = change.version
        name = change.report.name
        if name in self._cache:
            if change.op == "removed":
                self._store(name, None)
            elif self._cacheable(change.report):
                self._store(name, change.report)
            else:
                self._forget(name)
        for subscriber in list(self._subscribers):
            subscriber.deliver(change)

    def _measure(self, last: Change) -> None:
        FEED_VERSION.set(last.version)
        FEED_LAG.set((utcnow() - last.changed_at).total_seconds())
        QUEUE_DEPTH.set(max((s.queue_depth for s in self._subscribers), default=0))


def _groups(batch: list[Change]) -> Iterator[list[Change]]:
    """``batch`` in groups of at most PUSH_TOGETHER changes and about PUSH_BYTES characters."""
    group: list[Change] = []
    size = 0
    for change in batch:
        group.append(change)
        size += len(change.report.title) + len(change.report.content)
        if len(group) == PUSH_TOGETHER or size >= PUSH_BYTES:
            yield group
            group, size = [], 0
    if group:
        yield group


def _cost(name: str, report: Report | None) -> int:
    if report is None:
        return ENTRY_OVERHEAD + len(name)
    return ENTRY_OVERHEAD + len(name) + len(report.title) + len(report.content)
