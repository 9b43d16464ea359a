"""Prometheus metrics, multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set (several workers)."""

from __future__ import annotations

import os
import time

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

CONNECTIONS = Gauge(
    "reports_connections_open",
    "WebSocket connections and event streams open now, by route",
    ["route"],
    multiprocess_mode="livesum",
)
AUTH_FAILURES = Counter(
    "reports_auth_failures_total", "Refused /reports authentications, by reason", ["reason"]
)
MESSAGES = Counter(
    "reports_messages_total",
    "Messages received on /reports, by kind (plain, a request type, or invalid)",
    ["kind"],
)
REPLIES = Counter(
    "reports_replies_total",
    "Replies sent on /reports, by outcome (ok, not_found, or an error code)",
    ["outcome"],
)
HTTP_REQUESTS = Counter(
    "reports_http_requests_total",
    "HTTP requests answered, by route (its template) and status",
    ["route", "status"],
)
QUERY_SECONDS = Histogram(
    "reports_query_seconds",
    "Time of one database query answering a request (cached answers make none)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)


def query_done(started: float) -> None:
    """A query that began at ``started`` (``time.perf_counter()``) has been answered."""
    # NOTE: a function, not a context manager: nothing allocated on the read path.
    QUERY_SECONDS.observe(time.perf_counter() - started)


FEED_LAG = Gauge(
    "reports_feed_lag_seconds",
    "Time from a change's commit to its fan-out here, for the latest change",
    multiprocess_mode="livemax",
)
FEED_VERSION = Gauge(
    "reports_feed_version",
    "Latest changelog version this process has fanned out",
    multiprocess_mode="livemax",
)
SUBSCRIBERS = Gauge(
    "reports_subscribers", "Connections with a live subscription", multiprocess_mode="livesum"
)
QUEUE_DEPTH = Gauge(
    "reports_subscriber_queue_depth",
    "Deepest subscriber outgoing queue after the latest fan-out",
    multiprocess_mode="livemax",
)
CLOSES = Counter("reports_closes_total", "WebSocket connections ended, by close code", ["code"])


def count_close(code: int | str) -> None:
    """One connection ended with ``code`` (a close code, or "403" for a refused handshake)."""
    CLOSES.labels(str(code)).inc()


class Tally:
    """Messages on /reports by (kind, outcome), counted on the hot path as plain integers;
    flush() adds them to the messages and the replies Counters.

    prometheus-client takes a lock for every increment; a message costs two of them otherwise.
    NOTE: one exact dict (not a collections.Counter) keyed by the pair: one increment per
    message, on the interpreter's fast path for dicts. Flushed and counted in the event loop's
    thread only, so it is cleared in place and may be bound once.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def flush(self) -> None:
        counts = self.counts
        pairs = list(counts.items())
        counts.clear()
        for (kind, outcome), count in pairs:
            MESSAGES.labels(kind).inc(count)
            REPLIES.labels(outcome).inc(count)


TALLY = Tally()


def flush() -> None:
    TALLY.flush()


def exposition() -> bytes:
    """The metrics of this process, or of every worker in multiprocess mode."""
    flush()
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def process_exited() -> None:
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
