"""Background tasks of the service (feed, watchdog, token guard, senders): starting, stopping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger("reports_service.tasks")

# NOTE: the event loop keeps only weak references to tasks: one nobody holds may vanish
#   mid-way, and its exception would never be seen. Fire-and-forget tasks are held here.
_RUNNING: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Run ``coro`` in the background, held until it ends; an exception it raises is logged."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _RUNNING.add(task)
    task.add_done_callback(_finished)
    return task


def running() -> frozenset[asyncio.Task[Any]]:
    """The tasks started by :func:`spawn` in the running loop that have not ended yet."""
    loop = asyncio.get_running_loop()
    return frozenset(task for task in _RUNNING if task.get_loop() is loop)


def _finished(task: asyncio.Task[Any]) -> None:
    _RUNNING.discard(task)
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error("background task %s failed", task.get_name(), exc_info=error)


async def cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has finished."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
