"""telemetry histograms: latency and drift counts, pooled per group (issue 17)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 07:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("telemetry", schema=None) as batch_op:
        batch_op.add_column(sa.Column("latency_counts", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("drift_counts", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("telemetry", schema=None) as batch_op:
        batch_op.drop_column("drift_counts")
        batch_op.drop_column("latency_counts")
