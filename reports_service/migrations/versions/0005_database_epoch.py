"""a random epoch per database, so that a resume from another database's version resyncs

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    epoch = op.create_table(
        "database_epoch",
        sa.Column("epoch", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("epoch", name=op.f("pk_database_epoch")),
    )
    op.bulk_insert(epoch, [{"epoch": secrets.token_hex(16)}])


def downgrade() -> None:
    op.drop_table("database_epoch")
