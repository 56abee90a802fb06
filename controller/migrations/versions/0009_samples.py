"""samples: captured inputs devices uploaded, capture orders, capture on alert rules (issue 17)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 09:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "samples",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("release_version", sa.Integer(), nullable=True),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_samples_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_samples_model_name"), ["model_name"], unique=False)
    op.create_table(
        "capture_orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("below_confidence", sa.Float(), nullable=False),
        sa.Column("rare_input_share", sa.Float(), nullable=True),
        sa.Column("per_hour", sa.Integer(), nullable=False),
        sa.Column("max_bytes", sa.Integer(), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("off", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=160), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("command_sequence", sa.Integer(), nullable=False),
        sa.Column("envelope", sa.Text(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("capture_orders", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_capture_orders_device_id"), ["device_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_capture_orders_model_name"), ["model_name"], unique=False
        )
    with op.batch_alter_table("alert_rules", schema=None) as batch_op:
        batch_op.add_column(sa.Column("capture", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alert_rules", schema=None) as batch_op:
        batch_op.drop_column("capture")
    with op.batch_alter_table("capture_orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_capture_orders_model_name"))
        batch_op.drop_index(batch_op.f("ix_capture_orders_device_id"))
    op.drop_table("capture_orders")
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_samples_model_name"))
        batch_op.drop_index(batch_op.f("ix_samples_device_id"))
    op.drop_table("samples")
