"""The replay kernel of the tax-lot ledger: every book's trades in event order, in one
compiled pass (numba).

``transforms.lots`` validates and orders the trades and assembles the output frames; this
module holds the rules that need the history of a book: which lots a close consumes, what it
realises, which closes are rejected, and the wash-sale rule. The rules are stated in
``transforms.lots.build_ledger``; the wash-sale rule in full here.

Why compiled: a close's result depends on every earlier close of its book, so the replay is a
loop over trades. Vectorising it across books (round k = the k-th close of every book) costs a
few dozen array calls per round, and a book with hundreds of closes makes hundreds of rounds;
the loop itself, compiled, costs tens of nanoseconds per lot touched (demo book: 25 ms for
195K lots and 227K realised rows).

How a book is replayed
----------------------
Books (portfolio, instrument, LONG or SHORT) are independent, so they are replayed one after
the other, each in a small table of its own lots: the opening trades first (event order), then
wash-sale pieces as they are split off. ``live`` holds the lots a close may consume (opened
before it) sorted for consumption: by (event, piece) for FIFO, walked forwards, and for LIFO,
walked backwards one lot at a time (a lot's pieces stay together, in piece order); by
(per-unit tax basis descending, event, piece) for HIFO, walked forwards. Exhausted lots stay
in place until they outnumber the open ones two to one (lazy deletion), so a close costs the lots it
touches, not the book's history. A named ``lot_id`` puts that lot's open pieces first. A close
takes ``min(left, rem)`` from each lot in that order, where ``left`` is the close quantity
minus the remaining quantity of the lots before it; a lot left within ``1e-9`` of its
original quantity is taken whole.

The open quantity a close is checked against is kept as a running sum, with a bound on its
rounding error (operations since the last exact count x 2^-52 x the largest value it held);
only a close within that bound of the running sum recounts the lots exactly, so every
decision is the one an exact count gives.

The wash-sale rule (TAXABLE portfolios, LONG lots only)
-------------------------------------------------------
- Each (SELL, lot) row whose taxable result ``proceeds - (cost_basis + wash_sale_adjustment)``
  is a loss is a loss row. The loss is judged per lot sold, not netted over the whole SELL: a
  gain on one lot does not shelter a loss on another (the IRS applies the rule to the shares
  sold at a loss). With one lot per SELL this is the same as netting.
- Replacement shares: the still-held shares of LONG lots of the same portfolio and instrument
  opened within 30 calendar days before or after the sale date (inclusive), excluding every lot
  of an opening trade this SELL itself consumed, and excluding shares that already absorbed an
  earlier disallowed loss. Shares acquired earlier in the window but sold before this sale are
  gone and cannot be replacements (a simplification: the IRS would also look at them).
- Matching: sold loss shares (in the order the SELL consumed them) are paired one to one with
  replacement shares in order of acquisition (event order), by overlap of the two
  cumulative-quantity sequences. Each replacement share absorbs at most one loss.
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
from numba import njit

EPS = 1e-9  # relative tolerance: oversells, exhausted lots, break-even sales
WASH_WINDOW_DAYS = 30
OUT_ROOM = 4  # first size of the lot and realised-row outputs, per event
BOOK_ROOM = 32  # first size of a book's lot table, per opening trade of the largest book
NO_LOT = -2  # ``named`` of a close that names no lot (-1: names a lot that is not of its book)
FIFO, LIFO, HIFO = 0, 1, 2

# a book lot's float fields (rows of the book's float table)
_ORIG, _REM, _COST, _WADJ, _PTB = 0, 1, 2, 3, 4
_NF = 5
# a book lot's integer fields: event position of the opening trade, piece number, holding
# start and open day (days), pieces so far, absorbed a loss, closed, closing time, the opened
# lot it belongs to, the next piece of that lot and its last piece (-1: none)
_OSEQ, _SPLIT, _HSTART, _ODAY, _NSPLIT, _USED, _CLOSED, _CLOSED_TS, _ROOT, _NEXT, _TAIL = range(11)
_NI = 11

# output lots: float fields orig, rem, cost, wadj, per-unit tax basis (the HIFO key); integer
# fields oseq, split, hstart, closed, closed_ts, pieces so far, absorbed a loss
_LF = 5
_LI = 7
# output realised rows: take, proceeds, basis, realized, wadj released, disallowed; for a loss
# row of a wash-sale book, the sale's loss shares before it (NaN: not a loss row) and the
# replacement shares its sale was paired with (+inf: more were left than its loss); closing
# event, lot (output position), holding start
_R_TAKE, _R_PROCEEDS, _R_BASIS, _R_REALIZED, _R_WADJ, _R_DIS, _R_LOSS_BEFORE, _R_PAIRED = range(8)
_RF = 8
_R_CSEQ, _R_LOT, _R_HSTART = range(3)
_RI = 3
# an open loss row of the seed (``replay_books``): float fields take, realized, wadj released,
# loss shares before it, replacement shares its sale was paired with, disallowed so far
_P_TAKE, _P_REALIZED, _P_WADJ, _P_LOSS_BEFORE, _P_PAIRED, _P_DIS = range(6)
_PF = 6


@njit(cache=True)
def _first_after(I, n, v):
    """The first of the book's opened lots ``0..n-1`` (open days ascend) opened after day
    ``v`` (binary search)."""
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) // 2
        if I[_ODAY, mid] > v:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True)
def _before(F, I, a, b, hifo):
    """True when lot ``a`` is consumed before lot ``b``: (per-unit tax basis descending, for
    HIFO), event order, piece number."""
    if hifo:
        pa = F[_PTB, a]
        pb = F[_PTB, b]
        if pa != pb:
            return pa > pb
    oa = I[_OSEQ, a]
    ob = I[_OSEQ, b]
    if oa != ob:
        return oa < ob
    return I[_SPLIT, a] < I[_SPLIT, b]


@njit(cache=True)
def _position(live, head, tail, F, I, j, hifo):
    """The first place in ``live[head:tail]`` whose lot ``j`` is consumed before (binary
    search: exhausted lots keep their place and key)."""
    lo = head
    hi = tail
    while lo < hi:
        mid = (lo + hi) // 2
        if _before(F, I, j, live[mid], hifo):
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True)
def _collect(live, head, tail, F, I, lifo, nm, pick, order, k, left):
    """Append to ``order[k:]`` the open lots of ``live[head:tail]`` in consumption order whose
    ``(event == nm) == pick``, until ``left`` minus their quantities is <= 0 (the same
    subtraction the consumption repeats, so both stop at the same lot). LIFO walks the lots
    backwards, each lot's pieces forwards. Returns ``(k, left)``."""
    g_end = tail
    while g_end > head:
        if lifo:  # the newest lot still in ``live``, with its pieces
            g_start = g_end - 1
            o = I[_OSEQ, live[g_start]]
            while g_start > head and I[_OSEQ, live[g_start - 1]] == o:
                g_start -= 1
        else:  # one forward pass over everything
            g_start = head
        for t in range(g_start, g_end):
            j = live[t]
            if F[_REM, j] > 0.0 and (I[_OSEQ, j] == nm) == pick:
                order[k] = j
                k += 1
                left -= F[_REM, j]
                if left <= 0.0:
                    return k, left
        g_end = g_start
    return k, left


