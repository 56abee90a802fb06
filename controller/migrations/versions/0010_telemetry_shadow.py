"""shadow evaluation: telemetry of a candidate run beside the serving model, and desired
shadow orders (issue 17)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 09:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("telemetry", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shadow", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("shadow_version", sa.Integer(), nullable=True))
    with op.batch_alter_table("device_models", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("desired_shadow", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("device_models", schema=None) as batch_op:
        batch_op.drop_column("desired_shadow")
    with op.batch_alter_table("telemetry", schema=None) as batch_op:
        batch_op.drop_column("shadow_version")
        batch_op.drop_column("shadow")
