from __future__ import annotations

from pathlib import Path

import falcon
from falcon.asgi import Request, Response

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


class IndexResource:
    """GET /: the browser page, read once when the app is built."""

    def __init__(self) -> None:
        self._page = (STATIC_DIR / "index.html").read_bytes()

    async def on_get(self, req: Request, resp: Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.data = self._page
