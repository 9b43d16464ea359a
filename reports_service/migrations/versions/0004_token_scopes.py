"""tokens limited to report patterns and an expiry; JWT subjects revoked

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import reports_service.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = reports_service.models.UTCDateTime
EVERY_REPORT = '["*"]'


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch_op:
        batch_op.add_column(
            sa.Column("reports", sa.Text(), server_default=EVERY_REPORT, nullable=False)
        )
        batch_op.add_column(sa.Column("expires_at", UTC(), nullable=True))
    op.create_table(
        "revoked_subjects",
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("revoked_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("subject", name=op.f("pk_revoked_subjects")),
    )


def downgrade() -> None:
    # NOTE: before 0004 every live token reads every report forever; so that a downgrade never
    #   widens what a token may do, tokens limited to some reports or to a time are revoked.
    tokens = sa.table(
        "api_tokens",
        sa.column("reports", sa.Text()),
        sa.column("expires_at", UTC()),
        sa.column("revoked_at", UTC()),
    )
    op.execute(
        tokens.update()
        .where(
            tokens.c.revoked_at.is_(None),
            sa.or_(tokens.c.reports != EVERY_REPORT, tokens.c.expires_at.is_not(None)),
        )
        .values(revoked_at=dt.datetime.now(dt.UTC))
    )
    op.drop_table("revoked_subjects")
    with op.batch_alter_table("api_tokens") as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.drop_column("reports")
