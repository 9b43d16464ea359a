from __future__ import annotations

import falcon
from falcon.asgi import Request, Response

from ..openapi import render


class OpenAPIResource:
    """GET /openapi.json: the document, built and encoded once."""

    def __init__(self) -> None:
        self._body = render().encode()

    async def on_get(self, req: Request, resp: Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body
