"""The one module-level app: `uvicorn reports_service.asgi:app`, settings from the environment."""

from .app import app_from_env

app = app_from_env()
