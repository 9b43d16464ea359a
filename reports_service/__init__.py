"""Live reports over WebSockets: Falcon, SQLAlchemy (SQLite or PostgreSQL), Alembic."""

__version__ = "0.1.0"
