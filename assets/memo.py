"""Values derived from lake tables, kept by the process while those tables are unchanged.

An intraday run for a trade file reads the whole price history several times (the triggers,
the rebalance, the valuations) and derives the same frames from it each time: every
instrument's daily returns in each base currency (0.2 s), the market snapshot, the last quotes.
A run worker (orchestration.run_worker) executes run after run in one process, and between two
trade files the prices do not change, so these are kept here.

A value is reused only while every table it was computed from is the same table (its Delta
table id: one deleted and created again gets a new id) at the same version; both come from the
process's table handles (assets.table_handles), at the cost of a ``stat``. Frames are immutable,
so handing the same one to several readers is safe.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from assets.lru import LruMap
from assets.resources import LakeResource

T = TypeVar("T")

# Values kept; the least recently used beyond it is dropped. A run uses about ten.
CAPACITY = 32

_values: LruMap[tuple[tuple, object]] = LruMap(CAPACITY)


def stamp(lake: LakeResource, tables: Sequence[str]) -> tuple:
    """``(table, table id, version)`` of each of ``tables`` (``None``s for a missing one)."""
    out = []
    for name in tables:
        table = lake.table(name)
        out.append((name, None, None) if table is None else (name, table.metadata().id, table.version()))
    return tuple(out)


def derived(lake: LakeResource, tables: Sequence[str], key: Hashable, compute: Callable[[], T]) -> T:
    """``compute()``, or the value it gave for the same ``key`` when ``tables`` (lake table
    names it reads) were last at the versions they are at now.

    The stamp is taken before ``compute`` runs: a commit landing during it makes the value
    stale at the next call, never a stale value look current."""
    before = stamp(lake, tables)
    entry_key = (lake.root, key)
    entry = _values.get(entry_key)
    if entry is not None and entry[0] == before:
        return entry[1]  # type: ignore[return-value]
    value = compute()
    _values.put(entry_key, (before, value))
    return value
