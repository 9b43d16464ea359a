from __future__ import annotations

from pathlib import Path

import falcon
from falcon.asgi import Request, Response

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


class IndexResource:
    """GET /: the browser page."""

    async def on_get(self, req: Request, resp: Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.data = (STATIC_DIR / "index.html").read_bytes()