@njit(cache=True)
def _set_lot(F, I, k, qty, cost, wadj, oseq, split, hstart, oday, used, root):
    """Write a new, open lot ``k`` of ``qty`` shares into the book table (no pieces yet)."""
    F[_ORIG, k] = qty
    F[_REM, k] = qty
    F[_COST, k] = cost
    F[_WADJ, k] = wadj
    F[_PTB, k] = (cost + wadj) / qty
    I[_OSEQ, k] = oseq
    I[_SPLIT, k] = split
    I[_HSTART, k] = hstart
    I[_ODAY, k] = oday
    I[_NSPLIT, k] = 0
    I[_USED, k] = used
    I[_CLOSED, k] = 0
    I[_CLOSED_TS, k] = 0
    I[_ROOT, k] = root
    I[_NEXT, k] = -1
    I[_TAIL, k] = -1


@njit(cache=True)
def _compact(live, head, tail, F):
    """Drop exhausted lots from ``live[head:tail]``, moving the rest to the front; returns the
    new ``tail`` (``head`` becomes 0)."""
    k = 0
    for t in range(head, tail):
        if F[_REM, live[t]] > 0.0:
            live[k] = live[t]
            k += 1
    return k


@njit(cache=True)
def _pair_losses(take, loss_before, r0, r1, cand_rem, nc, c_start, pair_row, pair_cand, pair_m):
    """Pair the loss shares of rows ``r0..r1-1`` (a row's shares are ``(a0, a0 + take]`` with
    ``a0 = loss_before[r]``; NaN: not a loss row) with the replacement shares of candidates
    ``0..nc-1`` (``(c0, c0 + cand_rem]``, from ``c_start`` on), by overlap: both sequences are
    cumulative, so the pairs form a staircase in (candidate, loss) order. Returns
    ``(pairs, paired)``: the number of pairs written to ``pair_*`` (-1: no room), and the
    replacement shares paired when the candidates ran out (+inf when some were left over)."""
    n_pairs = 0
    t = 0
    c0 = c_start
    for r in range(r0, r1):
        a0 = loss_before[r]
        if a0 != a0:
            continue
        take_s = take[r]
        a1 = a0 + take_s
        while t < nc:
            c1 = c0 + cand_rem[t]
            mq = min(a1, c1) - max(a0, c0)
            if mq > EPS * take_s:
                if n_pairs == pair_row.size:
                    return -1, 0.0
                pair_row[n_pairs] = r
                pair_cand[n_pairs] = t
                pair_m[n_pairs] = mq
                n_pairs += 1
            if c1 > a1:  # this lot goes on past the loss: the next loss starts here
                break
            t += 1
            c0 = c1
    return n_pairs, (c0 if t == nc else np.inf)


