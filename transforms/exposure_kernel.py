"""The compiled inner loop of daily exposures: every held cell's value added to its portfolio's
buckets (sector, asset class, currency, country), beta-weighted net, sum of squares and the
largest positions (numba).

``transforms.exposures`` prepares the segments of ``transforms.valuations.holdings`` and the
unit values; the loop reads each held cell once and writes several accumulators, which numpy
would need a dense (pair, day) block of temporaries for, per accumulator. Totals are left
folds in segment order (pairs ascending), so they do not depend on the input's row order.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def add_exposures(
    seg_p: np.ndarray,
    seg_value_row: np.ndarray,
    seg_i: np.ndarray,
    seg_start: np.ndarray,
    seg_end: np.ndarray,
    seg_q: np.ndarray,
    seg_fallback: np.ndarray,
    seg_fx_row: np.ndarray,
    seg_beta: np.ndarray,
    first_priced: np.ndarray,
    unit_value: np.ndarray,
    fx: np.ndarray,
    bucket: np.ndarray,
    long_b: np.ndarray,
    short_b: np.ndarray,
    beta_net: np.ndarray,
    no_beta: np.ndarray,
    sum_sq: np.ndarray,
    top: np.ndarray,
) -> None:
    """Add every segment's daily value to the accumulators, in place.

    Segment ``k`` holds ``seg_q[k]`` of instrument ``seg_i[k]`` in portfolio ``seg_p[k]`` on
    days ``seg_start[k] .. seg_end[k] - 1``. Its value on day ``d`` is
    ``q * unit_value[seg_value_row[k], d]`` from the instrument's first close on, and before it
    ``q * seg_fallback[k] * fx[seg_fx_row[k], d]`` (the last trade price at the day's rate), as
    daily valuations value it. Each value is added to ``long_b`` (> 0) or ``short_b`` (< 0) at
    ``[p, bucket[dim, i], d]`` for every dimension ``dim``; ``v * seg_beta[k]`` to
    ``beta_net[p, d]`` (a NaN beta counts 1 in ``no_beta[p, d]`` instead); ``v * v`` to
    ``sum_sq[p, d]``; and ``|v|`` replaces the smallest of the ``top[p, d, :]`` slots when larger
    (so they end as the largest absolute values, unordered).
    """
    n_dims = bucket.shape[0]
    n_top = top.shape[2]
    for k in range(seg_q.size):
        q = seg_q[k]
        if not (q > 0.0 or q < 0.0):
            continue
        p, row, i = seg_p[k], seg_value_row[k], seg_i[k]
        beta = seg_beta[k]
        for d in range(seg_start[k], seg_end[k]):
            if d < first_priced[i]:
                v = q * seg_fallback[k] * fx[seg_fx_row[k], d]
            else:
                v = q * unit_value[row, d]
            for dim in range(n_dims):
                b = bucket[dim, i]
                if v > 0.0:
                    long_b[p, b, d] += v
                else:
                    short_b[p, b, d] += v
            if beta == beta:
                beta_net[p, d] += v * beta
            else:
                no_beta[p, d] += 1.0
            sum_sq[p, d] += v * v
            a = abs(v)
            j_min = 0
            for j in range(1, n_top):
                if top[p, d, j] < top[p, d, j_min]:
                    j_min = j
            if a > top[p, d, j_min]:
                top[p, d, j_min] = a
