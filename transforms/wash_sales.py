"""Wash-sale matching for one round of the lot ledger (see ``transforms.lots``).

A round closes at most one trade per book, so within a round "the book" and "the sale" are the
same key. This module takes the round's allocation rows (one row per sold lot) and the book's
lots *after* the round's consumption, and returns the disallowed loss per sold lot plus the
replacement lots with their wash-sale adjustment, moved holding start and, where only part of a
lot is a replacement, the split-off pieces. Everything is a numpy array operation over all books
of the round at once (on the round engine's lot store, see ``transforms.lots.LotStore``): no
Python loop per sale or per book.

The rule (TAXABLE portfolios, LONG lots only):

- Each (SELL, lot) allocation row whose taxable result ``proceeds - (cost_basis +
  wash_sale_adjustment)`` is a loss is a loss row. The loss is judged per lot sold, not netted
  over the whole SELL: a gain on one lot does not shelter a loss on another (the IRS applies the
  rule to the shares sold at a loss). With one lot per SELL this is the same as netting.
- Replacement shares: the still-held shares of LONG lots of the same portfolio and instrument
  opened within 30 calendar days before or after the sale date (inclusive), excluding every lot
  of an opening trade this SELL itself consumed, and excluding shares that already absorbed an
  earlier disallowed loss. Shares acquired earlier in the window but sold before this sale are
  gone and cannot be replacements (a simplification: the IRS would also look at them).
- Matching: sold loss shares (in the order the SELL consumed them) are paired one to one with
  replacement shares in order of acquisition (event order, then piece number), by overlap of
  the two cumulative-quantity sequences. Each replacement share absorbs at most one loss.
- A matched piece of ``m`` shares disallows ``loss_per_share * m``; that amount is added to the
  replacement piece's ``wash_sale_adjustment`` (so to its tax basis) and the piece's
  ``holding_start`` moves back by the days the sold lot was held (sale date - its holding start).
- A replacement lot fully covered by one piece is adjusted in place. Otherwise each piece
  becomes a new lot ``<lot_id>~W<n>`` (n counts the lot's pieces so far), and the parent keeps
  the unmatched remainder; if the pieces cover the whole lot the last piece stays in the parent.
  Original quantity and remaining cost basis are split pro-rata, so per-share figures stay exact.

Short sales are not subject to wash-sale processing here (a simplification: the short-sale
rules of IRC 1091(e) and 1233 are out of scope), and EXEMPT portfolios never have wash sales.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-9
WASH_WINDOW_DAYS = 30


def loss_rows(
    wash: np.ndarray, tax_res: np.ndarray, cost_rel: np.ndarray, wadj_rel: np.ndarray
) -> np.ndarray:
    """True for allocation rows that are a taxable loss of a wash-eligible (TAXABLE LONG) lot.

    ``tax_res`` is proceeds - tax basis released (``cost_rel + wadj_rel``). A small relative
    tolerance keeps float noise on a break-even sale from creating a 1e-14 "disallowed loss".
    """
    return wash & (tax_res < -EPS * (cost_rel + wadj_rel))


def _group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Index of the first row of each row's group (``sorted_keys`` grouped contiguously)."""
    n = sorted_keys.size
    if n == 0:
        return np.zeros(0, np.int64)
    new = np.empty(n, bool)
    new[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
    first = np.flatnonzero(new)
    return np.repeat(first, np.diff(np.append(first, n)))


def _lex_key(group: np.ndarray, value: np.ndarray) -> np.ndarray:
    """(group, value) as one sortable key: complex numbers order by real, then imaginary part."""
    key = np.empty(group.size, np.complex128)
    key.real = group
    key.imag = value
    return key


def _segmented_cumsum(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum restarting at each group (``starts`` from ``_group_starts``)."""
    cum = np.cumsum(values)
    return cum - (cum[starts] - values[starts])


def apply_wash_sales(
    store,
    alloc_close: np.ndarray,
    alloc_lot: np.ndarray,
    take: np.ndarray,
    tax_res: np.ndarray,
    loss: np.ndarray,
    close_bk: np.ndarray,
    close_date: np.ndarray,
    sold_hstart: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the wash-sale rule to one round, updating ``store`` in place.

    Inputs (allocation rows of the round, grouped by close in consumption order):
        store: the lot store *after* the round's consumption (``transforms.lots.LotStore``);
            its first ``store.n_orig`` rows are the opened lots sorted by (book, event order),
            with ``store.orig_key`` = book * span + open day for a window search.
        alloc_close, alloc_lot, take, tax_res: per allocation row: the close's index into the
            round's close arrays, the lot's store index, quantity, proceeds - tax basis.
        loss: per allocation row, whether it is a wash-eligible loss (:func:`loss_rows`).
        close_bk, close_date: per close of the round: book key, sale date (days).
        sold_hstart: per allocation row, the sold lot's holding start (days).
    Returns:
        (disallowed loss per allocation row, store indices of the new split-off pieces,
        store indices of lots whose tax basis changed in place).
    """
    disallowed = np.zeros(take.size)
    none = np.zeros(0, np.int64)
    li_rows = np.flatnonzero(loss)
    if li_rows.size == 0:
        return disallowed, none, none

    # loss shares of each sale: the cumulative interval (a0, a1] in consumption order
    l_close = alloc_close[li_rows]
    take_s = take[li_rows]
    loss_s = -tax_res[li_rows]
    a1 = _segmented_cumsum(take_s, _group_starts(l_close))
    a0 = a1 - take_s

    # replacement candidates: opened lots of the book within the window (a sorted range of
    # the original lots); split-off pieces have always absorbed a loss, so never qualify
    # alloc_close ascends (rows are grouped by close in close order): unique without a sort
    first_l = np.ones(l_close.size, bool)
    np.not_equal(l_close[1:], l_close[:-1], out=first_l[1:])
    sales = l_close[first_l]
    span = store.day_span
    base = close_bk[sales] * span + (close_date[sales] - store.day_min)
    lo = np.searchsorted(store.orig_key, base - WASH_WINDOW_DAYS, "left")
    hi = np.searchsorted(store.orig_key, base + WASH_WINDOW_DAYS, "right")
    counts = hi - lo
    total = int(counts.sum())
    if total == 0:
        return disallowed, none, none
    sale_of = np.repeat(np.arange(sales.size), counts)
    cand = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(total)
    keep = store.wash[cand] & ~store.used[cand] & (store.rem[cand] > 0)
    # shares from a lot this sale consumed are not replacements for it. A book has one close
    # per round and a lot one book, so "consumed by this sale" is "consumed this round":
    # flag the opened lot (``root``) of every consumed piece on a scratch mask (a set
    # membership test without hashing), test the candidates, clear the flags.
    roots = store.root[alloc_lot]
    mark = store.mark
    mark[roots] = True
    keep &= ~mark[cand]
    mark[roots] = False
    cand, sale_of = cand[keep], sale_of[keep]
    if cand.size == 0:
        return disallowed, none, none
    r_rem = store.rem[cand]
    c1 = _segmented_cumsum(r_rem, _group_starts(sale_of))
    c0 = c1 - r_rem

    # pair loss shares with replacement shares by overlap of the cumulative intervals. The
    # candidates overlapping loss row (a0, a1] of a sale are those of the sale with c1 > a0
    # and c0 < a1: one contiguous range, found by two searches on (sale, c) keys (complex
    # numbers order lexicographically: real part = sale, imaginary part = cumulative
    # quantity). Every pair outside the range has no positive overlap, so enumerating only the
    # range keeps exactly the pairs the overlap filter below would keep, in the same order.
    l_sale = np.searchsorted(sales, l_close)
    ck0 = _lex_key(sale_of, c0)
    if ck0.size < 2 or (ck0[1:] >= ck0[:-1]).all():
        lo = np.searchsorted(_lex_key(sale_of, c1), _lex_key(l_sale, a0), "right")
        per_l = np.maximum(np.searchsorted(ck0, _lex_key(l_sale, a1), "left") - lo, 0)
    else:  # c0 not monotone (float rounding): every candidate of the sale
        r_count = np.bincount(sale_of, minlength=sales.size)
        lo = np.searchsorted(sale_of, np.arange(sales.size))[l_sale]
        per_l = r_count[l_sale]
    n_pairs = int(per_l.sum())
    if n_pairs == 0:
        return disallowed, none, none
    pl_i = np.repeat(np.arange(li_rows.size), per_l)
    pr_i = np.repeat(lo - np.cumsum(per_l) + per_l, per_l) + np.arange(n_pairs)
    m = np.minimum(a1[pl_i], c1[pr_i]) - np.maximum(a0[pl_i], c0[pr_i])
    ok = m > EPS * take_s[pl_i]
    pl_i, pr_i, m = pl_i[ok], pr_i[ok], m[ok]
    if m.size == 0:
        return disallowed, none, none
    lot = cand[pr_i]
    # pairs by (replacement lot, loss order). The ranges above move forward with the loss
    # rows (a staircase), so the pairs usually come in that order already: check, sort if not
    a0_p = a0[pl_i]
    d_lot = lot[1:] - lot[:-1]
    if not ((d_lot > 0) | ((d_lot == 0) & (a0_p[1:] >= a0_p[:-1]))).all():
        order = np.lexsort((a0_p, lot))
        pl_i, lot, m = pl_i[order], lot[order], m[order]
    dis = loss_s[pl_i] * m / take_s[pl_i]
    # the replacement inherits the sold lot's holding period
    held = close_date[l_close[pl_i]] - sold_hstart[li_rows[pl_i]]
    new_hstart = store.hstart[lot] - held

    disallowed[li_rows] = np.bincount(pl_i, dis, minlength=li_rows.size)

    first = _group_starts(lot)
    piece_idx = np.arange(lot.size) - first
    n_pieces = np.bincount(first)[first]  # group sizes, looked up by group start
    m_total = np.bincount(first, m)[first]
    rem_before = store.rem[lot]
    full = m_total >= rem_before * (1 - EPS)
    in_place = full & (piece_idx == n_pieces - 1)

    # split-off pieces become new lots that copy the parent's identity
    child = ~in_place
    parent = lot[child]
    children = store.append_pieces(parent)
    if children.size:
        new = slice(int(children[0]), int(children[-1]) + 1)  # appended: a contiguous range
        cm = m[child]
        cost = store.cost[parent] * cm / rem_before[child]
        split = store.nsplit[parent] + piece_idx[child] + 1
        store.split[new] = split
        store.tie[new] += split
        store.key[new] += split
        store.cost[new] = cost
        store.orig[new] = cm
        store.rem[new] = cm
        store.wadj[new] = dis[child]
        store.hstart[new] = new_hstart[child]
        store.used[new] = True
        store.nsplit[new] = 0
        store.closed[new] = False
        store.closed_ts[new] = 0
        store.refresh_k1(children)

    # the parents keep the unmatched remainder (or absorb the last piece in place)
    parents = lot[first == np.arange(lot.size)]
    g = np.searchsorted(lot, parents)  # lot is sorted: first piece of each parent
    child_m = np.bincount(first, np.where(child, m, 0.0))[first][g]
    n_child = np.bincount(first, child)[first][g].astype(np.int64)
    last = g + n_pieces[g] - 1
    has_ip = in_place[last]
    new_rem = store.rem[parents] - child_m
    store.cost[parents] = store.cost[parents] * new_rem / store.rem[parents]
    store.orig[parents] -= child_m
    store.nsplit[parents] += n_child
    ip = parents[has_ip]
    store.wadj[ip] += dis[last[has_ip]]
    store.hstart[ip] = new_hstart[last[has_ip]]
    store.used[ip] = True
    store.rem[parents] = new_rem
    store.refresh_k1(ip)
    return disallowed, children, ip
