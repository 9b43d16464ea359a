"""The servers a benchmark run measures, and how one of them is started and spoken to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from benchmarks import TOKEN
from benchmarks.procs import Proc, Processes, free_port, log, pinned, python, wait_for_port
from benchmarks.servers import BARE_BROADCAST, BARE_ECHO, DICT_BASELINE, SERVICE

BARE = "bare"
BASELINE = "baseline"
SQLITE = "sqlite"
SQLITE_BIG = "sqlite-big"
SQLITE_BIG_NO_CACHE = "sqlite-big-nocache"
POSTGRES = "postgres"
ALL_TARGETS = (BARE, BASELINE, SQLITE, SQLITE_BIG, SQLITE_BIG_NO_CACHE, POSTGRES)
BROADCAST = "broadcast"
"""The bare broadcast server: only the fan-out scenarios use it, not --targets."""


@dataclass(frozen=True)
class Target:
    """One server to benchmark: an ASGI app, the route it is spoken to on, and its data."""

    key: str
    label: str
    app: str
    path: str
    expect: str  # "echo": replies equal queries; "report": replies are {"report": title}
    authenticated: bool
    names: int  # queries pick report1 .. reportNAMES at random
    database_url: str | None = None
    settings: tuple[tuple[str, str], ...] = ()  # REPORTS_* of this target only

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        # NOTE: a load generator is one client sending thousands of messages a second: the
        #   service's per-connection rate limit (REPORTS_RATE_LIMIT) is off for it.
        extra = {"REPORTS_RATE_LIMIT": "0", "REPORTS_MAX_CONNECTIONS_PER_TOKEN": "100000"}
        if self.database_url:
            extra["REPORTS_DATABASE_URL"] = self.database_url
        return {**env, **extra, **dict(self.settings)}


def bare_echo() -> Target:
    return Target(BARE, "bare ASGI echo (no framework)", BARE_ECHO, "/", "echo", False, 4)


def bare_broadcast() -> Target:
    # NOTE: it never says that a WebSocket is served (see handshake.py), so every connection
    #   counts as pending: the service's uvicorn options would refuse all but the first few.
    caps = (("REPORTS_MAX_PENDING", "1000000"), ("REPORTS_MAX_PENDING_PER_ADDRESS", "1000000"))
    label = "bare ASGI broadcast (no framework)"
    return Target(BROADCAST, label, BARE_BROADCAST, "/", "echo", False, 4, settings=caps)


def dict_baseline() -> Target:
    return Target(
        BASELINE,
        "tutorial Falcon app, dict (baseline)",
        DICT_BASELINE,
        "/reports",
        "report",
        True,
        4,
    )


def service(key: str, label: str, database_url: str, names: int, **settings: str) -> Target:
    extra = tuple((f"REPORTS_{name.upper()}", value) for name, value in settings.items())
    return Target(key, label, SERVICE, "/reports", "report", True, names, database_url, extra)


@dataclass
class Server:
    """A running target: one uvicorn process."""

    target: Target
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.target.path}"

    def load_args(self) -> list[str]:
        """The load generator's arguments that say how to speak to this server."""
        args = ["--url", self.url, "--expect", self.target.expect]
        args += ["--names", str(self.target.names), "--server-pid", str(self.proc.pid)]
        if self.target.authenticated:
            args += ["--token", TOKEN]
        return args


def start_server(
    procs: Processes,
    target: Target,
    *,
    env: Mapping[str, str],
    cpu: str | None,
    log_dir: Path,
    nofile: int = 0,
    tag: str = "",
) -> Server:
    """Start ``target`` under uvicorn, pinned to ``cpu``, and wait until it listens."""
    port = free_port()
    command = python("-m", "benchmarks.servers.launch", target.app, "--port", str(port))
    if nofile:
        command += ["--nofile", str(nofile)]
    name = f"{target.key}{tag}"
    proc = procs.start(
        f"server {name}",
        pinned(command, cpu),
        env=target.environment(env),
        log_path=log_dir / f"server-{name}.log",
    )
    wait_for_port(port, proc, timeout=60.0)
    log(f"server {name} (pid {proc.pid}) listening on 127.0.0.1:{port}")
    return Server(target, proc, port)
