"""Alembic environment: runs on the connection that ``controller.migrate`` hands over."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

# Importing the table modules registers every table on the metadata.
from controller import tables  # noqa: F401
from controller.devices import tables as device_tables  # noqa: F401
from controller.monitoring import tables as monitoring_tables  # noqa: F401
from controller.pipelines import tables as pipeline_tables  # noqa: F401
from controller.registry import tables as registry_tables  # noqa: F401
from controller.rollouts import tables as rollout_tables  # noqa: F401
from controller.samples import tables as sample_tables  # noqa: F401

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
