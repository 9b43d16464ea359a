"""The baseline: Falcon's WebSocket tutorial as written, reports in a dict.

As in the tutorial, a middleware accepts the connection and reads the first message as the
access token; the /reports route then answers each report name with ``{"report": title}``
or ``{"error": "report not found"}``, through Falcon's default (stdlib json) media handler.
The tutorial's per-message ``logger.info`` is left out, so that logging does not slow the
baseline down; everything else a message goes through is the tutorial's.
"""

from __future__ import annotations

from typing import Any

import falcon.asgi
from falcon import WebSocketDisconnected
from falcon.asgi import Request, WebSocket

from benchmarks import TOKEN

REPORTS = {
    f"report{n}": {"title": f"Report {n}", "content": f"This is the content of report {n}"}
    for n in range(1, 5)
}


class AuthMiddleware:
    """The tutorial's: accept, then the first message on a protected route must be the token."""

    def __init__(self, protected_routes: list[str]) -> None:
        self.protected_routes = protected_routes

    async def process_request_ws(self, req: Request, ws: WebSocket) -> None:
        await ws.accept()
        if req.path not in self.protected_routes:
            return
        token = await ws.receive_text()
        if token != TOKEN:
            await ws.close(1008)
            raise WebSocketDisconnected(1008)


class ReportsResource:
    async def on_websocket(self, req: Request, ws: WebSocket) -> None:
        while True:
            try:
                query = await ws.receive_text()
            except WebSocketDisconnected:
                return
            report = REPORTS.get(query)
            if report is None:
                await ws.send_media({"error": "report not found"})
            else:
                await ws.send_media({"report": report["title"]})


def create_app() -> falcon.asgi.App[Any, Any]:
    app: falcon.asgi.App[Any, Any] = falcon.asgi.App(middleware=[AuthMiddleware(["/reports"])])
    app.add_route("/reports", ReportsResource())
    return app


app = create_app()
