"""Wiring: Dagster definitions, jobs, checks and the ``portfolio`` command."""

from orchestration.memory import keep_freed_memory

# before anything imports Polars (see orchestration.memory)
keep_freed_memory()
