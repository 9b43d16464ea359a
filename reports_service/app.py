"""The app factory: wires settings, engine, repository, middleware and routes."""

from __future__ import annotations

import functools
from typing import Any

import falcon.asgi

from . import handshake, problems, transport
from .access import Authenticator
from .config import Settings
from .errors import ServiceError
from .feed import ChangeFeed
from .jwt_keys import verifier_for
from .limits import FailureThrottle, TokenRates
from .logs import configure_logging
from .middleware import AuthMiddleware, LifecycleMiddleware, LoggingMiddleware, OriginMiddleware
from .protocol import BINARY, TEXT
from .repository import repository_for
from .resources.api import ReportListResource, ReportResource
from .resources.asyncapi import AsyncAPIResource
from .resources.changes import ChangesResource
from .resources.echo import EchoResource
from .resources.hello import HelloResource
from .resources.media import RawBinary, RawText
from .resources.openapi import OpenAPIResource
from .resources.ops import HealthResource, MetricsResource, ReadyResource
from .resources.registry import TokenGuard, registry_for
from .resources.reports import ReportsResource
from .resources.static import STATIC_DIR, IndexResource
from .service import ReportService
from .watch import watcher_for

PROTECTED_ROUTES = ("/reports", "/api/reports", "/api/reports/{name:path}", "/api/changes")


class App(falcon.asgi.App):  # type: ignore[type-arg]
    """Falcon's app, keeping each HTTP request's ``send`` and watching its ``receive`` for the
    client's disconnect (see transport.abort_response and transport.watch_disconnect), and
    ending each WebSocket's pending time (see handshake.py)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:  # type: ignore[override]
        if scope["type"] == "http":
            transport.keep_send(scope, send)
            receive = transport.watch_disconnect(scope, receive)
        try:
            await super().__call__(scope, receive, send)
        finally:
            if scope["type"] == "websocket":
                handshake.done(send)  # NOTE: a connection refused or ended is not pending


def create_app(settings: Settings | None = None) -> falcon.asgi.App[Any, Any]:
    """A new app on its own engine; nothing is shared between two apps."""
    settings = settings or Settings.from_env()
    repository = repository_for(settings)
    feed = ChangeFeed(
        repository,
        interval=settings.feed_interval,
        cache_bytes=int(settings.cache_mb * 2**20),
        watcher=watcher_for(repository.engine, settings.feed_wakeup),
        together=transport.pushes_together,
    )
    service = ReportService(repository, feed)
    registry = registry_for(settings)
    guard = TokenGuard(repository, registry, interval=settings.token_recheck)
    throttle = FailureThrottle(limit=settings.auth_failures, window=settings.auth_failure_window)
    rates = TokenRates(settings.rate_limit, settings.rate_burst)
    authenticator = Authenticator(repository, verifier_for(settings), ttl=settings.token_recheck)

    middleware: list[Any] = [
        LifecycleMiddleware(repository, feed, registry, guard, settings.masked_database_url()),
        LoggingMiddleware(),
        OriginMiddleware(settings.allowed_origins),
        AuthMiddleware(
            authenticator,
            PROTECTED_ROUTES,
            timeout=settings.auth_timeout,
            throttle=throttle,
            rates=rates,
            full=registry.full,
        ),
    ]
    app: falcon.asgi.App[Any, Any] = App(middleware=middleware)
    app.set_error_serializer(problems.serialize)
    app.add_error_handler(Exception, problems.last_resort)
    # NOTE: the most specific handler wins: Falcon's own still serve HTTPError and
    #   WebSocketDisconnected.
    app.add_error_handler(ServiceError, problems.unavailable)
    app.ws_options.media_handlers[TEXT] = RawText()
    app.ws_options.media_handlers[BINARY] = RawBinary()
    # NOTE: no receive buffer of Falcon's own: it costs a task per connection, and every route
    #   here is always waiting in receive, so it also learns of a disconnect at once.
    app.ws_options.max_receive_queue = 0

    app.add_route("/", IndexResource())
    app.add_route("/hello", HelloResource())
    app.add_route("/echo", EchoResource(registry, settings))
    app.add_route("/reports", ReportsResource(service, registry, settings, authenticator))
    app.add_route("/api/reports", ReportListResource(service))
    app.add_route("/api/reports/{name:path}", ReportResource(service, settings.max_message_bytes))
    app.add_route(
        "/api/changes",
        ChangesResource(
            service,
            registry,
            queue_size=settings.subscriber_queue,
            keepalive=settings.sse_keepalive,
        ),
    )
    app.add_route("/asyncapi.json", AsyncAPIResource())
    app.add_route("/openapi.json", OpenAPIResource())
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(repository))
    app.add_route("/metrics", MetricsResource())
    app.add_static_route("/static", STATIC_DIR)
    return app


@functools.cache
def app_from_env() -> falcon.asgi.App[Any, Any]:
    """The process's app: settings from the environment, logging set up; built once."""
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def __getattr__(name: str) -> Any:
    # NOTE: `uvicorn reports_service.app:app`, as in the tutorial, gets the same app as
    #   reports_service.asgi; importing this module builds nothing.
    if name == "app":
        return app_from_env()
    raise AttributeError(name)