@njit(cache=True)
def _apply_pairs(n_pairs, pair_row, pair_cand, pair_m, cand, r_take, r_realized, r_wadj, r_hstart, r_dis,
                 d, e, F, I, live, head, tail, n_alive, ops, nl, hifo):
    """Apply the pairs of a loss sale on day ``d`` at event ``e`` (``_pair_losses``) to each
    replacement lot (the rule in the module docstring): the loss rows' disallowed loss
    (``r_dis``) grows; a lot covered whole by its last piece is adjusted in place, else each
    piece is split off as a new lot ``nl``, ``nl + 1``, ... A lot opened before ``e`` is in
    ``live`` and its pieces join it at once; a later one's join when it opens (``e = -1``: every
    lot is later). Returns ``(head, tail, n_alive, ops, nl, need)``; ``need`` is ``_NEED_BOOK``
    when the book table is full."""
    cap = F.shape[1]
    p = 0
    while p < n_pairs:
        p_end = p
        m_total = 0.0
        while p_end < n_pairs and pair_cand[p_end] == pair_cand[p]:
            m_total += pair_m[p_end]
            p_end += 1
        j = cand[pair_cand[p]]
        rem_before = F[_REM, j]
        cost_before = F[_COST, j]
        full = m_total >= rem_before * (1.0 - EPS)
        in_live = I[_OSEQ, j] < e  # available: in ``live``, pieces join it at once
        child_m = 0.0
        n_child = 0
        for u in range(p, p_end):
            r = pair_row[u]
            mq = pair_m[u]
            loss = -(r_realized[r] - r_wadj[r])
            dis = loss * mq / r_take[r]
            r_dis[r] += dis
            new_hstart = I[_HSTART, j] - (d - r_hstart[r])
            if full and u == p_end - 1:  # the last piece stays in the lot
                if in_live and hifo:  # its key changes below: out of place for now
                    s = _position(live, head, tail, F, I, j, True) - 1
                    for v in range(s, tail - 1):
                        live[v] = live[v + 1]
                    tail -= 1
                F[_WADJ, j] += dis
                I[_HSTART, j] = new_hstart
                I[_USED, j] = 1
                continue
            if nl == cap:
                return head, tail, n_alive, ops, nl, _NEED_BOOK
            cost = cost_before * mq / rem_before
            _set_lot(F, I, nl, mq, cost, dis, I[_OSEQ, j], I[_NSPLIT, j] + (u - p) + 1,
                     new_hstart, I[_ODAY, j], 1, j)
            if I[_TAIL, j] < 0:
                I[_NEXT, j] = nl
            else:
                I[_NEXT, I[_TAIL, j]] = nl
            I[_TAIL, j] = nl
            if in_live:
                if tail + 2 > live.size:
                    tail = _compact(live, head, tail, F)
                    head = 0
                s = _position(live, head, tail, F, I, nl, hifo)
                for v in range(tail, s, -1):
                    live[v] = live[v - 1]
                live[s] = nl
                tail += 1
                n_alive += 1
                ops += 1
            child_m += mq
            n_child += 1
            nl += 1
        new_rem = rem_before - child_m
        F[_COST, j] = cost_before * new_rem / rem_before
        F[_ORIG, j] -= child_m
        I[_NSPLIT, j] += n_child
        F[_REM, j] = new_rem
        if full:
            F[_PTB, j] = (F[_COST, j] + F[_WADJ, j]) / (new_rem if new_rem > 0.0 else 1.0)
            if in_live and hifo:
                s = _position(live, head, tail, F, I, j, True)
                for v in range(tail, s, -1):
                    live[v] = live[v - 1]
                live[s] = j
                tail += 1
        p = p_end
    return head, tail, n_alive, ops, nl, 0


