from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    """Send the service's own log lines to stderr (uvicorn configures its own loggers)."""
    logger = logging.getLogger("reports_service")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
