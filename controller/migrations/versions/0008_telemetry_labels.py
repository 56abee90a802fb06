"""telemetry labels: ground truth the applications sent back (issue 17)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 08:05:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("telemetry", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("labeled", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("labeled_correct", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("telemetry", schema=None) as batch_op:
        batch_op.drop_column("labeled_correct")
        batch_op.drop_column("labeled")
