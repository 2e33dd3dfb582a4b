"""Row orders for large frames: sort on a packed integer key, break ties on a string column.

Sorting strings is the expensive part of ordering millions of ledger rows; most keys are unique
once portfolio and time are packed into one integer, so only the tied rows need the string.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def order_by_key_then(key: np.ndarray, tie_break: pl.Series, rows: np.ndarray | None = None) -> np.ndarray:
    """Row order (int64 indices) sorting by ``key`` (Int64) then ``tie_break`` (nulls first).

    Sorting a string column is the expensive part, so the integer key is sorted alone and only
    the rows that share a key with a neighbour are re-sorted by (key, tie_break). ``rows``, when
    given, says which element of ``tie_break`` belongs to each key (``tie_break[rows[k]]``).
    """
    perm = np.argsort(key)  # need not be stable: every tied run is re-sorted below
    sorted_key = key[perm]
    same = sorted_key[1:] == sorted_key[:-1]
    tied = np.zeros(key.size, dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    pos = np.flatnonzero(tied)
    if pos.size:
        tied_rows = perm[pos]
        ties = pl.DataFrame(
            {"key": sorted_key[pos], "tie": tie_break.gather(tied_rows if rows is None else rows[tied_rows])}
        )
        perm[pos] = tied_rows[ties.with_row_index().sort("key", "tie")["index"].to_numpy()]
    return perm


def time_offsets(us: np.ndarray) -> np.ndarray:
    """Offsets (int64) of ``us`` (non-empty, microseconds) from the earliest, counted in the
    coarsest unit that divides them all (second, millisecond or microsecond).

    Order and ties are those of ``us``, in fewer bits, so a packed (group, time) sort key still
    fits in 63 bits for years of millisecond timestamps and many groups."""
    offsets = us - us.min()
    for unit in (1_000_000, 1_000):
        if not (offsets % unit).any():
            return offsets // unit
    return offsets
