"""Running uvicorn with the settings a production deployment wants."""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any

import uvicorn

from .config import Settings
from .errors import ServiceError
from .handshake import Limits, protocol_for
from .logs import configure_logging
from .transport import UVICORN_WS

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is imported


class CannotListen(ServiceError):
    """The address or port cannot be listened on (in use, not this machine's, not permitted)."""


def check_can_listen(host: str, port: int) -> None:
    """Bind and release ``host:port`` as uvicorn will, so a port in use is one line, not a crash."""
    # NOTE: uvicorn binds only after the app's start-up ran, then exits 3 with a multi-line log.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as error:
        raise CannotListen(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def uvicorn_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """uvicorn.run() keyword arguments: small messages, no compression, pings, sansio protocol,
    and an HTTP protocol with a deadline on request heads (see handshake.py)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "ws": UVICORN_WS,
        "ws_max_size": settings.max_message_bytes,
        "ws_per_message_deflate": False,
        "ws_ping_interval": settings.ws_ping_interval,
        "ws_ping_timeout": settings.ws_ping_timeout,
        "lifespan": "on",
        # NOTE: uvicorn's debug output shows every frame, tokens included: it stops at info.
        "log_level": "info"
        if settings.log_level.lower() == "debug"
        else settings.log_level.lower(),
        "timeout_graceful_shutdown": settings.shutdown_grace,
        "server_header": False,
        # NOTE: uvicorn's access log shows query strings, which may hold a token
        #   (?access_token=); the service logs each request itself (middleware/logging.py).
        "access_log": False,
    }
    options.update(overrides)
    if not callable(options.get("http")):
        limits = Limits(
            settings.handshake_timeout, settings.max_pending, settings.max_pending_per_address
        )
        options["http"] = protocol_for(limits, options.get("http", "auto"))
    return options


def serve(settings: Settings, **overrides: Any) -> None:
    configure_logging(settings.log_level, settings.log_format)
    options = uvicorn_options(settings, **overrides)
    check_can_listen(options["host"], options["port"])
    if options["workers"] > 1 and not os.environ.get(MULTIPROC_ENV):
        # NOTE: set before the workers start, so /metrics adds up every worker's metrics.
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="reports-metrics-")
    uvicorn.run("reports_service.asgi:app", **options)
