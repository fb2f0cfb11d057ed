"""Persistence for the control plane."""

from sandboxd.store.db import RunnerRecord, Store
from sandboxd.store.writer import BatchedRunnerWriter

__all__ = ["BatchedRunnerWriter", "RunnerRecord", "Store"]
