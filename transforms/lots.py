"""The lot ledger: tax lots, realised P&L and wash sales from a portfolio's trades.

``build_ledger(trades, portfolios)`` is a pure function over Polars frames (no Dagster, no file
system). It replays every book (portfolio, instrument, LONG or SHORT) in event order, opens a lot
per opening trade, lets each closing trade consume lots by the portfolio's lot method, rejects
trades that cannot be applied, and applies the wash-sale rule (``transforms.wash_sales``).

How it stays vectorised
-----------------------
A closing trade's result depends on every earlier close of its book, so the books are replayed
in *rounds*: round ``k`` processes the ``k``-th closing trade of every book at once. Polars
validates the rows; portfolio and instrument become integer codes in name order (an Enum of
the sorted distinct names), so event order is one integer sort and the working frames carry
numbers only. Strings are gathered from the (rechunked) input by row number once per output
column at the end. The rounds run on numpy arrays (``LotStore``), so a round costs a few
dozen array operations over the lots it can touch, not a Polars plan. The number of rounds is
the largest number of closes in one book, not the number of trades.

Within a book the lot method's priority is static: FIFO is event order, LIFO reverse event
order, HIFO the per-unit tax basis (descending; ties by event order), and a partial close
releases basis pro rata, so a lot's priority only changes when a wash sale adds to its basis.
The working set (lots opened before the book's round-k close, not exhausted, of a book with
closes left) is kept sorted by (book, priority); lots enter when they become available and
leave when exhausted. One segmented cumulative sum then allocates every close of the round:
``take = clip(close_qty - qty_before, 0, remaining)``. A named ``lot_id`` moves that lot's open
pieces to the front of its book for that close only. Wash sales (``transforms.wash_sales``)
search the round's loss sales' replacement windows with ``searchsorted`` on the opened lots and
append split-off pieces to the store.

FIFO books need nothing special: without oversells, named lots or wash sales the same rounds
give the cumulative-interval FIFO allocation (the tests compare every path with a per-trade
specification loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from transforms.contract import (
    LANDING_SCHEMAS,
    LOT_METHODS,
    LOTS_SCHEMA,
    REALIZED_PNL_SCHEMA,
    TAX_STATUSES,
    TRADE_SIDES,
    TS,
)
from transforms.lot_rounds import LOT_STATE, NO_LOT, REAL_STATE, replay_rounds

__all__ = ["Ledger", "build_ledger"]


@dataclass(frozen=True)
class Ledger:
    """The result of :func:`build_ledger`.

    lots: ``LOTS_SCHEMA``; every lot ever opened (OPEN and CLOSED), including wash-sale pieces.
    realized_pnl: ``REALIZED_PNL_SCHEMA``; one row per (closing trade, lot) match.
    accepted_trades: the input trades that were applied (input columns, input dtypes).
    rejected_trades: the input rows that were not applied, plus a ``reason`` String column.
    """

    lots: pl.DataFrame
    realized_pnl: pl.DataFrame
    accepted_trades: pl.DataFrame
    rejected_trades: pl.DataFrame


# Internal frames carry only numbers: strings are gathered once at the end by event position
# (``seq``), because copying string columns through every join dominated the run time.
#

_CLOSE_COLS = [
    "bk",
    "c_seq",
    "c_ts",
    "c_date",
    "c_qty",
    "c_price",
    "c_fees",
    "c_named",
    "round",
]


_METHOD_CODE = {"FIFO": 0, "LIFO": 1, "HIFO": 2}


def build_ledger(trades: pl.DataFrame, portfolios: pl.DataFrame) -> Ledger:
    """Build the lot ledger of ``trades``.

    Inputs:
        trades: at least the ``LANDING_SCHEMAS["trades"]`` columns (``fees``, ``lot_id`` and
            ``strategy_id`` may be absent or null; null fees count as 0). Extra columns (e.g.
            ``source_file``, ``source_row``) are carried to accepted/rejected untouched.
        portfolios: ``portfolio_id``, ``tax_status`` (TAXABLE/EXEMPT), ``lot_method``
            (FIFO/LIFO/HIFO).
    Output: a :class:`Ledger`. It does not depend on the input row order: lots and realised
    rows are ordered by portfolio, instrument, LONG before SHORT, then event order; accepted
    trades in event order per (portfolio, instrument, side of book); rejected trades by
    portfolio, instrument, time and trade_id.

    Rules:
        - Event order per (portfolio_id, instrument_id): ``trade_ts``, then opening sides (BUY,
          SELL_SHORT) before closing sides (SELL, BUY_TO_COVER) at the same timestamp, then
          ``trade_id``.
        - BUY opens a LONG lot, SELL_SHORT a SHORT lot; ``lot_id`` = the opening ``trade_id``.
          SELL closes LONG lots, BUY_TO_COVER SHORT lots; the two books are independent.
        - A close consumes the lot named by its ``lot_id`` first (all still-open pieces of that
          opening trade), then lots by the portfolio's method: FIFO oldest first, LIFO newest
          first, HIFO highest per-unit tax basis first (for SHORT lots: highest proceeds per
          unit); ties by open time, then lot id (event order), then wash-sale piece number.
          ``lot_id`` on an opening trade is ignored.
        - Rejected (with a reason; the book goes on as if the trade never existed): unknown
          portfolio; portfolio with an invalid tax_status/lot_method; null or duplicate
          trade_id (all copies); unknown side; null timestamp/instrument; non-positive or
          non-finite quantity; negative or non-finite price or fees; a named lot_id that is not
          an open lot of the same book at that time; a SELL (BUY_TO_COVER) of more than the
          open LONG (SHORT) quantity (relative tolerance 1e-9), never turned into the other side.
        - Basis: LONG lot cost_basis = qty*price + fees; SHORT lot cost_basis (proceeds
          received) = qty*price - fees. A SELL's proceeds = qty*price - fees pro-rata per lot;
          a BUY_TO_COVER's cost = qty*price + fees pro-rata. realized_pnl = proceeds -
          cost_basis. A partial close keeps the lot OPEN with the remaining quantity and
          pro-rata remaining cost_basis and wash_sale_adjustment; ``closed_ts`` is set when the
          quantity reaches 0 (a remainder <= 1e-9 * original quantity counts as 0).
        - Holding period: holding_days = close date - holding_start (UTC dates). term is LONG
          when close date > holding_start + 1 calendar year (Polars ``offset_by("1y")``; Feb 29
          + 1y = Feb 28), else SHORT: a lot bought 2023-01-10 is SHORT when sold on 2024-01-10
          and LONG on 2024-01-11.
        - Wash sales: see ``transforms.wash_sales`` (TAXABLE portfolios, LONG lots only; short
          sales are not subject to wash-sale processing). taxable_pnl = realized_pnl -
          wash_sale_adjustment + disallowed_loss, with disallowed_loss >= 0.
    """
    return _build_ledger(trades, portfolios)


def _build_ledger(trades: pl.DataFrame, portfolios: pl.DataFrame) -> Ledger:
    """:func:`build_ledger` (kept as the entry point the tests use)."""
    # one chunk: gathers by row index over a many-chunk frame (e.g. concatenated shards) cost
    # several times the copy, and the output is gathered from these columns
    orig = trades.with_row_index("_r").rechunk()
    checked, reasons = _validate(orig, portfolios)
    work = _events(checked)
    lots, real, rej = replay_rounds(_open_lots(work), _closes(work))
    return _assemble(orig, reasons, work, rej, [lots], [real])


# --- preparation ------------------------------------------------------------------------------


def _validate(
    orig: pl.DataFrame, portfolios: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(typed working columns of the rows that may apply, ``_r, reason`` of those that never can).

    The valid rows carry the portfolio's lot method code (``_mcode``) and ``_taxable``.
    """
    t = orig
    for col in ("fees", "lot_id", "strategy_id"):
        if col not in t.columns:
            t = t.with_columns(pl.lit(None, LANDING_SCHEMAS["trades"][col]).alias(col))
    t = t.select(
        "_r",
        *[
            pl.col(c).cast(d)
            for c, d in LANDING_SCHEMAS["trades"].items()
            if c not in ("settle_date", "strategy_id")
        ],
    )
    pf = portfolios.select(
        "portfolio_id",
        pl.col("tax_status").alias("_tax"),
        pl.col("lot_method").alias("_method"),
        pl.lit(True).alias("_known"),
    ).unique("portfolio_id", keep="first", maintain_order=True)
    pf = pf.with_columns(
        _mcode=pl.col("_method").replace_strict(_METHOD_CODE, default=None, return_dtype=pl.Int8),
        _taxable=pl.col("_tax") == "TAXABLE",
    )
    t = t.join(pf, on="portfolio_id", how="left", maintain_order="left")

    # duplicate ids: a sort of 64-bit hashes finds candidates cheaply; strings decide
    h = t.select(pl.col("trade_id").hash().sort()).to_series()
    if t.height and (h == h.shift(1)).any():
        dup = pl.col("trade_id").is_duplicated()
    else:
        dup = pl.lit(False)

    def bad(cond: pl.Expr) -> pl.Expr:  # a null comparison counts as bad
        return cond.fill_null(True)

    # the first failing rule, as a small integer: the words are formatted afterwards for the
    # (few) bad rows only, since ``pl.format`` in a when/then chain runs over every row
    q, p, f = pl.col("quantity"), pl.col("price"), pl.col("fees").fill_null(0.0)
    rules = [
        (pl.col("trade_id").is_null(), pl.lit("trade_id is null")),
        (dup, pl.format("duplicate trade_id {}", "trade_id")),
        (pl.col("_known").is_null(), pl.format("unknown portfolio_id {}", "portfolio_id")),
        (
            bad(~pl.col("_method").is_in(LOT_METHODS) | ~pl.col("_tax").is_in(TAX_STATUSES)),
            pl.format("portfolio {} has an invalid tax_status or lot_method", "portfolio_id"),
        ),
        (pl.col("instrument_id").is_null(), pl.lit("instrument_id is null")),
        (bad(~pl.col("side").is_in(TRADE_SIDES)), pl.format("invalid side {}", "side")),
        (pl.col("trade_ts").is_null(), pl.lit("trade_ts is null")),
        (bad(~((q > 0) & q.is_finite())), pl.lit("quantity must be positive and finite")),
        (bad(~((p >= 0) & p.is_finite())), pl.lit("price must be non-negative and finite")),
        (bad(~((f >= 0) & f.is_finite())), pl.lit("fees must be non-negative and finite")),
    ]
    code = pl.when(rules[0][0]).then(pl.lit(1, pl.Int8))
    for i, (cond, _) in enumerate(rules[1:], start=2):
        code = code.when(cond).then(pl.lit(i, pl.Int8))
    t = t.with_columns(_code=code.otherwise(pl.lit(0, pl.Int8)))
    if t.get_column("_code").sum() == 0:
        return t, pl.DataFrame(schema={"_r": pl.UInt32, "reason": pl.String})
    bad_rows = t.filter(pl.col("_code") > 0)
    words = pl.when(pl.col("_code") == 1).then(rules[0][1])
    for i, (_, what) in enumerate(rules[1:], start=2):
        words = words.when(pl.col("_code") == i).then(what)
    reasons = bad_rows.select(pl.col("_r"), reason=words)
    return t.filter(pl.col("_code") == 0), reasons


