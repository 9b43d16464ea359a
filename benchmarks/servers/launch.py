"""Serve one ASGI app with the service's production uvicorn options: the same for every app.

`python -m benchmarks.servers.launch MODULE:APP --port N` runs uvicorn on 127.0.0.1 with
``reports_service.server.uvicorn_options`` (websockets-sansio, no per-message deflate, the
service's ping and size limits), plus uvloop and httptools named explicitly, one process.
Settings come from the REPORTS_* environment like the service's own `serve`.
"""

from __future__ import annotations

import argparse
import resource
from collections.abc import Sequence
from typing import Any

import uvicorn

from reports_service.config import Settings
from reports_service.logs import configure_logging
from reports_service.server import uvicorn_options

BENCH_OVERRIDES: dict[str, Any] = {
    "host": "127.0.0.1",
    "workers": 1,
    "loop": "uvloop",
    "http": "httptools",
    "ws": "websockets-sansio",
    "ws_per_message_deflate": False,
}


def options(settings: Settings, port: int) -> dict[str, Any]:
    """The keyword arguments for uvicorn.run(): production options, bench overrides."""
    return uvicorn_options(settings, **BENCH_OVERRIDES, port=port)


def raise_fd_limit(wanted: int) -> None:
    """Lift RLIMIT_NOFILE to ``wanted`` (or as far as the hard limit allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.servers.launch")
    parser.add_argument("app", help="MODULE:ATTRIBUTE of the ASGI app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nofile", type=int, default=0, help="raise the fd limit to this")
    args = parser.parse_args(argv)
    if args.nofile:
        raise_fd_limit(args.nofile)
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    uvicorn.run(args.app, **options(settings, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
