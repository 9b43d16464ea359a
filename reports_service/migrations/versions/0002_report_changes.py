"""report changelog and report versions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import reports_service.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = reports_service.models.UTCDateTime
VERSION = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "report_changes",
        sa.Column("version", VERSION, autoincrement=False, nullable=False),
        sa.Column("op", sa.String(length=10), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("updated_at", UTC(), nullable=False),
        sa.Column("changed_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_report_changes")),
    )
    with op.batch_alter_table("report_changes") as batch_op:
        batch_op.create_index(batch_op.f("ix_report_changes_name"), ["name"], unique=False)
    with op.batch_alter_table("reports") as batch_op:
        batch_op.add_column(sa.Column("version", VERSION, server_default="0", nullable=False))
    # NOTE: reports from before the changelog become its first changes, versions from their ids.
    op.execute("UPDATE reports SET version = id")
    op.execute(
        "INSERT INTO report_changes "
        "(version, op, name, title, content, created_at, updated_at, changed_at) "
        "SELECT id, 'added', name, title, content, created_at, updated_at, updated_at FROM reports"
    )
    with op.batch_alter_table("reports") as batch_op:
        batch_op.create_index(batch_op.f("ix_reports_version"), ["version"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("reports") as batch_op:
        batch_op.drop_index(batch_op.f("ix_reports_version"))
        batch_op.drop_column("version")
    with op.batch_alter_table("report_changes") as batch_op:
        batch_op.drop_index(batch_op.f("ix_report_changes_name"))
    op.drop_table("report_changes")
