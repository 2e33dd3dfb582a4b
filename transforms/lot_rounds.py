"""The round engine of the tax-lot ledger: replays every book's closes round by round on
numpy arrays (round k = the k-th close of every book at once).

``transforms.lots`` prepares the integer-coded lots and closes and assembles the output
frames; this module holds the lot store and the allocation, with wash sales applied by
``transforms.wash_sales`` as each round's losses are realised. Rules are stated in
``transforms.lots``.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from transforms.contract import TS
from transforms.wash_sales import EPS, WASH_WINDOW_DAYS, apply_wash_sales, loss_rows


# lot state: one row per lot (split pieces included)
LOT_STATE = [
    "lk",  # unique lot key
    "bk",  # book key: (portfolio, instrument) index * 2 + is_short
    "oseq",  # event position of the opening trade (lot_id = that trade_id)
    "split",  # 0 for the lot itself, n for the wash-sale piece "<lot_id>~W<n>"
    "is_long",
    "open_ts",
    "open_price",
    "orig",
    "rem",
    "cost",
    "wadj",
    "hstart",
    "open_date",
    "avail_round",  # first round whose close may consume it (= closes of the book before it)
    "last_round",  # the book's last round
    "method",  # 0 FIFO, 1 LIFO, 2 HIFO
    "wash",  # TAXABLE and LONG: subject to wash sales
    "used",  # already absorbed a disallowed loss (a share absorbs at most one)
    "nsplit",  # pieces split off so far
    "closed_ts",
]

# realised rows, as the engine returns them (one per close x lot piece consumed)
REAL_STATE = [
    "bk",
    "c_seq",
    "oseq",
    "split",
    "is_long",
    "c_ts",
    "c_date",
    "take",
    "proceeds",
    "basis",
    "realized",
    "wadj_rel",
    "disallowed",
    "hstart",
    "alloc_idx",
]

_REJ_SCHEMA = {"c_seq": pl.Int64, "_code": pl.Int8, "_avail": pl.Float64}
_SPLIT_BITS = 20  # wash-sale piece number inside the static priority key
NO_LOT = -2  # c_named of a close that names no lot (-1: names a lot that is not of its book)


class LotStore:
    """Lot state as numpy columns indexed by a lot number; split-off pieces are appended.

    The first ``n_orig`` rows are the opened lots sorted by (book, event order), so the lots
    of a book opened in a date range are one ``searchsorted`` away (``orig_key``).

    Priority inside a book is the sort key (``k1``, ``tie``): ``k1`` is minus the per-unit
    tax basis for HIFO lots (0 otherwise) and ``tie`` is the event position (negated for LIFO)
    shifted left with the piece number in the low bits. Partial closes release basis pro rata,
    so a lot's key only changes when a wash sale adds to its basis (``refresh_k1``).

    Wash-sale pieces are only ever split off opened lots (a piece has absorbed a loss, so it is
    never a replacement itself); ``root`` is the opened lot a row belongs to (itself for an
    opened lot) and ``mark`` a scratch mask over the opened lots, False between uses.
    """

    _FLOAT = ("open_price", "orig", "rem", "cost", "wadj", "k1")
    _INT = ("bk", "oseq", "split", "open_ts", "hstart", "open_date", "avail_round",
            "last_round", "nsplit", "closed_ts", "tie", "key", "root")
    _BOOL = ("is_long", "wash", "used", "closed")
    # what a wash-sale piece inherits from its parent (``append_pieces``)
    _IDENTITY = ("bk", "oseq", "is_long", "open_ts", "open_price", "open_date", "avail_round",
                 "last_round", "method", "wash", "root", "tie", "key")

    def __init__(self, lots: pl.DataFrame, n_events: int, day_lo: int, day_hi: int):
        # opening trades arrive in event order, which is (book, event) order: sort only if not
        oseq = lots.get_column("oseq").to_numpy()
        if oseq.size > 1 and not (oseq[1:] > oseq[:-1]).all():
            lots = lots.sort("bk", "oseq")
        n = lots.height
        cap = max(16, 2 * n)
        self.n = self.n_orig = n
        self.n_events = n_events
        g = lots.select(
            pl.col("bk", "oseq", "split", "avail_round", "last_round", "nsplit").cast(pl.Int64),
            pl.col("open_ts").cast(pl.Int64),
            pl.col("hstart", "open_date").cast(pl.Int32).cast(pl.Int64),
            pl.col("closed_ts").cast(pl.Int64).fill_null(0),
            pl.col("open_price", "orig", "rem", "cost", "wadj").cast(pl.Float64),
            pl.col("is_long", "wash", "used"),
            closed=pl.col("closed_ts").is_not_null(),
            method=pl.col("method").cast(pl.Int8),
        )
        for names, dtype in ((self._FLOAT, np.float64), (self._INT, np.int64),
                             (self._BOOL, np.bool_), (("method",), np.int8)):
            for c in names:
                arr = np.zeros(cap, dtype)
                if c in g.columns:
                    arr[:n] = g.get_column(c).to_numpy()
                setattr(self, c, arr)
        # the opened lot a row belongs to (itself, or the parent of a wash-sale piece), and a
        # scratch mask over the opened lots (all False between uses)
        self.root[:n] = np.arange(n)
        self.mark = np.zeros(n, np.bool_)
        # date window search key over the original lots (open dates ascend inside a book)
        self.day_min = day_lo - 4 * WASH_WINDOW_DAYS
        self.day_span = day_hi - self.day_min + 4 * WASH_WINDOW_DAYS
        self.orig_key = self.bk[:n] * self.day_span + (self.open_date[:n] - self.day_min)
        self.tie_span = (np.int64(n_events) + 1) << (_SPLIT_BITS + 1)
        max_bk = int(self.bk[:n].max()) if n else 0
        self.packed = (max_bk + 1) * int(self.tie_span) < 2**62
        self.refresh_keys(slice(0, n))

    def refresh_keys(self, idx: np.ndarray | slice) -> None:
        """Recompute the priority keys of lots ``idx`` (after creation or a basis change);
        ``idx`` may be a slice (views, not gathers)."""
        if not isinstance(idx, slice) and idx.size == 0:
            return
        m = self.method[idx]
        rem = self.rem[idx]
        ptb = (self.cost[idx] + self.wadj[idx]) / np.where(rem > 0, rem, 1.0)
        self.k1[idx] = np.where(m == 2, -ptb, 0.0)
        os = np.where(m == 1, -self.oseq[idx], self.oseq[idx])
        self.tie[idx] = (os << _SPLIT_BITS) + self.split[idx]
        if self.packed:
            self.key[idx] = self.bk[idx] * self.tie_span + self.tie[idx] + (self.tie_span >> 1)

    def refresh_k1(self, idx: np.ndarray) -> None:
        """Recompute the basis part ``k1`` of the keys of lots ``idx`` (after a basis change:
        the event-order part ``tie`` does not change)."""
        if idx.size == 0:
            return
        rem = self.rem[idx]
        ptb = (self.cost[idx] + self.wadj[idx]) / np.where(rem > 0, rem, 1.0)
        self.k1[idx] = np.where(self.method[idx] == 2, -ptb, 0.0)

    def append_pieces(self, parents: np.ndarray) -> np.ndarray:
        """New lots for wash-sale pieces of the opened lots ``parents``; returns their indices.

        Only the inherited columns (``_IDENTITY``) are copied, with the parent's priority key
        shifted by the piece number (a parent has piece number 0, so this equals
        ``refresh_keys``' tie and key); the caller sets the piece number (``split``, the amount
        it adds to the keys), quantities, basis, holding start, flags and ``k1``."""
        k = parents.size
        if k == 0:
            return np.zeros(0, np.int64)
        if self.n + k > self.rem.size:
            cap = max(2 * self.rem.size, self.n + k)
            for c in (*self._FLOAT, *self._INT, *self._BOOL, "method"):
                old = getattr(self, c)
                arr = np.zeros(cap, old.dtype)
                arr[: self.n] = old[: self.n]
                setattr(self, c, arr)
        new = slice(self.n, self.n + k)
        for c in self._IDENTITY:
            arr = getattr(self, c)
            arr[new] = arr[parents]
        self.n += k
        return np.arange(new.start, new.stop)

    def order(self, w: np.ndarray, hifo: bool) -> np.ndarray:
        """``w`` sorted by (book, priority)."""
        if self.packed and not hifo:
            return w[np.argsort(self.key[w], kind="stable")]
        return w[np.lexsort((self.tie[w], self.k1[w], self.bk[w]))]

    def output_order(self) -> np.ndarray:
        """Store indices in (book, event order, piece number) order, without a sort.

        Pieces are only ever split off opened lots (a piece has absorbed a loss, so it is never
        a replacement again) and a lot's pieces are numbered 1..nsplit, so a row's place is
        its opened lot's place, shifted by the pieces of earlier lots, plus its piece number.
        Falls back to a sort if that ever does not give a permutation."""
        n, n0 = self.n, self.n_orig
        if n == n0:
            return np.arange(n)
        width = self.nsplit[:n0] + 1
        start = np.cumsum(width) - width
        pos = start[self.root[:n]] + self.split[:n]
        if pos.size and int(pos.max()) < n and (np.bincount(pos, minlength=n) == 1).all():
            order = np.empty(n, np.int64)
            order[pos] = np.arange(n)
            return order
        return np.lexsort((self.split[:n], self.oseq[:n], self.bk[:n]))

    def frame(self) -> pl.DataFrame:
        """The lot state, in (book, event order, piece number) order."""
        n = self.n
        cols = {c: getattr(self, c)[:n] for c in (
            "bk", "oseq", "split", "is_long", "open_price", "orig", "rem", "cost",
            "wadj", "avail_round", "last_round", "wash", "used", "nsplit", "method")}
        closed = self.closed[:n]
        f = pl.DataFrame(cols).with_columns(
            lk=pl.int_range(n, dtype=pl.Int64),
            open_ts=pl.Series(self.open_ts[:n]).cast(TS),
            hstart=pl.Series(self.hstart[:n].astype(np.int32)).cast(pl.Date),
            open_date=pl.Series(self.open_date[:n].astype(np.int32)).cast(pl.Date),
            closed_ts=pl.when(pl.Series(closed))
            .then(pl.Series(self.closed_ts[:n]).cast(TS)),
        ).select(LOT_STATE)
        # pieces sit at the end: one (multi-threaded) Polars gather puts them in place
        return f if n == self.n_orig else f[pl.Series(self.output_order())]


def replay_rounds(
    lots: pl.DataFrame, closes: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Replay books round by round (round k = the k-th close of every book) on numpy arrays.

    The working set ``w`` holds the lots that the round's closes may consume: opened before
    the book's round-k close (``avail_round <= k``), not exhausted, of a book with a close
    left; it is kept sorted by (book, lot priority), so one segmented cumulative sum per round
    allocates every close: ``take = clip(close_qty - qty_before, 0, remaining)``. Lots enter
    when they become available and leave when exhausted, so a round costs the open lots of
    the books still closing, not the whole history.

    Returns (lot state in (book, event order, piece) order; realised rows ``REAL_STATE``
    plus the lot's store index ``lk``, in (close event order, allocation order); rejections
    ``c_seq, _code, _avail``).
    """
    if closes.height == 0:
        return lots, _empty_real(), pl.DataFrame(schema=_REJ_SCHEMA)
    # closes arrive in (book, event) order, so a stable sort by round gives (round, book)
    rnd = closes.get_column("round").to_numpy()
    c_ord = np.argsort(rnd.astype(np.int16) if rnd.max() < 2**15 else rnd, kind="stable")
    cl = closes[pl.Series(c_ord)].select(
        pl.col("bk", "c_seq", "round").cast(pl.Int64),
        pl.col("c_ts").cast(pl.Int64),
        pl.col("c_date").cast(pl.Int32).cast(pl.Int64),
        pl.col("c_qty", "c_price", "c_fees").cast(pl.Float64),
        pl.col("c_named").fill_null(NO_LOT).cast(pl.Int64),
        pl.col("c_long"),
        wash=pl.col("wash"),
    )
    C = {c: cl.get_column(c).to_numpy() for c in cl.columns}
    n_events = int(max(C["c_seq"].max(), lots["oseq"].max() if lots.height else 0)) + 1
    d_lo, d_hi = int(C["c_date"].min()), int(C["c_date"].max())
    if lots.height:
        od = lots.select(pl.col("open_date").cast(pl.Int32).min().alias("a"),
                         pl.col("open_date").cast(pl.Int32).max().alias("b")).row(0)
        d_lo, d_hi = min(d_lo, od[0]), max(d_hi, od[1])
    S = LotStore(lots, n_events, d_lo, d_hi)
    n_rounds = int(C["round"][-1]) + 1
    c_bounds = np.searchsorted(C["round"], np.arange(n_rounds + 1))
    any_named = bool((C["c_named"] != NO_LOT).any())

    # opened lots by the round in which they become available
    n0 = S.n
    can = np.flatnonzero((S.avail_round[:n0] <= S.last_round[:n0]) & (S.rem[:n0] > 0))
    ar_can = S.avail_round[can]
    # a stable sort of 16-bit keys is a radix sort
    can = can[np.argsort(ar_can.astype(np.int16) if n_rounds < 2**15 else ar_can, kind="stable")]
    e_bounds = np.searchsorted(S.avail_round[can], np.arange(n_rounds + 1))
    pending: dict[int, list[np.ndarray]] = {}  # split-off pieces of not yet available lots
    hifo = bool((S.method[:n0] == 2).any())

    # per-round facts found once, so a round with few closes costs few numpy calls
    cb = c_bounds.tolist()
    eb = e_bounds.tolist()
    named_round = (
        (np.bincount(C["round"][C["c_named"] != NO_LOT], minlength=n_rounds) > 0).tolist()
        if any_named else [False] * n_rounds
    )
    # a book leaves the working set after its last round: rounds after which some book ends
    ends = (np.bincount(np.maximum(S.last_round[:n0], 0), minlength=n_rounds + 1)[:n_rounds]
            > 0).tolist()
    # no TAXABLE LONG lot: no wash sale can happen (pieces, basis changes, holding starts)
    wash_any = bool(S.wash[:n0].any())
    wadj_zero = not wash_any and not S.wadj[:n0].any()
    c_bk, c_qty = C["bk"], C["c_qty"]

    w = np.zeros(0, np.int64)
    ready: list[np.ndarray] = []  # pieces split off last round from available lots
    resort = False
    out: dict[str, list[np.ndarray]] = {c: [] for c in (
        "ci", "lot", "take", "cost_rel", "wadj_rel", "full", "hstart")}
    dis_parts: list[tuple[int, np.ndarray]] = []  # (first row, disallowed) of rounds with losses
    n_rows = 0
    rej: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for k in range(n_rounds):
        c0, c1 = cb[k], cb[k + 1]
        e0, e1 = eb[k], eb[k + 1]
        entering = [can[e0:e1]] if e1 > e0 else []
        if ready:
            entering += ready
            ready = []
        if pending:
            entering += pending.pop(k, [])
        if entering:
            w = np.concatenate([w, *entering])
            resort = True
        if resort and w.size:
            w = S.order(w, hifo)
        resort = False

        cbk = c_bk[c0:c1]
        cq = c_qty[c0:c1]
        n_c = c1 - c0
        ci = np.searchsorted(cbk, S.bk[w])  # the close of each working lot's book
        rem = S.rem[w]
        avail = np.bincount(ci, rem, minlength=n_c)
        over = cq > avail * (1 + EPS)
        lots_w = w
        code = None
        if named_round[k]:
            code = np.zeros(n_c, np.int8)
            cn = C["c_named"][c0:c1]
            # the named lot (all its open pieces) first, then the method's order
            named = S.oseq[w] == cn[ci]
            named_ok = np.bincount(ci[named], minlength=n_c) > 0
            code[(cn != NO_LOT) & ~named_ok] = 1
            if named.any():
                perm = np.lexsort((~named, ci))
                lots_w, ci, rem = w[perm], ci[perm], rem[perm]
            code[(code == 0) & over] = 2
        elif over.any():
            code = np.zeros(n_c, np.int8)
            code[over] = 2
        ok = None
        if code is not None:
            okc = code == 0
            if not okc.all():
                bad = np.flatnonzero(~okc)
                rej.append((C["c_seq"][c0 + bad], code[bad], avail[bad]))
                ok = okc

        cum = np.cumsum(rem)
        seg0 = np.searchsorted(ci, np.arange(n_c))
        off = np.concatenate(([0.0], cum))[seg0]
        before = cum - rem - off[ci]
        cq_ci = cq[ci]
        take = cq_ci - before  # clipped to [0, rem]
        np.maximum(take, 0.0, out=take)
        np.minimum(take, rem, out=take)
        # within tolerance of the whole lot: close it (no 1e-15 leftovers)
        take = np.where(rem - take <= EPS * S.orig[lots_w], rem, take)
        sel = take > EPS * cq_ci
        if ok is not None:
            sel &= ok[ci]
        a_c, a_lot, tk = ci[sel], lots_w[sel], take[sel]
        if tk.size:
            g = a_c + c0
            l_rem = S.rem[a_lot]
            l_cost = S.cost[a_lot]
            frac = tk / l_rem
            cost_rel = l_cost * frac
            full = tk >= l_rem
            S.rem[a_lot] = np.where(full, 0.0, l_rem - tk)
            S.cost[a_lot] = np.where(full, 0.0, l_cost - cost_rel)
            if wadj_zero:
                wadj_rel = None
            else:
                l_wadj = S.wadj[a_lot]
                wadj_rel = l_wadj * frac
                S.wadj[a_lot] = np.where(full, 0.0, l_wadj - wadj_rel)
                out["wadj_rel"].append(wadj_rel)
            hstart = None
            if wash_any:
                hstart = S.hstart[a_lot]
                out["hstart"].append(hstart)
                l_wash = S.wash[a_lot]
                if l_wash.any():
                    fee_alloc = C["c_fees"][g] * tk / c_qty[g]
                    at_price = tk * C["c_price"][g]
                    long = S.is_long[a_lot]
                    proceeds = np.where(long, at_price - fee_alloc, cost_rel)
                    basis = np.where(long, cost_rel, at_price + fee_alloc)
                    tax_res = proceeds - basis - wadj_rel
                    loss = loss_rows(l_wash, tax_res, cost_rel, wadj_rel)
                    if loss.any():
                        dis, children, adjusted = apply_wash_sales(
                            S, a_c, a_lot, tk, tax_res, loss, cbk, C["c_date"][c0:c1], hstart
                        )
                        dis_parts.append((n_rows, dis))
                        if children.size:
                            ar = S.avail_round[children]
                            # a piece of a lot opened after its book's last close never enters
                            live = ar <= S.last_round[children]
                            now = ar <= k
                            nxt = children[now & (S.last_round[children] > k)]
                            if nxt.size:
                                ready.append(nxt)
                            later_m = ~now & live
                            if later_m.any():
                                # group the later pieces by the round they become available (a
                                # numpy sort + split: a Polars frame per round cost more than
                                # the round)
                                later, ar = children[later_m], ar[later_m]
                                o = np.argsort(ar, kind="stable")
                                later, ar = later[o], ar[o]
                                cut = np.flatnonzero(ar[1:] != ar[:-1]) + 1
                                for r_k, grp in zip(ar[np.r_[0, cut]].tolist(),
                                                    np.split(later, cut)):
                                    pending.setdefault(r_k, []).append(grp)
                        resort = hifo and adjusted.size > 0
            out["ci"].append(g)
            out["lot"].append(a_lot)
            out["take"].append(tk)
            out["cost_rel"].append(cost_rel)
            out["full"].append(full)
            n_rows += tk.size
            keep = S.rem[w] > 0
            if ends[k]:
                keep &= S.last_round[w] > k
            w = w[keep]
        elif ends[k]:
            w = w[S.last_round[w] > k]

    if not out["ci"]:
        real = _empty_real()
    else:
        g = np.concatenate(out["ci"])
        lot = np.concatenate(out["lot"])
        tk = np.concatenate(out["take"])
        cost_rel = np.concatenate(out["cost_rel"])
        full = np.concatenate(out["full"])
        wadj_rel = np.concatenate(out["wadj_rel"]) if out["wadj_rel"] else np.zeros(tk.size)
        dis = np.zeros(tk.size)
        for r0, d in dis_parts:
            dis[r0: r0 + d.size] = d
        # a lot is closed by the close that takes its last share (once: it then leaves)
        done = lot[full]
        S.closed[done] = True
        S.closed_ts[done] = C["c_ts"][g[full]]
        # the closes' rows follow in close order (rounds ascend, closes ascend in a round), so
        # a row's allocation index is its place after the rows of earlier closes
        g_cnt = np.bincount(g, minlength=C["c_seq"].size)
        aidx = np.arange(g.size) - (np.cumsum(g_cnt) - g_cnt)[g]
        # emit in close (event) order, each close's rows in allocation order: a close's rows
        # are contiguous within its round, so each row's place is the rows of earlier closes
        # plus its allocation index (a counting sort, not a sort of every row)
        cs = closes.get_column("c_seq").to_numpy()
        if cs.size < 2 or (cs[1:] > cs[:-1]).all():
            rank = c_ord
        else:
            inv = np.empty(cs.size, np.int64)
            inv[np.argsort(cs, kind="stable")] = np.arange(cs.size)
            rank = inv[c_ord]
        cnt = np.zeros(cs.size, np.int64)
        cnt[rank] = g_cnt
        start = np.cumsum(cnt) - cnt
        perm = np.empty(g.size, np.int64)
        perm[start[rank[g]] + aidx] = np.arange(g.size)
        # put the rows in place first (a few numpy gathers): every other column is then
        # gathered or computed row by row in output order
        g, lot, tk, cost_rel, dis, aidx = (
            g[perm], lot[perm], tk[perm], cost_rel[perm], dis[perm], aidx[perm])
        wadj_rel = wadj_rel[perm] if out["wadj_rel"] else wadj_rel
        hstart = np.concatenate(out["hstart"])[perm] if out["hstart"] else S.hstart[lot]
        fee_alloc = C["c_fees"][g] * tk / c_qty[g]
        at_price = tk * C["c_price"][g]
        long = S.is_long[lot]
        proceeds = np.where(long, at_price - fee_alloc, cost_rel)
        basis = np.where(long, cost_rel, at_price + fee_alloc)
        realized = proceeds - basis
        real = pl.DataFrame(
            {
                "bk": C["bk"][g],
                "c_seq": C["c_seq"][g],
                "oseq": S.oseq[lot],
                "split": S.split[lot],
                "is_long": long,
                "c_ts": pl.Series(C["c_ts"][g]).cast(TS),
                "c_date": pl.Series(C["c_date"][g].astype(np.int32)).cast(pl.Date),
                "take": tk,
                "proceeds": proceeds,
                "basis": basis,
                "realized": realized,
                "wadj_rel": wadj_rel,
                "disallowed": dis,
                "hstart": pl.Series(hstart.astype(np.int32)).cast(pl.Date),
                "alloc_idx": aidx,
                "lk": lot,  # the lot's store index (= ``lk`` of the lot state)
            }
        )
    if rej:
        rejected = pl.DataFrame(
            {
                "c_seq": np.concatenate([r[0] for r in rej]),
                "_code": np.concatenate([r[1] for r in rej]),
                "_avail": np.concatenate([r[2] for r in rej]),
            },
            schema=_REJ_SCHEMA,
        )
    else:
        rejected = pl.DataFrame(schema=_REJ_SCHEMA)
    return S.frame(), real, rejected


def _empty_real() -> pl.DataFrame:
    schema = {
        "bk": pl.Int64,
        "c_seq": pl.Int64,
        "oseq": pl.Int64,
        "split": pl.Int64,
        "is_long": pl.Boolean,
        "c_ts": TS,
        "c_date": pl.Date,
        "take": pl.Float64,
        "proceeds": pl.Float64,
        "basis": pl.Float64,
        "realized": pl.Float64,
        "wadj_rel": pl.Float64,
        "disallowed": pl.Float64,
        "hstart": pl.Date,
        "alloc_idx": pl.Int64,
    }
    return pl.DataFrame(schema=schema)


# --- output -----------------------------------------------------------------------------------