def _name_codes(s: pl.Series) -> tuple[np.ndarray, int]:
    """Integer codes of a (null-free) String column in name order, and how many names.

    An Enum of the sorted distinct names maps each name to its rank without a string sort or
    join over every row."""
    names = s.unique().sort()
    return s.cast(pl.Enum(names)).to_physical().to_numpy().astype(np.int64), names.len()


def _events(t: pl.DataFrame) -> pl.DataFrame:
    """Valid trades in event order: numbers only (strings stay in the input, found by ``_r``).

    Columns: ``_r`` (input row), book key ``bk``, position ``seq``, trade_ts, date, quantity,
    price, fees, is_open, is_long, method, wash, ``round``, ``avail_round``, ``last_round``,
    ``c_named``. Books are numbered in (portfolio_id, instrument_id, LONG before SHORT) order:
    ``bk = pair index * 2 + is_short``. A close's ``round`` is the number of earlier closes in
    its book; an open's ``avail_round`` is the number of closes before it, i.e. the first round
    in which it can be consumed. ``c_named`` (closes) is the ``seq`` of the opening trade named
    by ``lot_id`` (null when none is named, -1 when it is not an opening trade of the book).
    """
    n = t.height
    side = t.get_column("side")
    is_long = ((side == "BUY") | (side == "SELL")).to_numpy()
    is_open = ((side == "BUY") | (side == "SELL_SHORT")).to_numpy()
    pc, _ = _name_codes(t.get_column("portfolio_id"))
    ic, n_i = _name_codes(t.get_column("instrument_id"))
    pair = pc * n_i + ic
    ts = t.get_column("trade_ts").to_physical().to_numpy()
    # one integer sort key (pair, side of book, time, closes after opens) when it fits in 63
    # bits, else a lexsort; exact ties (rare) are ordered by trade_id
    tk = (ts - ts.min()) * 2 + ~is_open if n else ts
    book = pair * 2 + ~is_long
    span = int(tk.max()) + 1 if n else 1
    if n and (int(book.max()) + 1) < (2**62) // span:
        key = book * span + tk
        order = pl.Series(key).arg_sort().to_numpy()
        ks = key[order]
        tied = bool((ks[1:] == ks[:-1]).any())
    else:
        order = np.lexsort((tk, book))
        bs, ks = book[order], tk[order]
        tied = bool(((bs[1:] == bs[:-1]) & (ks[1:] == ks[:-1])).any())
    if tied:
        order = (
            pl.DataFrame({"b": book, "k": tk, "id": t.get_column("trade_id")})
            .select(pl.arg_sort_by("b", "k", "id"))
            .to_series()
            .to_numpy()
        )
    o_pair, o_long, o_open = pair[order], is_long[order], is_open[order]
    new_pair = np.ones(n, bool)
    new_pair[1:] = o_pair[1:] != o_pair[:-1]
    bk = (np.cumsum(new_pair) - 1) * 2 + ~o_long
    new_book = np.ones(n, bool)
    new_book[1:] = bk[1:] != bk[:-1]
    starts = np.flatnonzero(new_book)
    lens = np.diff(np.append(starts, n))
    is_close = ~o_open
    cc = np.cumsum(is_close)
    before_book = np.repeat(cc[starts] - is_close[starts], lens)  # closes of earlier books
    n_before = cc - before_book  # closes of the book up to and including this event
    total = np.repeat(np.add.reduceat(is_close.astype(np.int64), starts) if n else [], lens)
    o = pl.Series(order)
    ots = pl.Series(ts[order]).cast(TS)
    work = t.select(
        pl.col("_r").gather(o),
        pl.col("quantity", "price").gather(o),
        pl.col("fees").gather(o).fill_null(0.0),
        method=pl.col("_mcode").gather(o),
        # valid sides only here: BUY/SELL (LONG book) is ``is_long``, no string test
        wash=pl.col("_taxable").gather(o) & pl.lit(pl.Series(o_long)),
    ).with_columns(
        bk=pl.Series(bk, dtype=pl.Int64),
        seq=pl.int_range(n, dtype=pl.Int64),
        trade_ts=ots,
        date=ots.dt.date(),
        is_open=pl.Series(o_open),
        is_long=pl.Series(o_long),
        round=pl.Series(n_before - 1, dtype=pl.Int64),  # meaningful on closes
        avail_round=pl.Series(n_before, dtype=pl.Int64),  # meaningful on opens
        last_round=pl.Series(total - 1, dtype=pl.Int64),
        c_named=pl.lit(None, pl.Int64),
    )

    # named lots: resolve the few named closes against the opening trades by trade_id
    # (string columns are tested and gathered in input order: no gather of every string)
    lot_id = t.get_column("lot_id")
    named_pos = np.flatnonzero(is_close & lot_id.is_not_null().to_numpy()[order])
    if named_pos.size:
        trade_id = t.get_column("trade_id")
        wanted = lot_id.gather(order[named_pos])
        in_wanted = trade_id.is_in(wanted.unique().implode()).to_numpy()[order]
        open_pos = np.flatnonzero(o_open & in_wanted)
        opens = pl.DataFrame(
            {"lot_id": trade_id.gather(order[open_pos]), "_nseq": open_pos,
             "_nbk": bk[open_pos]}
        )
        resolved = (
            pl.DataFrame({"lot_id": wanted, "seq": named_pos, "_bk": bk[named_pos]})
            .join(opens, on="lot_id", how="left")
            .select(
                pl.col("seq").cast(pl.Int64),
                _named=pl.when(pl.col("_nbk") == pl.col("_bk"))
                .then(pl.col("_nseq"))
                .otherwise(-1)
                .cast(pl.Int64),
            )
        )
        c_named = np.full(n, NO_LOT, np.int64)
        c_named[resolved.get_column("seq").to_numpy()] = resolved.get_column("_named").to_numpy()
        work = work.with_columns(
            c_named=pl.when(pl.Series(c_named) != NO_LOT).then(pl.Series(c_named))
        )
    return work


