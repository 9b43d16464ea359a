from __future__ import annotations

import falcon
from falcon.asgi import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import ServiceError
from ..metrics import exposition
from ..migrate import head_revision
from ..repository import ReportRepository


class HealthResource:
    """GET /healthz: the process is alive and serving."""

    async def on_get(self, req: Request, resp: Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    """GET /readyz: the database answers and its schema is at the latest migration."""

    def __init__(self, repository: ReportRepository) -> None:
        self._repository = repository
        self._head = head_revision()

    async def on_get(self, req: Request, resp: Response) -> None:
        try:
            revision = await self._repository.schema_revision()
        except ServiceError as error:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "unavailable", "reason": str(error)}
            return
        if revision != self._head:
            resp.status = falcon.HTTP_503
            resp.media = {
                "status": "unavailable",
                "reason": f"database at migration {revision or 'none'}, expected {self._head}: "
                "run `reports-service migrate`",
            }
            return
        resp.media = {"status": "ready", "migration": revision}


class MetricsResource:
    """GET /metrics: Prometheus text format."""

    async def on_get(self, req: Request, resp: Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = exposition()
