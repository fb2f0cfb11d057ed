"""Alembic's entry point: run migrations on the connection ``sandboxd.store.schema`` opened.

Why no alembic.ini and no URL here: the control plane decides which database it opens and
checks it first (damaged, foreign, newer) in ``schema.py``; Alembic only runs the scripts
on that connection, in its transaction. ``render_as_batch`` lets SQLite alter tables.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
