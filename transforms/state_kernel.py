"""The compiled totals of realised P&L per portfolio (numba).

``transforms.state.realized_by_portfolio`` needs, over every realised row (a quarter of a
million in the demo book, wash-sale pieces included), each portfolio's sum of P&L converted to
base currency, its latest close and whether it has any row. In numpy that is a product, a NaN
mask, two boolean filters, two ``bincount`` and a ``maximum.at``: eight passes over the rows
and their temporaries, holding the GIL (``bincount`` and ``ufunc.at`` do not release it)
while the other thread of a build wants it. Here it is one pass, without the GIL.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def totals_per_code(
    code: np.ndarray, value: np.ndarray, rate: np.ndarray, moment: np.ndarray, n_codes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sums, latest, seen)`` per code ``0 .. n_codes - 1``.

    Row k belongs to code ``code[k]`` (negative: to none, skipped). ``sums[c]`` adds
    ``value[k] * rate[k]`` over the rows of c in row order, leaving out a NaN product (a null
    value or an unknown rate, as a null in a sum); ``latest[c]`` is the largest ``moment[k]``
    (int64, e.g. epoch microseconds; the int64 minimum when c has no row) and ``seen[c]``
    whether c has any row, counted whatever its product.
    """
    sums = np.zeros(n_codes)
    latest = np.full(n_codes, np.iinfo(np.int64).min)
    seen = np.zeros(n_codes, dtype=np.bool_)
    for k in range(code.size):
        c = code[k]
        if c < 0:
            continue
        seen[c] = True
        if moment[k] > latest[c]:
            latest[c] = moment[k]
        product = value[k] * rate[k]
        if not np.isnan(product):
            sums[c] += product
    return sums, latest, seen
