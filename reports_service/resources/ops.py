from __future__ import annotations

import falcon
from falcon.asgi import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import ServiceError
from ..metrics import exposition
from ..migrate import require_head
from ..repository import ReportRepository


class HealthResource:
    """GET /healthz: the process is alive and serving."""

    async def on_get(self, req: Request, resp: Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    """GET /readyz: the database answers and its schema is at the latest migration."""

    def __init__(self, repository: ReportRepository) -> None:
        self._repository = repository

    async def on_get(self, req: Request, resp: Response) -> None:
        try:
            revision = await require_head(self._repository)
        except ServiceError as error:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "unavailable", "reason": str(error)}
            return
        resp.media = {"status": "ready", "migration": revision}


class MetricsResource:
    """GET /metrics: Prometheus text format."""

    async def on_get(self, req: Request, resp: Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = exposition()
