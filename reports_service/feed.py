"""The change feed: notices changes committed by any process and fans them out in this one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from .errors import ServiceError
from .metrics import FEED_LAG, FEED_VERSION, QUEUE_DEPTH, SUBSCRIBERS
from .records import Change, utcnow
from .repository import ReportRepository

logger = logging.getLogger("reports_service.feed")

BATCH = 500
RETRY_INTERVAL = 0.5
STOP_TIMEOUT = 5.0


class Subscriber(Protocol):
    def deliver(self, change: Change) -> None:
        """Take one change; must not block (the feed calls every subscriber in turn)."""

    @property
    def queue_depth(self) -> int:
        """Messages waiting to be sent to this subscriber."""


class ChangeFeed:
    """Reads the changelog past the last version seen whenever something was committed.

    ``version`` is the latest change this process has fanned out. Every change after it will be
    delivered, once, in version order, to every subscriber registered at that time.
    """

    def __init__(self, repository: ReportRepository, *, interval: float) -> None:
        self._repository = repository
        self._interval = interval
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.version: int | None = None

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def add(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)
        SUBSCRIBERS.set(len(self._subscribers))

    def discard(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        SUBSCRIBERS.set(len(self._subscribers))

    async def start(self) -> None:
        if self._task is None:
            with contextlib.suppress(ServiceError):
                self.version = (await self._repository.changelog_bounds())[1]
            self._task = asyncio.create_task(self._run(), name="change-feed")

    async def stop(self) -> None:
        # NOTE: asked to stop rather than cancelled, so a connection being opened is closed
        #   properly; cancelled only if a database call hangs.
        if self._task is not None:
            self._stopping.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None

    async def _run(self) -> None:
        watcher = self._repository.commit_watcher()
        failing = False
        try:
            while not self._stopping.is_set():
                try:
                    if await watcher.changed():
                        await self._catch_up()
                    if failing:
                        logger.info("change feed recovered at version %s", self.version)
                    failing = False
                except ServiceError as error:
                    if not failing:
                        logger.warning("change feed paused: %s", error)
                    failing = True
                with contextlib.suppress(TimeoutError):
                    pause = RETRY_INTERVAL if failing else self._interval
                    await asyncio.wait_for(self._stopping.wait(), pause)
        finally:
            await watcher.close()

    async def _catch_up(self) -> None:
        if self.version is None:
            self.version = (await self._repository.changelog_bounds())[1]
            return
        while True:
            batch = await self._repository.changes_since(self.version, limit=BATCH)
            for change in batch:
                self.version = change.version
                for subscriber in list(self._subscribers):
                    subscriber.deliver(change)
                # NOTE: let the connections' senders drain between changes, so that a burst
                #   (one transaction adding many reports) does not overflow a subscriber that
                #   keeps up.
                await asyncio.sleep(0)
            if batch:
                FEED_VERSION.set(batch[-1].version)
                FEED_LAG.set((utcnow() - batch[-1].changed_at).total_seconds())
                depths = [s.queue_depth for s in self._subscribers]
                QUEUE_DEPTH.set(max(depths, default=0))
            if len(batch) < BATCH:
                return