# room the kernel asks for when it runs out (a bit mask); the driver doubles it and replays the
# book that ran out from its start
_NEED_BOOK, _NEED_REAL, _NEED_LOTS, _NEED_PAIRS, _NEED_REJ = 1, 2, 4, 8, 16


class _Arrays:
    """The kernel's working and output arrays. The compiled function never reassigns an
    array (numba then counts references on every loop turn), so growing them happens here."""

    def __init__(self, n: int, book_cap: int, out_cap: int):
        # n: rejections (at most one per event); out_cap: lots and realised rows
        self.lot_f = np.empty((_LF, out_cap), np.float64)
        self.lot_i = np.empty((_LI, out_cap), np.int64)
        self.real_f = np.empty((_RF, out_cap), np.float64)
        self.real_i = np.empty((_RI, out_cap), np.int64)
        self.rej_seq = np.empty(n, np.int64)
        self.rej_code = np.empty(n, np.int8)
        self.rej_avail = np.empty(n, np.float64)
        self.book(book_cap)
        self.pairs(book_cap)

    def book(self, cap: int) -> None:
        self.F = np.empty((_NF, cap), np.float64)
        self.I = np.empty((_NI, cap), np.int64)
        self.live = np.empty(2 * cap, np.int64)
        self.order = np.empty(cap, np.int64)
        self.cand = np.empty(cap, np.int64)
        self.cand_rem = np.empty(cap, np.float64)
        self.mark = np.zeros(cap, np.bool_)
        self.out_pos = np.empty(cap, np.int64)

    def pairs(self, cap: int) -> None:
        self.pair_row = np.empty(cap, np.int64)
        self.pair_cand = np.empty(cap, np.int64)
        self.pair_m = np.empty(cap, np.float64)

    def grow(self, need: int) -> None:
        if need & _NEED_BOOK:
            self.book(max(16, 2 * self.F.shape[1]))
        if need & _NEED_PAIRS:
            self.pairs(max(16, 2 * self.pair_row.size))
        if need & _NEED_REAL:
            self.real_f = _wider(self.real_f)
            self.real_i = _wider(self.real_i)
        if need & _NEED_LOTS:
            self.lot_f = _wider(self.lot_f)
            self.lot_i = _wider(self.lot_i)
        if need & _NEED_REJ:
            self.rej_seq = _wider(self.rej_seq)
            self.rej_code = _wider(self.rej_code)
            self.rej_avail = _wider(self.rej_avail)


def _wider(a: np.ndarray) -> np.ndarray:
    """``a`` with its last axis twice as long (at least 16), the filled part copied."""
    b = np.empty((*a.shape[:-1], max(16, 2 * a.shape[-1])), a.dtype)
    b[..., : a.shape[-1]] = a
    return b


