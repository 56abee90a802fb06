"""continuous delivery: channels, pipelines, the jobs table and model lineage (issue 18)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 12:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _text(length: int) -> sa.String:
    return sa.String(length=length)


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("name", _text(64), nullable=False),
        sa.Column("selector", _text(512), nullable=False),
        sa.Column("variants", sa.JSON(), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("approval_required", sa.Boolean(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("created_by", _text(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", _text(32), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("status", _text(16), nullable=False),
        sa.Column("progress", _text(256), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_status", sa.Integer(), nullable=True),
        sa.Column("worker", _text(128), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", _text(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_jobs_status"), "jobs", ["status"], unique=False)
    op.create_table(
        "pipelines",
        sa.Column("id", _text(32), nullable=False),
        sa.Column("channel", _text(64), nullable=False),
        sa.Column("model_name", _text(128), nullable=False),
        sa.Column("source_version", sa.Integer(), nullable=False),
        sa.Column("status", _text(24), nullable=False),
        sa.Column("step", _text(24), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("release_version", sa.Integer(), nullable=True),
        sa.Column("rollout_id", _text(32), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("approved_by", _text(128), nullable=True),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", _text(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["channel"], ["channels.name"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_pipelines_channel"), "pipelines", ["channel"], unique=False)
    op.create_index(op.f("ix_pipelines_status"), "pipelines", ["status"], unique=False)
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lineage", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("lineage")
    op.drop_index(op.f("ix_pipelines_status"), table_name="pipelines")
    op.drop_index(op.f("ix_pipelines_channel"), table_name="pipelines")
    op.drop_table("pipelines")
    op.drop_index(op.f("ix_jobs_status"), table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("channels")
