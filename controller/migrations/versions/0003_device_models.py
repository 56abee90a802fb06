"""device models: several models per device (issue 14)

What a device should run and what it reports move from ``devices`` to one
``device_models`` row per (device, model). Existing data is copied: the desired
deployment under the model of its release, the reported release under ``active_model``.
The copied deployments were signed as schema 1, which schema-2 agents refuse: those the
device has not accepted yet get an expiry of now, so the reconciler signs them again (as
schema 2, same release) at its next pass; every device's desired state is published again.
On SQLite ``devices`` is rebuilt (batch mode): ``controller.migrate`` runs this with
foreign keys off and checks them before committing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 21:30:00.000000
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_OLD_COLUMNS = (
    'active_model',
    'active_version',
    'active_sha256',
    'previous_version',
    'reported_sequence',
    'desired_release_id',
    'desired_rollout_id',
    'desired_rollback',
    'desired_expires_at',
    'desired_envelope',
)


def _device_models() -> sa.TableClause:
    return sa.table(
        'device_models',
        sa.column('device_id', sa.String),
        sa.column('model_name', sa.String),
        sa.column('desired_release_id', sa.Integer),
        sa.column('desired_rollout_id', sa.String),
        sa.column('desired_rollback', sa.Boolean),
        sa.column('desired_remove', sa.Boolean),
        sa.column('desired_sequence', sa.Integer),
        sa.column('desired_expires_at', sa.DateTime(timezone=True)),
        sa.column('desired_envelope', sa.Text),
        sa.column('phase', sa.String),
        sa.column('active_version', sa.Integer),
        sa.column('active_sha256', sa.String),
        sa.column('previous_version', sa.Integer),
        sa.column('last_good_version', sa.Integer),
        sa.column('reported_sequence', sa.Integer),
    )


def _old_devices() -> sa.TableClause:
    return sa.table(
        'devices',
        sa.column('id', sa.String),
        sa.column('phase', sa.String),
        sa.column('active_model', sa.String),
        sa.column('active_version', sa.Integer),
        sa.column('active_sha256', sa.String),
        sa.column('previous_version', sa.Integer),
        sa.column('reported_sequence', sa.Integer),
        sa.column('desired_release_id', sa.Integer),
        sa.column('desired_rollout_id', sa.String),
        sa.column('desired_rollback', sa.Boolean),
        sa.column('desired_sequence', sa.Integer),
        sa.column('desired_expires_at', sa.DateTime(timezone=True)),
        sa.column('desired_envelope', sa.Text),
        sa.column('published_sequence', sa.Integer),
    )


def _empty_row(device_id: str, model: str) -> dict[str, Any]:
    return {
        'device_id': device_id,
        'model_name': model,
        'desired_release_id': None,
        'desired_rollout_id': None,
        'desired_rollback': False,
        'desired_remove': False,
        'desired_sequence': None,
        'desired_expires_at': None,
        'desired_envelope': None,
        'phase': None,
        'active_version': None,
        'active_sha256': None,
        'previous_version': None,
        'last_good_version': None,
        'reported_sequence': None,
    }


def upgrade() -> None:
    op.create_table('device_models',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('desired_release_id', sa.Integer(), nullable=True),
    sa.Column('desired_rollout_id', sa.String(length=32), nullable=True),
    sa.Column('desired_rollback', sa.Boolean(), nullable=False),
    sa.Column('desired_remove', sa.Boolean(), nullable=False),
    sa.Column('desired_sequence', sa.Integer(), nullable=True),
    sa.Column('desired_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('desired_envelope', sa.Text(), nullable=True),
    sa.Column('phase', sa.String(length=64), nullable=True),
    sa.Column('active_version', sa.Integer(), nullable=True),
    sa.Column('active_sha256', sa.String(length=64), nullable=True),
    sa.Column('previous_version', sa.Integer(), nullable=True),
    sa.Column('last_good_version', sa.Integer(), nullable=True),
    sa.Column('reported_sequence', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['desired_release_id'], ['releases.id'], ),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ),
    sa.PrimaryKeyConstraint('device_id', 'model_name')
    )
    _copy_into_device_models()
    with op.batch_alter_table('devices', schema=None) as batch_op:
        for name in _OLD_COLUMNS:
            batch_op.drop_column(name)


def _copy_into_device_models() -> None:
    bind = op.get_bind()
    devices = _old_devices()
    releases = sa.table(
        'releases', sa.column('id', sa.Integer), sa.column('model_name', sa.String)
    )
    now = datetime.now(UTC)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    query = sa.select(devices, releases.c.model_name.label('desired_model')).select_from(
        devices.outerjoin(releases, releases.c.id == devices.c.desired_release_id)
    )
    for device in bind.execute(query).mappings():
        if device['active_model'] is not None:
            row = rows.setdefault(
                (device['id'], device['active_model']),
                _empty_row(device['id'], device['active_model']),
            )
            row.update(
                phase=device['phase'] or 'idle',
                active_version=device['active_version'],
                active_sha256=device['active_sha256'],
                previous_version=device['previous_version'],
                reported_sequence=device['reported_sequence'],
            )
        model = device['desired_model']
        if model is not None and device['desired_envelope'] is not None:
            row = rows.setdefault((device['id'], model), _empty_row(device['id'], model))
            accepted = (
                row['reported_sequence'] is not None
                and device['desired_sequence'] is not None
                and row['reported_sequence'] >= device['desired_sequence']
            )
            row.update(
                desired_release_id=device['desired_release_id'],
                desired_rollout_id=device['desired_rollout_id'],
                desired_rollback=bool(device['desired_rollback']),
                desired_sequence=device['desired_sequence'],
                desired_expires_at=device['desired_expires_at'] if accepted else now,
                desired_envelope=device['desired_envelope'],
            )
    if rows:
        op.bulk_insert(_device_models(), [rows[key] for key in sorted(rows)])
    # The retained messages change shape (a desired-state list): publish them all again.
    bind.execute(sa.update(devices).values(published_sequence=None))


def downgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('active_model', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('active_version', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('active_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('previous_version', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('reported_sequence', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('desired_release_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('desired_rollout_id', sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column('desired_rollback', sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column('desired_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('desired_envelope', sa.Text(), nullable=True))
        batch_op.create_foreign_key(
            'fk_devices_desired_release_id', 'releases', ['desired_release_id'], ['id']
        )
    # One model per device again: keep the one with the newest desired deployment (then the
    # first running one by name); the others are lost.
    bind = op.get_bind()
    models = _device_models()
    devices = _old_devices()
    chosen: dict[str, dict[str, Any]] = {}
    for found in bind.execute(
        sa.select(models).order_by(models.c.device_id, models.c.model_name)
    ).mappings():
        best = chosen.get(found['device_id'])
        if best is None or (found['desired_sequence'] or 0) > (best['desired_sequence'] or 0):
            chosen[found['device_id']] = dict(found)
    for device_id, row in sorted(chosen.items()):
        bind.execute(
            sa.update(devices)
            .where(devices.c.id == device_id)
            .values(
                active_model=row['model_name'] if row['active_version'] is not None else None,
                active_version=row['active_version'],
                active_sha256=row['active_sha256'],
                previous_version=row['previous_version'],
                reported_sequence=row['reported_sequence'],
                desired_release_id=row['desired_release_id'],
                desired_rollout_id=row['desired_rollout_id'],
                desired_rollback=row['desired_rollback'],
                desired_expires_at=row['desired_expires_at'],
                desired_envelope=row['desired_envelope'],
                published_sequence=None,
            )
        )
    op.drop_table('device_models')