def replay_books(bk, is_open, is_long, qty, price, fees, ts, day, method, wash, named, seed=None, open_losses=None, *,
                 room=None):
    """Replay every book; the inputs are per event, in event order (books contiguous).

    Inputs: ``bk`` book key (equal for the events of a book, books contiguous); ``is_open``
    (BUY, SELL_SHORT) and ``is_long`` (BUY, SELL); quantity, price, fees; ``ts`` (µs) and
    ``day`` (UTC day number) of the trade; the portfolio's lot ``method`` (FIFO 0, LIFO 1,
    HIFO 2); ``wash`` (TAXABLE and LONG); ``named``: for a close, the event position of the
    opening trade its ``lot_id`` names (``NO_LOT`` none, -1 not an opening trade of the book).

    ``seed``: continue books from their open lots rather than from their first trade, as
    ``(is_seed, seed_f, seed_i)``. An event with ``is_seed`` true is not a trade but one open
    lot (a lot or a wash-sale piece) as an earlier replay left it; a book's seeded events come
    before its trades, in the order of the replay that made them (event, piece). Per event,
    ``seed_f`` rows: original quantity, remaining quantity, cost basis, wash-sale adjustment,
    per-unit tax basis; ``seed_i`` rows: piece number, holding start (day), pieces split off so
    far, absorbed a loss (0/1), the event position of the first seeded lot of the same opening
    trade (the lot's ``oseq``: what named lots and pieces refer to). The seeded lots are
    replayed as that earlier replay held them, so a book continued with trades after all its
    earlier events equals the whole replay, except where a new BUY falls within the wash-sale
    window of an earlier loss sale with loss shares not yet matched (the realised rows' matched
    shares tell; ``transforms.ledger_state`` checks both before continuing).

    ``open_losses``: with a ``seed``, the loss rows of the earlier replay whose sale still had
    loss shares no replacement took (``+inf`` paired marks none), as ``(book, sale, day,
    hstart, loss_f)``, rows ordered by book, sale and the sale's consumption order: ``book``
    the event position of the first event of the row's book (its seeded lots and new trades),
    ``sale`` a number equal for the rows of one sale, ascending in event order, ``day`` the
    sale's day, ``hstart`` the row's holding start; ``loss_f`` rows take, realized, wadj
    released, loss shares of the sale before it, replacement shares the sale was paired with,
    disallowed loss so far (``_P_*``). Before a book's new trades, each of its sales in turn
    pairs its loss shares on with the book's new BUYs within 30 days after it, exactly as a
    whole replay would have paired them at the sale (they come after every replacement it
    already had, in event order), splitting those lots as the rule says.

    Returns ``(lot_f, lot_i, real_f, real_i, rej_seq, rej_code, rej_avail, loss_out)``, each cut to
    its filled length: lots (every opened lot and wash-sale piece, in (book, event, piece)
    order, a continued book's seeded lots first: float rows orig, rem, cost, wadj, per-unit
    tax basis; integer rows oseq, split, hstart, closed, closed_ts, pieces split off so far,
    absorbed a loss), realised rows (in close event order, then the order the close consumed
    its lots: float rows take, proceeds, basis, realized, wash-sale adjustment released,
    disallowed loss, and for a loss row of a wash-sale book the loss shares of its sale before
    it (NaN otherwise) and the replacement shares its sale was paired with (+inf: the sale's
    loss was all taken); integer rows closing event, lot output position, holding start),
    rejected closes (event, code 1 unknown named lot / 2 more than the open quantity, open
    quantity at that moment) and the ``open_losses`` rows as this replay left them (float rows
    disallowed loss, replacement shares paired; unchanged where the row's book has no new BUY
    in its window).

    ``room`` sets the first size of every array (default: from the number of events and the
    largest book); the arrays double whenever a book needs more, and that book is replayed.
    """
    n = bk.size
    if seed is None:
        seed = (np.zeros(n, np.bool_), np.zeros((5, 1), np.float64), np.zeros((5, 1), np.int64))
    is_seed, seed_f, seed_i = seed
    if open_losses is None:
        open_losses = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                       np.zeros((_PF, 0), np.float64))
    loss_book, loss_sale, loss_day, loss_hstart, loss_f = open_losses
    loss_out = np.empty((2, loss_book.size), np.float64)
    loss_out[0] = loss_f[_P_DIS]
    loss_out[1] = loss_f[_P_PAIRED]
    if room is None:
        opens = np.bincount(bk[is_open]) if is_open.any() else np.zeros(1, np.int64)
        # wash-sale pieces make lots and realised rows outnumber the events (about 2x in the
        # demo book, where one portfolio and instrument has 5,798 lots): generous first sizes
        # avoid replaying books after doubling, and cost only the pages written (untouched
        # memory is never mapped in)
        a = _Arrays(n + 16, BOOK_ROOM * int(opens.max()) + 16, OUT_ROOM * n + 16)
    else:
        a = _Arrays(room, room, room)
    b0 = n_lots = n_real = n_rej = 0
    while True:
        b0, n_lots, n_real, n_rej, need = _replay(
            bk, is_open, is_long, qty, price, fees, ts, day, method, wash, named, is_seed, seed_f,
            seed_i, loss_book, loss_sale, loss_day, loss_hstart, loss_f, loss_out, b0, n_lots, n_real, n_rej, a.lot_f, a.lot_i, a.real_f, a.real_i, a.rej_seq,
            a.rej_code, a.rej_avail, a.F, a.I, a.live, a.order, a.cand, a.cand_rem,
            a.mark, a.out_pos, a.pair_row, a.pair_cand, a.pair_m,
        )
        if not need:
            break
        a.grow(need)
    return (
        a.lot_f[:, :n_lots], a.lot_i[:, :n_lots], a.real_f[:, :n_real], a.real_i[:, :n_real],
        a.rej_seq[:n_rej], a.rej_code[:n_rej], a.rej_avail[:n_rej], loss_out,
    )


