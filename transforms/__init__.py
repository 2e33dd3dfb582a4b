"""Pure computation: frames in, frames out (no Dagster, no paths).

Polars engine. From Polars 2, a query's default engine (``"auto"``) runs it on the streaming
engine, which costs about 160 µs to start per query, eager operations included (measured on a
ten-row frame: 165 µs against 14 µs in memory). The state of a book runs some 230 small
queries per build, so that start-up was about a sixth of the demo book's rebuild. Importing
this package therefore sets the process's engine affinity to ``"in-memory"``, unless
``POLARS_ENGINE_AFFINITY`` says otherwise. Every query here works on frames already in memory.
"""

import os

import polars as pl

if "POLARS_ENGINE_AFFINITY" not in os.environ:
    pl.Config.set_engine_affinity("in-memory")
