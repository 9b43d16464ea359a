from __future__ import annotations

import logging
from typing import Any

from ..errors import ServiceError
from ..feed import ChangeFeed
from ..metrics import process_exited
from ..migrate import require_head
from ..repository import ReportRepository
from ..resources.registry import ConnectionRegistry, TokenGuard
from ..transport import check as check_internals

logger = logging.getLogger("reports_service")


class LifecycleMiddleware:
    """Checks the database at start-up and disposes of its connections at shutdown."""

    def __init__(
        self,
        repository: ReportRepository,
        feed: ChangeFeed,
        registry: ConnectionRegistry,
        guard: TokenGuard,
        database: str,
    ) -> None:
        self._repository = repository
        self._feed = feed
        self._registry = registry
        self._guard = guard
        self._database = database

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        check_internals()
        await self._check_schema()
        await self._feed.start()
        await self._registry.start()
        await self._guard.start()

    async def _check_schema(self) -> None:
        try:
            await require_head(self._repository)
        except ServiceError as error:
            logger.error("database %s: %s", self._database, error)
        else:
            logger.info("serving reports from %s", self._database)

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        await self._guard.stop()
        await self._registry.stop()
        await self._feed.stop()
        await self._repository.dispose()
        process_exited()