# nogil: shards are built on threads (transforms.shards.map_shards); this loop is most of a
# shard's single-threaded time, so it must not hold the GIL
@njit(cache=True, nogil=True)
def _replay(bk, is_open, is_long, qty, price, fees, ts, day, method, wash, named, is_seed, seed_f,
            seed_i, loss_book, loss_sale, loss_day, loss_hstart, loss_f, loss_out, start, n_lots, n_real, n_rej, lot_f, lot_i, real_f, real_i, rej_seq, rej_code, rej_avail,
            F, I, live, order, cand, cand_rem, mark, out_pos, pair_row, pair_cand, pair_m):
    """Replay the books from event ``start`` on, appending to the output arrays after their
    first ``n_lots``, ``n_real``, ``n_rej`` entries (see ``replay_books``). Returns
    ``(event where it stopped, n_lots, n_real, n_rej, need)``: ``need`` is 0 when every book
    is done, else the ``_NEED_*`` room that ran out, and the event is the start of the book
    to replay again once the driver has made room."""
    n = bk.size
    ulp = 2.0**-52
    cap = F.shape[1]
    lot_cap = lot_f.shape[1]
    real_cap = real_f.shape[1]
    b0 = start
    while b0 < n:
        b1 = b0 + 1
        while b1 < n and bk[b1] == bk[b0]:
            b1 += 1
        lots0 = n_lots
        real0 = n_real
        rej0 = n_rej
        n_open = 0
        for e in range(b0, b1):
            n_open += is_open[e]
        if n_open >= cap:
            return b0, lots0, real0, rej0, _NEED_BOOK
        # the book's lots: one per opening trade, in event order; a seeded lot as it was left
        # (seeded events lead the book, so lot ``e - b0`` is event ``e``'s)
        nl = 0
        for e in range(b0, b1):
            if is_open[e]:
                if is_seed[e]:
                    _set_lot(F, I, nl, seed_f[0, e], seed_f[2, e], seed_f[3, e], seed_i[4, e], seed_i[0, e],
                             seed_i[1, e], day[e], seed_i[3, e], seed_i[4, e] - b0)
                    F[_REM, nl] = seed_f[1, e]
                    F[_PTB, nl] = seed_f[4, e]
                    I[_NSPLIT, nl] = seed_i[2, e]
                else:
                    q = qty[e]
                    cost = q * price[e] + fees[e] if is_long[e] else q * price[e] - fees[e]
                    _set_lot(F, I, nl, q, cost, 0.0, e, 0, day[e], day[e], 0, nl)
                nl += 1
        n_orig = nl
        hifo = method[b0] == HIFO
        lifo = method[b0] == LIFO
        # the open losses of the seed, before the new trades (``replay_books``)
        pa = np.searchsorted(loss_book, b0)
        pb = pa
        while pb < loss_book.size and loss_book[pb] == b0:
            loss_out[0, pb] = loss_f[_P_DIS, pb]  # (again, when the book is replayed after growing)
            loss_out[1, pb] = loss_f[_P_PAIRED, pb]
            pb += 1
        n_seeded = 0
        while b0 + n_seeded < b1 and is_seed[b0 + n_seeded]:
            n_seeded += 1
        s0 = pa
        while s0 < pb:
            s1 = s0 + 1
            while s1 < pb and loss_sale[s1] == loss_sale[s0]:
                s1 += 1
            d = loss_day[s0]
            nc = 0
            for j in range(n_seeded, n_orig):  # the new lots, opened after the sale
                if I[_ODAY, j] > d + WASH_WINDOW_DAYS:
                    break
                if I[_USED, j] == 0 and F[_REM, j] > 0.0:
                    cand[nc] = j
                    cand_rem[nc] = F[_REM, j]
                    nc += 1
            if nc > 0:
                n_pairs, paired = _pair_losses(loss_f[_P_TAKE], loss_f[_P_LOSS_BEFORE], s0, s1, cand_rem, nc,
                                               loss_f[_P_PAIRED, s0], pair_row, pair_cand, pair_m)
                if n_pairs < 0:
                    return b0, lots0, real0, rej0, _NEED_PAIRS
                _, _, _, _, nl, need = _apply_pairs(
                    n_pairs, pair_row, pair_cand, pair_m, cand, loss_f[_P_TAKE], loss_f[_P_REALIZED],
                    loss_f[_P_WADJ], loss_hstart, loss_out[0], d, -1, F, I, live, 0, 0, 0, 0, nl, hifo,
                )
                if need:
                    return b0, lots0, real0, rej0, need
                for r in range(s0, s1):
                    loss_out[1, r] = paired
            s0 = s1
        book_real0 = n_real
        head = 0
        tail = 0
        n_alive = 0
        avail_run = 0.0  # running open quantity, and what bounds its rounding error
        ops = 0
        peak = 0.0
        opened = 0
        for e in range(b0, b1):
            if tail + 2 > live.size or (tail - head > 3 * n_alive + 48):
                tail = _compact(live, head, tail, F)  # (and make room at the end)
                head = 0
            if is_open[e]:
                # the lot becomes available, with the pieces already split off it
                j = opened
                opened += 1
                while j >= 0:
                    if F[_REM, j] > 0.0:
                        if hifo:
                            p = _position(live, head, tail, F, I, j, True)
                            for s in range(tail, p, -1):
                                live[s] = live[s - 1]
                            live[p] = j
                        else:  # the newest lot: last in event order
                            live[tail] = j
                        tail += 1
                        n_alive += 1
                        avail_run += F[_REM, j]
                        ops += 1
                        peak = max(peak, avail_run)
                    j = I[_NEXT, j]
                continue

            # --- a close: check it ---------------------------------------------------------
            q = qty[e]
            nm = named[e]
            code = 0
            if nm != NO_LOT:
                code = 1
                if nm >= 0:
                    for t in range(head, tail):
                        if I[_OSEQ, live[t]] == nm and F[_REM, live[t]] > 0.0:
                            code = 0
                            break
            avail = avail_run
            if q > avail_run - 2.0 * ops * ulp * peak or code != 0:
                avail = 0.0  # near the open quantity: count it exactly
                for t in range(head, tail):
                    avail += F[_REM, live[t]]
                avail_run = avail
                ops = 0
                peak = avail
            if code == 0 and q > avail * (1.0 + EPS):
                code = 2
            if code != 0:
                if n_rej == rej_seq.size:
                    return b0, lots0, real0, rej0, _NEED_REJ
                rej_seq[n_rej] = e
                rej_code[n_rej] = code
                rej_avail[n_rej] = avail
                n_rej += 1
                continue

            # --- the lots it consumes, in order ----------------------------------------------
            if nm >= 0:
                k, left = _collect(live, head, tail, F, I, lifo, nm, True, order, 0, q)
                if left > 0.0:
                    k, left = _collect(live, head, tail, F, I, lifo, nm, False, order, k, left)
            else:
                k, left = _collect(live, head, tail, F, I, lifo, nm, False, order, 0, q)

            # --- consume ----------------------------------------------------------------------
            long = is_long[e]
            c_fees = fees[e]
            c_price = price[e]
            r0 = n_real
            left = q
            if n_real + k > real_cap:
                return b0, lots0, real0, rej0, _NEED_REAL
            for t in range(k):
                j = order[t]
                rem = F[_REM, j]
                take = min(left, rem)
                if rem - take <= EPS * F[_ORIG, j]:
                    take = rem
                left -= rem
                if take <= EPS * q:
                    continue
                cost = F[_COST, j]
                wadj = F[_WADJ, j]
                frac = take / rem
                cost_rel = cost * frac
                wadj_rel = wadj * frac
                if take >= rem:
                    F[_REM, j] = 0.0
                    F[_COST, j] = 0.0
                    F[_WADJ, j] = 0.0
                    I[_CLOSED, j] = 1
                    I[_CLOSED_TS, j] = ts[e]
                    n_alive -= 1
                else:
                    F[_REM, j] = rem - take
                    F[_COST, j] = cost - cost_rel
                    F[_WADJ, j] = wadj - wadj_rel
                avail_run -= take
                ops += 1
                fee_alloc = c_fees * take / q
                at_price = take * c_price
                if long:
                    proceeds = at_price - fee_alloc
                    basis = cost_rel
                else:
                    proceeds = cost_rel
                    basis = at_price + fee_alloc
                real_f[_R_TAKE, n_real] = take
                real_f[_R_PROCEEDS, n_real] = proceeds
                real_f[_R_BASIS, n_real] = basis
                real_f[_R_REALIZED, n_real] = proceeds - basis
                real_f[_R_WADJ, n_real] = wadj_rel
                real_f[_R_DIS, n_real] = 0.0
                real_f[_R_LOSS_BEFORE, n_real] = np.nan
                real_f[_R_PAIRED, n_real] = np.nan
                real_i[_R_CSEQ, n_real] = e
                real_i[_R_LOT, n_real] = j  # the book-table index until the book ends
                real_i[_R_HSTART, n_real] = I[_HSTART, j]
                n_real += 1
            # exhausted lots at the ends leave at once
            if lifo:
                while tail > head and F[_REM, live[tail - 1]] <= 0.0:
                    tail -= 1
            else:
                while head < tail and F[_REM, live[head]] <= 0.0:
                    head += 1

            # --- wash sales -------------------------------------------------------------------
            if not wash[e]:
                continue
            # the loss rows, in the order the sale consumed them, and their loss shares before
            a_run = 0.0
            for r in range(r0, n_real):
                res = real_f[_R_REALIZED, r] - real_f[_R_WADJ, r]
                if res < -EPS * (real_f[_R_BASIS, r] + real_f[_R_WADJ, r]):
                    real_f[_R_LOSS_BEFORE, r] = a_run
                    a_run = a_run + real_f[_R_TAKE, r]
            if a_run == 0.0:
                continue
            d = day[e]
            lo = _first_after(I, n_orig, d - WASH_WINDOW_DAYS - 1)
            hi = _first_after(I, n_orig, d + WASH_WINDOW_DAYS)
            nc = 0
            if hi > lo:
                # every lot of an opening trade this sale consumed is excluded
                for r in range(r0, n_real):
                    mark[I[_ROOT, real_i[_R_LOT, r]]] = True
                for j in range(lo, hi):
                    if I[_USED, j] == 0 and F[_REM, j] > 0.0 and not mark[j]:
                        cand[nc] = j
                        cand_rem[nc] = F[_REM, j]
                        nc += 1
                for r in range(r0, n_real):
                    mark[I[_ROOT, real_i[_R_LOT, r]]] = False
            paired = 0.0
            if nc > 0:
                n_pairs, paired = _pair_losses(real_f[_R_TAKE], real_f[_R_LOSS_BEFORE], r0, n_real, cand_rem, nc, 0.0,
                                               pair_row, pair_cand, pair_m)
                if n_pairs < 0:
                    return b0, lots0, real0, rej0, _NEED_PAIRS
                head, tail, n_alive, ops, nl, need = _apply_pairs(
                    n_pairs, pair_row, pair_cand, pair_m, cand, real_f[_R_TAKE], real_f[_R_REALIZED],
                    real_f[_R_WADJ], real_i[_R_HSTART], real_f[_R_DIS], d, e, F, I, live, head, tail,
                    n_alive, ops, nl, hifo,
                )
                if need:
                    return b0, lots0, real0, rej0, need
            for r in range(r0, n_real):
                real_f[_R_PAIRED, r] = paired

        # --- the book's lots, in (event, piece) order ---------------------------------------
        if n_lots + nl > lot_cap:
            return b0, lots0, real0, rej0, _NEED_LOTS
        for j0 in range(n_orig):
            j = j0
            while j >= 0:
                for c in range(_LF):
                    lot_f[c, n_lots] = F[c, j]
                lot_i[0, n_lots] = I[_OSEQ, j]
                lot_i[1, n_lots] = I[_SPLIT, j]
                lot_i[2, n_lots] = I[_HSTART, j]
                lot_i[3, n_lots] = I[_CLOSED, j]
                lot_i[4, n_lots] = I[_CLOSED_TS, j]
                lot_i[5, n_lots] = I[_NSPLIT, j]
                lot_i[6, n_lots] = I[_USED, j]
                out_pos[j] = n_lots
                n_lots += 1
                j = I[_NEXT, j]
        for r in range(book_real0, n_real):
            real_i[_R_LOT, r] = out_pos[real_i[_R_LOT, r]]
        b0 = b1
    return n, n_lots, n_real, n_rej, 0
