"""fleet

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 02:36:34.967752
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('device_events',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deployment_sequence', sa.Integer(), nullable=True),
    sa.Column('model_name', sa.String(length=128), nullable=True),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('device_id', 'seq')
    )
    op.create_table('enrollment_tokens',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('secret_sha256', sa.String(length=64), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('used_by', sa.String(length=64), nullable=True),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('rollout_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.String(length=32), nullable=True),
    sa.Column('device_id', sa.String(length=64), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('webhook_status', sa.String(length=16), nullable=False),
    sa.Column('webhook_attempts', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rollout_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollout_events_rollout_id'), ['rollout_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_rollout_events_webhook_status'), ['webhook_status'], unique=False)

    op.create_table('devices',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('mqtt_password_hash', sa.String(length=256), nullable=False),
    sa.Column('api_token_id', sa.String(length=32), nullable=True),
    sa.Column('enrolled_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decommissioned_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('online', sa.Boolean(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('phase', sa.String(length=64), nullable=True),
    sa.Column('agent_version', sa.String(length=64), nullable=True),
    sa.Column('active_model', sa.String(length=128), nullable=True),
    sa.Column('active_version', sa.Integer(), nullable=True),
    sa.Column('active_sha256', sa.String(length=64), nullable=True),
    sa.Column('previous_version', sa.Integer(), nullable=True),
    sa.Column('reported_sequence', sa.Integer(), nullable=True),
    sa.Column('reported_state', sa.JSON(), nullable=True),
    sa.Column('next_deployment_sequence', sa.Integer(), nullable=False),
    sa.Column('next_command_sequence', sa.Integer(), nullable=False),
    sa.Column('desired_release_id', sa.Integer(), nullable=True),
    sa.Column('desired_rollout_id', sa.String(length=32), nullable=True),
    sa.Column('desired_rollback', sa.Boolean(), nullable=False),
    sa.Column('desired_sequence', sa.Integer(), nullable=True),
    sa.Column('desired_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('desired_envelope', sa.Text(), nullable=True),
    sa.Column('published_sequence', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['desired_release_id'], ['releases.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('rollouts',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('release_id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('last_good_release_id', sa.Integer(), nullable=True),
    sa.Column('selector', sa.String(length=1024), nullable=False),
    sa.Column('policy', sa.JSON(), nullable=False),
    sa.Column('state', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('wave', sa.Integer(), nullable=False),
    sa.Column('last_gates', sa.JSON(), nullable=False),
    sa.Column('notes', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('planned_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['last_good_release_id'], ['releases.id'], ),
    sa.ForeignKeyConstraint(['release_id'], ['releases.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollouts_model_name'), ['model_name'], unique=False)
        batch_op.create_index(batch_op.f('ix_rollouts_status'), ['status'], unique=False)

    op.create_table('rollout_assignments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.String(length=32), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('wave', sa.Integer(), nullable=False),
    sa.Column('assigned_at_s', sa.Float(), nullable=False),
    sa.Column('deployment_sequence', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.String(length=256), nullable=True),
    sa.Column('probation', sa.String(length=32), nullable=True),
    sa.Column('reported_at_s', sa.Float(), nullable=True),
    sa.Column('rolled_back_by_rollout', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('rollout_id', 'device_id')
    )
    with op.batch_alter_table('rollout_assignments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollout_assignments_device_id'), ['device_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_rollout_assignments_rollout_id'), ['rollout_id'], unique=False)

    op.create_table('rollout_commands',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rollout_commands', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollout_commands_rollout_id'), ['rollout_id'], unique=False)

    op.create_table('telemetry',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_s', sa.Float(), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('errors', sa.Integer(), nullable=False),
    sa.Column('nonfinite', sa.Integer(), nullable=False),
    sa.Column('p50_ms', sa.Float(), nullable=True),
    sa.Column('p95_ms', sa.Float(), nullable=True),
    sa.Column('p99_ms', sa.Float(), nullable=True),
    sa.Column('confidence_mean', sa.Float(), nullable=True),
    sa.Column('max_drift_psi', sa.Float(), nullable=True),
    sa.Column('merged', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_id', 'model_name', 'window_start', name='uq_telemetry_window')
    )
    with op.batch_alter_table('telemetry', schema=None) as batch_op:
        batch_op.create_index('ix_telemetry_window_start', ['window_start'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('telemetry', schema=None) as batch_op:
        batch_op.drop_index('ix_telemetry_window_start')

    op.drop_table('telemetry')
    with op.batch_alter_table('rollout_commands', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollout_commands_rollout_id'))

    op.drop_table('rollout_commands')
    with op.batch_alter_table('rollout_assignments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollout_assignments_rollout_id'))
        batch_op.drop_index(batch_op.f('ix_rollout_assignments_device_id'))

    op.drop_table('rollout_assignments')
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollouts_status'))
        batch_op.drop_index(batch_op.f('ix_rollouts_model_name'))

    op.drop_table('rollouts')
    op.drop_table('devices')
    with op.batch_alter_table('rollout_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollout_events_webhook_status'))
        batch_op.drop_index(batch_op.f('ix_rollout_events_rollout_id'))

    op.drop_table('rollout_events')
    op.drop_table('enrollment_tokens')
    op.drop_table('device_events')
