"""The one module-level app: `uvicorn reports_service.asgi:app`."""

from .app import create_app
from .config import Settings
from .logs import configure_logging

settings = Settings.from_env()
configure_logging(settings.log_level, settings.log_format)
app = create_app(settings)
