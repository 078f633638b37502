"""Alembic's environment for the feedback store: always run from ``store.upgrade_schema``, which hands
over an open connection (there is no alembic.ini; the URL is the service's setting)."""

from __future__ import annotations

from alembic import context

from service.feedback.store import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the feedback migrations through service.feedback.store.upgrade_schema")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
