"""The compiled forward fill of ``transforms.prices.PriceTable`` (numba).

Closes arrive as rows (instrument code, business-day index, close); the table needs, for every
instrument and business day, the close in force and the index of the day it was quoted. In
numpy that is a scatter into a NaN matrix, a running maximum over day indices, a gather along
the rows and a mask: five passes over the matrix and three temporaries (demo book, 300 x 522
cells: 2.8 ms); here one scatter and one pass per instrument row.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def forward_filled_closes(
    row: np.ndarray, day: np.ndarray, close: np.ndarray, n_rows: int, n_days: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(close, quoted)`` matrices ``(n_rows, n_days)`` from closes given as rows.

    ``row[k]``, ``day[k]``, ``close[k]``: instrument row, business-day index and (finite) close
    of input row k; of two closes of one cell the later input row wins. ``quoted[r, d]`` is the
    largest day index <= d with a close of row r (-1: none yet) and ``close[r, d]`` that close
    (NaN when none).
    """
    filled = np.full((n_rows, n_days), np.nan)
    for k in range(row.size):
        filled[row[k], day[k]] = close[k]
    quoted = np.empty((n_rows, n_days), dtype=np.int64)
    for r in range(n_rows):
        last = -1
        value = np.nan
        for d in range(n_days):
            if not np.isnan(filled[r, d]):
                last = d
                value = filled[r, d]
            quoted[r, d] = last
            filled[r, d] = value
    return filled, quoted
