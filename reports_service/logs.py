"""Log lines as text or JSON, each line of one WebSocket connection tagged with its id."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime

from .transport import CLIENT_FAULTS

connection_id: ContextVar[str] = ContextVar("connection_id", default="-")
subject: ContextVar[str] = ContextVar("subject", default="")  # who the connection is, once known

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(conn)s] %(message)s"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def new_connection_id() -> str:
    """Tag every log line from here on in this task (one WebSocket connection) with a new id."""
    value = uuid.uuid4().hex[:12]
    connection_id.set(value)
    subject.set("")
    return value


def _conn() -> str:
    """The connection's id, and its subject once authenticated (never its token)."""
    who = subject.get()
    if not who.isprintable():
        # NOTE: a JWT's `sub` is the provider's text: a line break in it would forge log lines.
        who = who.encode("unicode_escape").decode("ascii")
    return f"{connection_id.get()} {who}" if who else connection_id.get()


class ConnectionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.conn = _conn()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, conn (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "conn": connection_id.get(),
        }
        if who := subject.get():
            line["subject"] = who
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    """The service's own lines to stderr; in JSON mode uvicorn's lines become JSON too."""
    formatter = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    logger = logging.getLogger("reports_service")
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler(sys.stderr))
    for handler in logger.handlers:
        handler.setFormatter(formatter)
        handler.addFilter(ConnectionFilter())
    logger.setLevel(level.upper())
    logger.propagate = False
    logging.getLogger("uvicorn.error").addFilter(CLIENT_FAULTS)
    if fmt == "json":
        for name in UVICORN_LOGGERS:
            for handler in logging.getLogger(name).handlers:
                handler.setFormatter(formatter)
                handler.addFilter(ConnectionFilter())
