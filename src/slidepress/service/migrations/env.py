"""Alembic's environment: migrate the connection `db.migrate` hands over (no alembic.ini)."""

from alembic import context

from slidepress.service.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite alters tables by copying them
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
