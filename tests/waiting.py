"""Waiting for a condition instead of for a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def eventually(
    check: Callable[[], object], within: float = 10.0, interval: float = 0.05
) -> Any:
    """Call ``check`` (a function or a coroutine function) until it returns something truthy;
    that value. An AssertionError, with the last value, if it has not within ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within}s: last {result!r}")
        await asyncio.sleep(interval)
