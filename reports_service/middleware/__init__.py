"""Falcon middleware: lifecycle, connection logging, first-message authentication."""

from .auth import AuthMiddleware
from .lifecycle import LifecycleMiddleware
from .logging import LoggingMiddleware
from .origin import OriginMiddleware

__all__ = ["AuthMiddleware", "LifecycleMiddleware", "LoggingMiddleware", "OriginMiddleware"]
