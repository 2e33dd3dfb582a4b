"""The compiled inner loop of daily valuations: held quantities times values per unit, summed
per portfolio and day (numba).

``transforms.valuations`` folds trades into constant-holding segments and prepares a value per
unit of every (base currency, instrument, day); this loop adds each held segment's value to
its portfolio's long or short total on every day it spans. In numpy the same sums need a dense
(pair, day) block of temporaries per step (quantities spread over the days, values gathered,
products, signs, a reduction), several passes over memory per cell; here each cell is read
once (demo book, 578K held cells: the market values took 4.2 ms, against 7.5 ms with numpy
blocks, the loop itself 1.7 ms).

Each total is a left fold in segment order (pairs ascending), so it does not depend on the
order of the input rows.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def add_holding_values(
    seg_p: np.ndarray,
    seg_value_row: np.ndarray,
    seg_i: np.ndarray,
    seg_start: np.ndarray,
    seg_end: np.ndarray,
    seg_q: np.ndarray,
    unit_value: np.ndarray,
    is_stale: np.ndarray,
    long_mv: np.ndarray,
    short_mv: np.ndarray,
    stale: np.ndarray,
) -> None:
    """Add every segment's value to ``long_mv`` / ``short_mv`` (``(portfolios, days)``), in place.

    Segment ``k`` holds ``seg_q[k]`` of instrument ``seg_i[k]`` in portfolio ``seg_p[k]`` on
    days ``seg_start[k] .. seg_end[k] - 1``; its value per unit on day ``d`` is
    ``unit_value[seg_value_row[k], d]``. A positive holding adds ``q * value`` to the long
    total, a negative one to the short total; a zero or NaN holding adds nothing (nor to
    ``stale``). Each held cell whose ``is_stale[instrument, d]`` is true adds 1 to ``stale``.
    """
    for k in range(seg_q.size):
        q = seg_q[k]
        if not (q > 0.0 or q < 0.0):
            continue
        p, row, i = seg_p[k], seg_value_row[k], seg_i[k]
        out = long_mv if q > 0.0 else short_mv
        for d in range(seg_start[k], seg_end[k]):
            out[p, d] += q * unit_value[row, d]
            if is_stale[i, d]:
                stale[p, d] += 1.0
