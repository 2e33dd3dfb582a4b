"""The compiled inner loop of daily exposures: every held cell's value added to its portfolio's
buckets (sector, asset class, currency, country), beta-weighted net, sum of squares and the
largest positions (numba).

``transforms.exposures`` prepares the segments of ``transforms.valuations.holdings``, the unit
values and the daily betas; the loop reads each held cell once and writes several
accumulators, which numpy would need a dense (pair, day) block of temporaries for, per
accumulator. Totals are left folds in segment order (pairs ascending), so they do not depend on
the input's row order. The bucket accumulators are laid out (portfolio, day, bucket): a
portfolio's block is small enough to stay in cache while its segments are added, and the
breakdown reads its cells in output order, (portfolio, day, bucket).
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
    seg_beta_row: np.ndarray,
    first_priced: np.ndarray,
    unit_value: np.ndarray,
    fx: np.ndarray,
    beta: np.ndarray,
    bucket: np.ndarray,
    long_b: np.ndarray,
    short_b: np.ndarray,
    beta_net: np.ndarray,
    no_beta: np.ndarray,
    sum_sq: np.ndarray,
    top: np.ndarray,
    top_min: np.ndarray,
    top_arg: np.ndarray,
) -> None:
    """Add every segment's daily value to the accumulators, in place.

    Segment ``k`` holds ``seg_q[k]`` of instrument ``seg_i[k]`` in portfolio ``seg_p[k]`` on
    days ``seg_start[k] .. seg_end[k] - 1``. Its value on day ``d`` is
    ``q * unit_value[seg_value_row[k], d]`` from the instrument's first close on, and before it
    ``q * seg_fallback[k] * fx[seg_fx_row[k], d]`` (the last trade price at the day's rate), as
    daily valuations value it. Each value is added to ``long_b`` (> 0) or ``short_b`` (< 0) at
    ``[p, d, bucket[dim, i]]`` for every dimension ``dim``; ``v * beta[seg_beta_row[k], d]`` to
    ``beta_net[p, d]`` (a NaN beta, or a row of -1, counts 1 in ``no_beta[p, d]`` instead);
    ``v * v`` to ``sum_sq[p, d]``; and ``|v|`` replaces the smallest of the ``top[p, d, :]``
    slots (the first of equal ones) when larger, so they end as the largest absolute values,
    unordered. ``top_min[p, d]`` / ``top_arg[p, d]`` hold that smallest slot's value and index
    (zeros on entry, with ``top``): most values are smaller and cost one comparison.
    """
    n_dims = bucket.shape[0]
    n_top = top.shape[2]
    for k in range(seg_q.size):
        q = seg_q[k]
        if not (q > 0.0 or q < 0.0):
            continue
        p, row, i, beta_row = seg_p[k], seg_value_row[k], seg_i[k], seg_beta_row[k]
        for d in range(seg_start[k], seg_end[k]):
            if d < first_priced[i]:
                v = q * seg_fallback[k] * fx[seg_fx_row[k], d]
            else:
                v = q * unit_value[row, d]
            if v > 0.0:
                for dim in range(n_dims):
                    long_b[p, d, bucket[dim, i]] += v
            else:
                for dim in range(n_dims):
                    short_b[p, d, bucket[dim, i]] += v
            b = beta[beta_row, d] if beta_row >= 0 else np.nan
            if b == b:
                beta_net[p, d] += v * b
            else:
                no_beta[p, d] += 1
            sum_sq[p, d] += v * v
            a = abs(v)
            if a > top_min[p, d]:
                top[p, d, top_arg[p, d]] = a
                j_min = 0
                for j in range(1, n_top):
                    if top[p, d, j] < top[p, d, j_min]:
                        j_min = j
                top_arg[p, d] = j_min
                top_min[p, d] = top[p, d, j_min]
