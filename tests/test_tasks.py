"""Background tasks stay referenced until they end, and an exception in one is logged."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from reports_service import tasks


async def test_a_spawned_task_is_held_until_it_ends() -> None:
    release = asyncio.Event()
    ran = []

    async def work() -> None:
        await release.wait()
        ran.append(True)

    task = tasks.spawn(work(), name="held")
    del task
    gc.collect()
    assert [t.get_name() for t in tasks.running()] == ["held"]
    release.set()
    await asyncio.wait(tasks.running())
    await asyncio.sleep(0)  # NOTE: done callbacks run in the next iteration
    assert ran == [True]
    assert not tasks.running()


async def test_an_exception_in_a_spawned_task_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="reports_service.tasks"):
        task = tasks.spawn(fail(), name="failing")
        await asyncio.wait({task})
        await asyncio.sleep(0)  # NOTE: done callbacks run in the next iteration
    [record] = [r for r in caplog.records if r.name == "reports_service.tasks"]
    assert "failing" in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == "boom"
    assert not tasks.running()


async def test_a_cancelled_task_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    task = tasks.spawn(asyncio.sleep(3600), name="cancelled")
    with caplog.at_level(logging.ERROR, logger="reports_service.tasks"):
        await tasks.cancel(task)
        await asyncio.sleep(0)
    assert not [r for r in caplog.records if r.name == "reports_service.tasks"]