def _closes(work: pl.DataFrame) -> pl.DataFrame:
    """Closing trades as round-engine rows."""
    return work.filter(~pl.col("is_open")).select(
        "bk",
        c_seq="seq",
        c_ts="trade_ts",
        c_date="date",
        c_qty="quantity",
        c_price="price",
        c_fees="fees",
        c_named="c_named",
        round="round",
        c_long="is_long",
        method="method",
        wash="wash",
    )


def _open_lots(work: pl.DataFrame) -> pl.DataFrame:
    """One lot per opening trade, with the first round whose close may consume it."""
    opens = work.filter(pl.col("is_open"))
    qp = pl.col("quantity") * pl.col("price")
    lots = opens.select(
        lk="seq",
        bk="bk",
        oseq="seq",
        split=pl.lit(0, pl.Int64),
        is_long="is_long",
        open_ts="trade_ts",
        open_price="price",
        orig="quantity",
        rem="quantity",
        cost=pl.when(pl.col("is_long"))
        .then(qp + pl.col("fees"))
        .otherwise(qp - pl.col("fees")),
        wadj=pl.lit(0.0),
        hstart="date",
        open_date="date",
        avail_round="avail_round",
        last_round="last_round",
        method="method",
        wash="wash",
        used=pl.lit(False),
        nsplit=pl.lit(0, pl.Int64),
        closed_ts=pl.lit(None, TS),
    )
    return lots.select(LOT_STATE)


