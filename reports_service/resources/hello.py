from __future__ import annotations

from falcon.asgi import Request, Response


class HelloResource:
    """GET /hello, as in the tutorial."""

    async def on_get(self, req: Request, resp: Response) -> None:
        resp.media = {"hello": "world"}
