"""uvicorn serving the app in this process, so that its objects can be looked at."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from reports_service.app import create_app
from reports_service.config import Settings
from reports_service.server import uvicorn_options

from .server import free_port


@contextlib.asynccontextmanager
async def uvicorn_in_process(settings: Settings, **overrides: Any) -> AsyncIterator[int]:
    """Serve create_app(settings) on a free port (yielded) with serve's options."""
    overrides = {"host": "127.0.0.1", "port": free_port(), "log_level": "warning", **overrides}
    options = uvicorn_options(settings, **overrides)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), **options))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield options["port"]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