# --- the round engine -------------------------------------------------------------------------

def _long_term(real: pl.DataFrame) -> pl.Series:
    """``c_date > hstart.offset_by("1y")`` per realised row.

    Holding starts span a few thousand days, so the calendar offset is computed once per day
    of that range (Polars ``offset_by``: Feb 29 + 1y = Feb 28) and looked up by day number,
    rather than once per row."""
    hs = real.get_column("hstart").to_physical().to_numpy()
    if hs.size == 0:
        return pl.Series("_long", [], dtype=pl.Boolean)
    lo, hi = int(hs.min()), int(hs.max())
    table = (
        pl.int_range(lo, hi + 1, dtype=pl.Int32, eager=True)
        .cast(pl.Date)
        .dt.offset_by("1y")
        .to_physical()
        .to_numpy()
    )
    cd = real.get_column("c_date").to_physical().to_numpy()
    return pl.Series("_long", cd > table[hs - lo])


def _assemble(
    orig: pl.DataFrame,
    reasons: pl.DataFrame,
    work: pl.DataFrame,
    ledger_rej: pl.DataFrame,
    lots_parts: list[pl.DataFrame],
    real_parts: list[pl.DataFrame],
) -> Ledger:
    """Contract-typed, deterministically ordered output frames.

    Strings are gathered once per output column from the input (``orig``, one chunk) by input
    row: event position ``seq`` -> ``work._r`` -> input row."""
    row_of = work.get_column("_r").to_numpy()
    trade_id = orig.get_column("trade_id").cast(pl.String)
    pid = orig.get_column("portfolio_id").cast(pl.String)
    iid = orig.get_column("instrument_id").cast(pl.String)
    strategy = (
        orig.get_column("strategy_id").cast(pl.String)
        if "strategy_id" in orig.columns
        else pl.Series([None] * orig.height, dtype=pl.String)
    )

    def rows(seq: pl.Series) -> np.ndarray:
        return row_of[seq.to_numpy()]

    def lot_id(base: pl.Series, split: pl.Series) -> pl.Series:
        if not split.len() or split.max() == 0:  # no wash-sale pieces: skip the formatting
            return base
        return (
            pl.DataFrame({"b": base, "s": split})
            .select(
                pl.when(pl.col("s") > 0)
                .then(pl.col("b") + "~W" + pl.col("s").cast(pl.String))
                .otherwise(pl.col("b"))
            )
            .to_series()
        )

    side = pl.when(pl.col("is_long")).then(pl.lit("LONG")).otherwise(pl.lit("SHORT"))

    lots = pl.concat([p.select(LOT_STATE) for p in lots_parts])
    split = lots.get_column("split")
    # the engine returns lots in (book, event order, piece) order already; sort only if not
    key = (lots.get_column("oseq").to_numpy() << 20) + split.to_numpy()
    bk = lots.get_column("bk").to_numpy()
    if key.size > 1 and not ((key[1:] > key[:-1]).all() and (bk[1:] >= bk[:-1]).all()):
        lots = lots.sort("bk", "oseq", "split")
        split = lots.get_column("split")
    r_open = rows(lots.get_column("oseq"))
    open_id = trade_id.gather(r_open)
    lots_lot_id = lot_id(open_id, split)
    lk = lots.get_column("lk").to_numpy()
    lots = lots.select(
        portfolio_id=pid.gather(r_open),
        instrument_id=iid.gather(r_open),
        lot_id=lots_lot_id,
        position_type=side,
        strategy_id=strategy.gather(r_open),
        open_trade_id=open_id,
        open_ts="open_ts",
        open_price="open_price",
        original_quantity="orig",
        quantity="rem",
        cost_basis="cost",
        wash_sale_adjustment="wadj",
        tax_basis=pl.col("cost") + pl.col("wadj"),
        holding_start="hstart",
        status=pl.when(pl.col("rem") > 0)
        .then(pl.lit("OPEN"))
        .otherwise(pl.lit("CLOSED")),
        closed_ts="closed_ts",
    ).select([pl.col(c).cast(d) for c, d in LOTS_SCHEMA.items()])

    # event position orders books (bk ascends with seq), so (c_seq, alloc_idx) is the order;
    # the engine emits the rows in that order (a stable sort by c_seq restores it otherwise).
    # A realised row's lot_id is its lot's: gather the lots' strings by the lot key (``lk``,
    # unique within one engine run) instead of formatting them again
    by_lk = len(lots_parts) == 1 and all("lk" in p.columns for p in real_parts)
    real = pl.concat([p.select(*REAL_STATE, *(["lk"] if by_lk else [])) for p in real_parts])
    cs = real.get_column("c_seq").to_numpy()
    if cs.size > 1 and not (cs[1:] >= cs[:-1]).all():  # the engine emits them in this order
        real = real[pl.Series(np.argsort(cs, kind="stable"))]
    r_close = rows(real.get_column("c_seq"))
    if by_lk and real.height:
        pos = np.zeros(int(lk.max()) + 1 if lk.size else 1, np.int64)
        pos[lk] = np.arange(lk.size)
        real_lot_id = lots_lot_id.gather(pos[real.get_column("lk").to_numpy()])
    else:
        real_lot_id = lot_id(
            trade_id.gather(rows(real.get_column("oseq"))), real.get_column("split")
        )
    real = real.with_columns(_long=_long_term(real))
    real = real.select(
        portfolio_id=pid.gather(r_close),
        instrument_id=iid.gather(r_close),
        trade_id=trade_id.gather(r_close),
        lot_id=real_lot_id,
        position_type=side,
        close_ts="c_ts",
        quantity="take",
        proceeds="proceeds",
        cost_basis="basis",
        realized_pnl="realized",
        wash_sale_adjustment="wadj_rel",
        disallowed_loss="disallowed",
        taxable_pnl=pl.col("realized") - pl.col("wadj_rel") + pl.col("disallowed"),
        holding_start="hstart",
        holding_days=(pl.col("c_date") - pl.col("hstart")).dt.total_days(),
        term=pl.when("_long").then(pl.lit("LONG")).otherwise(pl.lit("SHORT")),
    ).select([pl.col(c).cast(d) for c, d in REALIZED_PNL_SCHEMA.items()])

    # ledger rejections get their words here, from the few rejected rows only
    book = pl.when(pl.col("is_long")).then(pl.lit("LONG")).otherwise(pl.lit("SHORT"))
    rej_seq = ledger_rej.get_column("c_seq").cast(pl.Int64)
    rej_r = pl.Series("_r", rows(rej_seq), dtype=pl.UInt32)
    ledger_reasons = pl.DataFrame(
        {
            "_r": rej_r,
            "side": orig.get_column("side").cast(pl.String).gather(rej_r),
            "quantity": orig.get_column("quantity").cast(pl.Float64).gather(rej_r),
            "lot_id": orig.get_column("lot_id").cast(pl.String).gather(rej_r)
            if "lot_id" in orig.columns
            else pl.Series([None] * rej_r.len(), dtype=pl.String),
            "is_long": work.get_column("is_long").gather(rej_seq),
            "_code": ledger_rej.get_column("_code"),
            "_avail": ledger_rej.get_column("_avail"),
        }
    ).select(
        "_r",
        reason=pl.when(pl.col("_code") == 1)
        .then(
            pl.format(
                "lot_id {} is not an open {} lot of this portfolio and instrument at "
                "the trade time",
                "lot_id",
                book,
            )
        )
        .otherwise(
            pl.format(
                "{} of {} exceeds open {} quantity {}",
                "side",
                "quantity",
                book,
                pl.col("_avail").round(9),
            )
        ),
    )
    # accepted: the input rows in event order (a plain gather of the one-chunk input)
    acc_r = row_of
    if ledger_rej.height:
        acc_r = np.delete(row_of, rej_seq.to_numpy())
    accepted = orig.drop("_r")[pl.Series(acc_r)]

    reasons = pl.concat([reasons.with_columns(pl.col("_r").cast(pl.UInt32)), ledger_reasons])
    rejected = (
        orig[reasons.get_column("_r")]
        .with_columns(reason=reasons.get_column("reason"))
        .sort(
            "portfolio_id",
            "instrument_id",
            "trade_ts",
            "trade_id",
            "_r",
            nulls_last=True,
        )
        .drop("_r")
    )
    return Ledger(
        lots=lots, realized_pnl=real, accepted_trades=accepted, rejected_trades=rejected
    )
