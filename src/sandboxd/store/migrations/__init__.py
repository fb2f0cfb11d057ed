"""Alembic migrations of the control plane's database (run by ``sandboxd.store.schema``)."""
