"""Row orders for large frames: sort on a packed integer key, break ties on a string column;
and sums over groups that follow the row order, so a rebuild gives the same bits every time.

Sorting strings is the expensive part of ordering millions of ledger rows; most keys are unique
once portfolio and time are packed into one integer, so only the tied rows need the string.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def order_by_key_then(key: np.ndarray, tie_break: pl.Series, rows: np.ndarray | None = None) -> np.ndarray:
    """Row order (int64 indices) sorting by ``key`` (Int64) then ``tie_break`` (nulls first).

    Sorting a string column is the expensive part, so the integer key is sorted alone, tied
    rows keeping their input order (the row number is packed below the key when it fits in
    63 bits, else a stable sort). Input often comes in ``tie_break`` order already (ids given
    in time order), so the tied runs are only checked, one comparison per neighbour; when one
    is out of order, the tied rows are re-sorted by (key, tie_break). ``rows``, when given,
    says which element of ``tie_break`` belongs to each key (``tie_break[rows[k]]``).
    """
    n = key.size
    if n == 0:
        return np.empty(0, dtype=np.int64)
    lo = key.min()
    row_bits = (n - 1).bit_length()
    if int(key.max() - lo).bit_length() + row_bits <= 63:
        # distinct packed keys: the fast (unstable) sort gives the stable order
        perm = np.argsort(((key - lo) << row_bits) | np.arange(n))
    else:
        perm = np.argsort(key, kind="stable")
    sorted_key = key[perm]
    same = sorted_key[1:] == sorted_key[:-1]
    tied = np.zeros(n, dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    pos = np.flatnonzero(tied)
    if pos.size == 0:
        return perm
    tied_rows = perm[pos]
    tie = tie_break.gather(tied_rows if rows is None else rows[tied_rows])
    # neighbours in one run: consecutive places whose keys are equal
    in_run = (np.diff(pos) == 1) & same[pos[:-1]]
    a, b = tie.slice(0, pos.size - 1), tie.slice(1)
    ordered = (a.is_null() | (b.is_not_null() & (a <= b))).fill_null(False).to_numpy()
    if (ordered | ~in_run).all():
        return perm
    ties = pl.DataFrame({"key": sorted_key[pos], "tie": tie})
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


def ordered_sum(values: pl.Expr) -> pl.Expr:
    """``values.sum()`` in a ``group_by(...).agg(...)``, the same bits on every run.

    Polars' grouped (and window) float sum adds a group's values in an order that changes from
    run to run (pola-rs/polars#25163, open): the demo book's cash balances came out different
    in the last bits in more than half of 200 runs, so a rebuild of the same input did not
    reproduce its positions and portfolio state. A group's values are
    gathered in row order (``group_by`` keeps the row order within each group) and that list
    summed. Nulls add nothing; an empty group sums to 0.0 (never -0.0).
    """
    total = values.implode().list.sum()
    # an empty list sums to -0.0 (and Polars drops a ``+ 0.0``): a zero is written as 0.0
    return pl.when(total == 0).then(0.0).otherwise(total)
