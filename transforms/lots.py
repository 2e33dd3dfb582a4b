"""The lot ledger: tax lots, realised P&L and wash sales from a portfolio's trades.

``build_ledger(trades, portfolios)`` is a pure function over Polars frames (no Dagster, no file
system). It replays every book (portfolio, instrument, LONG or SHORT) in event order, opens a lot
per opening trade, lets each closing trade consume lots by the portfolio's lot method, rejects
trades that cannot be applied, and applies the wash-sale rule (``transforms.wash_sales``).

How it stays vectorised
-----------------------
A closing trade's result depends on every earlier close of its book, so the books are replayed
in *rounds*: round ``k`` processes the ``k``-th closing trade of every book at once with frame
operations (join the close to the book's available lots, sort by the lot method's priority,
allocate with cumulative sums ``take = clip(close_qty - qty_before, 0, remaining)``, update the
lots). The number of rounds is the largest number of closes in one book, not the number of
trades. Only lots that can matter in a round are kept in the working set: a lot enters when the
first close that could consume it (or, for wash-sale eligible lots, the first close within 30
days of it) comes up, and leaves when it is fully closed or its book has no closes left.

FIFO books with no named ``lot_id``, no oversell and no possible wash sale skip the rounds:
FIFO allocation is then the overlap of the cumulative open-quantity and close-quantity
intervals of the book, one sort and a backward fill for all such books together. Both paths
share the P&L formulas; the test suite checks they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from transforms.contract import (
    LANDING_SCHEMAS,
    LOT_METHODS,
    LOTS_SCHEMA,
    OPENING_SIDES,
    REALIZED_PNL_SCHEMA,
    TAX_STATUSES,
    TRADE_SIDES,
    TS,
)
from transforms.wash_sales import (
    EPS,
    WASH_WINDOW_DAYS,
    apply_wash_sales,
    loss_rows_expr,
)

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
# lot state: one row per lot (split pieces included)
_LOT_STATE = [
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
    "entry_round",  # first round it must be in the working set (earlier for wash-sale lots)
    "last_round",  # the book's last round
    "method",  # 0 FIFO, 1 LIFO, 2 HIFO
    "wash",  # TAXABLE and LONG: subject to wash sales
    "used",  # already absorbed a disallowed loss (a share absorbs at most one)
    "nsplit",  # pieces split off so far
    "closed_ts",
]

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

_REAL_STATE = [
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
    return _build_ledger(trades, portfolios, fast_fifo=True)


def _build_ledger(
    trades: pl.DataFrame, portfolios: pl.DataFrame, *, fast_fifo: bool
) -> Ledger:
    """:func:`build_ledger`, with the FIFO closed form switchable (the tests compare both)."""
    orig = trades.with_row_index("_r")
    checked = _validate(orig, portfolios)
    work = _events(checked.filter(pl.col("reason").is_null()))
    lots0 = _open_lots(work)
    closes0 = _closes(work)

    slow_bk = _slow_books(work) if fast_fifo else work.select("bk").unique()
    lots_parts: list[pl.DataFrame] = []
    real_parts: list[pl.DataFrame] = []
    fast_lots = lots0.join(slow_bk, on="bk", how="anti")
    if fast_lots.height:
        f_lots, f_real, wash_bk = _fifo_closed_form(
            fast_lots, closes0.join(slow_bk, on="bk", how="anti")
        )
        if wash_bk.height:
            # a possible wash sale: those books need the round engine after all
            slow_bk = pl.concat([slow_bk, wash_bk]).unique()
            f_lots = f_lots.join(wash_bk, on="bk", how="anti")
            f_real = f_real.join(wash_bk, on="bk", how="anti")
        lots_parts.append(f_lots)
        real_parts.append(f_real)

    s_lots, s_real, s_rej = _rounds(
        lots0.join(slow_bk, on="bk", how="semi"),
        closes0.join(slow_bk, on="bk", how="semi"),
    )
    lots_parts.append(s_lots)
    real_parts.append(s_real)
    return _assemble(orig, checked, work, s_rej, lots_parts, real_parts)


# --- preparation ------------------------------------------------------------------------------


def _validate(orig: pl.DataFrame, portfolios: pl.DataFrame) -> pl.DataFrame:
    """Typed working columns of every input row, with a ``reason`` when it can never apply."""
    t = orig
    for col in ("fees", "lot_id", "strategy_id"):
        if col not in t.columns:
            t = t.with_columns(pl.lit(None, LANDING_SCHEMAS["trades"][col]).alias(col))
    t = t.select(
        "_r",
        *[
            pl.col(c).cast(d)
            for c, d in LANDING_SCHEMAS["trades"].items()
            if c != "settle_date"
        ],
    )
    pf = portfolios.select(
        "portfolio_id",
        pl.col("tax_status").alias("_tax"),
        pl.col("lot_method").alias("_method"),
        pl.lit(True).alias("_known"),
    ).unique("portfolio_id", keep="first", maintain_order=True)
    t = t.join(pf, on="portfolio_id", how="left")

    # duplicate ids: a sort of 64-bit hashes finds candidates cheaply; strings decide
    h = t.select(pl.col("trade_id").hash().sort()).to_series()
    if t.height and (h == h.shift(1)).any():
        dup = pl.col("trade_id").is_duplicated()
    else:
        dup = pl.lit(False)

    def bad(cond: pl.Expr) -> pl.Expr:  # a null comparison counts as bad
        return cond.fill_null(True)

    q, p, f = pl.col("quantity"), pl.col("price"), pl.col("fees").fill_null(0.0)
    reason = (
        pl.when(pl.col("trade_id").is_null())
        .then(pl.lit("trade_id is null"))
        .when(dup)
        .then(pl.format("duplicate trade_id {}", "trade_id"))
        .when(pl.col("_known").is_null())
        .then(pl.format("unknown portfolio_id {}", "portfolio_id"))
        .when(
            bad(
                ~pl.col("_method").is_in(LOT_METHODS)
                | ~pl.col("_tax").is_in(TAX_STATUSES)
            )
        )
        .then(
            pl.format(
                "portfolio {} has an invalid tax_status or lot_method", "portfolio_id"
            )
        )
        .when(pl.col("instrument_id").is_null())
        .then(pl.lit("instrument_id is null"))
        .when(bad(~pl.col("side").is_in(TRADE_SIDES)))
        .then(pl.format("invalid side {}", "side"))
        .when(pl.col("trade_ts").is_null())
        .then(pl.lit("trade_ts is null"))
        .when(bad(~((q > 0) & q.is_finite())))
        .then(pl.lit("quantity must be positive and finite"))
        .when(bad(~((p >= 0) & p.is_finite())))
        .then(pl.lit("price must be non-negative and finite"))
        .when(bad(~((f >= 0) & f.is_finite())))
        .then(pl.lit("fees must be non-negative and finite"))
    )
    return t.with_columns(reason=reason)


def _events(t: pl.DataFrame) -> pl.DataFrame:
    """Valid trades in event order, with book key ``bk``, position ``seq`` and round numbers.

    Books are numbered in (portfolio_id, instrument_id, LONG before SHORT) order. A close's
    ``round`` is the number of earlier closes in its book; an open's ``avail_round`` is the
    number of closes before it, i.e. the first round in which it can be consumed.
    """
    t = t.with_columns(
        is_open=pl.col("side").is_in(OPENING_SIDES),
        is_long=pl.col("side").is_in(["BUY", "SELL"]),
        fees=pl.col("fees").fill_null(0.0),
        method=pl.col("_method").replace_strict(_METHOD_CODE, return_dtype=pl.Int8),
        wash=(pl.col("_tax") == "TAXABLE") & pl.col("side").is_in(["BUY", "SELL"]),
        _kh=pl.struct("portfolio_id", "instrument_id").hash(),
    )
    # number the (portfolio, instrument) pairs in name order through a 64-bit hash: joining
    # on one integer is much cheaper than on two strings; a collision is detected and avoided
    keys = (
        t.group_by("_kh")
        .agg(
            pl.first("portfolio_id").alias("_p"), pl.first("instrument_id").alias("_i")
        )
        .sort("_p", "_i")
        .with_row_index("_ki")
    )
    t = t.join(keys, on="_kh", how="left")
    if not t.select(
        (
            (pl.col("_p") == pl.col("portfolio_id"))
            & (pl.col("_i") == pl.col("instrument_id"))
        ).all()
    ).item():
        keys = (
            t.select("portfolio_id", "instrument_id")
            .unique()
            .sort("portfolio_id", "instrument_id")
            .with_row_index("_ki2")
        )
        t = t.join(keys, on=["portfolio_id", "instrument_id"], how="left").with_columns(
            _ki=pl.col("_ki2")
        )
    t = t.with_columns(
        bk=pl.col("_ki").cast(pl.Int64) * 2 + (~pl.col("is_long")).cast(pl.Int64),
        _rank=(~pl.col("is_open")).cast(pl.Int8),
    ).sort("bk", "trade_ts", "_rank")
    tie = (
        (pl.col("bk") == pl.col("bk").shift(1))
        & (pl.col("trade_ts") == pl.col("trade_ts").shift(1))
        & (pl.col("_rank") == pl.col("_rank").shift(1))
    )
    if t.height and t.select(tie.any()).item():
        # ties on (book, time, side rank) are rare: only then pay for the string sort key
        t = t.sort("bk", "trade_ts", "_rank", "trade_id")

    is_close = ~pl.col("is_open")
    n_before = is_close.cast(pl.Int64).cum_sum().over("bk")
    return t.with_columns(
        seq=pl.int_range(pl.len(), dtype=pl.Int64),
        date=pl.col("trade_ts").dt.date(),
        round=n_before - 1,  # meaningful on closes
        avail_round=n_before,  # meaningful on opens
        last_round=is_close.cast(pl.Int64).sum().over("bk") - 1,
    ).drop(
        "_kh",
        "_p",
        "_i",
        "_ki",
        "_rank",
        "_tax",
        "_method",
        "_known",
        "reason",
        strict=False,
    )


def _closes(work: pl.DataFrame) -> pl.DataFrame:
    """Closing trades as round-engine rows; ``c_named`` is the named lot's opening ``seq``
    (null when no lot is named, -1 when the named lot is not an opening trade of the book)."""
    closes = work.filter(~pl.col("is_open"))
    named = closes.filter(pl.col("lot_id").is_not_null())
    c_named = pl.lit(None, pl.Int64)
    if named.height:
        opens = work.filter(pl.col("is_open")).select(
            pl.col("trade_id").alias("lot_id"),
            pl.col("seq").alias("_nseq"),
            pl.col("bk").alias("_nbk"),
        )
        resolved = (
            named.select("seq", "bk", "lot_id")
            .join(opens, on="lot_id", how="left")
            .select(
                "seq",
                _named=pl.when(pl.col("_nbk") == pl.col("bk"))
                .then(pl.col("_nseq"))
                .otherwise(-1),
            )
        )
        closes = closes.join(resolved, on="seq", how="left")
        c_named = pl.col("_named")
    return closes.select(
        "bk",
        c_seq="seq",
        c_ts="trade_ts",
        c_date="date",
        c_qty="quantity",
        c_price="price",
        c_fees="fees",
        c_named=c_named,
        round="round",
        c_long="is_long",
        method="method",
        wash="wash",
    )


def _open_lots(work: pl.DataFrame) -> pl.DataFrame:
    """One lot per opening trade, with the round it enters the round engine's working set.

    A lot enters at its ``avail_round``; a wash-sale eligible lot enters earlier, at the first
    close of its book dated at most 30 days before its open date, because that close may use
    it as a replacement.
    """
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
        entry_round="avail_round",
        last_round="last_round",
        method="method",
        wash="wash",
        used=pl.lit(False),
        nsplit=pl.lit(0, pl.Int64),
        closed_ts=pl.lit(None, TS),
    )
    wash_lots = lots.filter(pl.col("wash"))
    if wash_lots.height:
        # the last close dated before open_date - 30 days; the lot enters right after it
        close_days = (
            work.filter(~pl.col("is_open") & pl.col("wash"))
            .group_by("bk", "date")
            .agg(pl.col("round").max())
            .sort("date")
        )
        entry = (
            wash_lots.select(
                "lk",
                "bk",
                thr=pl.col("open_date") - pl.duration(days=WASH_WINDOW_DAYS + 1),
            )
            .sort("thr")
            .join_asof(
                close_days,
                left_on="thr",
                right_on="date",
                by="bk",
                strategy="backward",
                check_sortedness=False,
            )
            .select("lk", _wash_entry=(pl.col("round") + 1).fill_null(0))
        )
        lots = lots.join(entry, on="lk", how="left").with_columns(
            entry_round=pl.min_horizontal(
                "avail_round", pl.col("_wash_entry").fill_null(pl.col("avail_round"))
            )
        )
    return lots.select(_LOT_STATE)


def _slow_books(work: pl.DataFrame) -> pl.DataFrame:
    """Books that need the round engine: not FIFO, a named lot_id on a close, or an oversell.

    (Books with a possible wash sale are found after the closed form computed the losses.)
    """
    q = pl.col("quantity")
    is_close = ~pl.col("is_open")
    cum_open = (q * pl.col("is_open")).cum_sum().over("bk")
    cum_close = (q * is_close).cum_sum().over("bk")
    # the round engine's test: close qty > (opened before - closed before) * (1 + EPS)
    oversell = is_close & (q > (cum_open - cum_close + q) * (1 + EPS))
    slow = (
        (pl.col("method") != 0) | (is_close & pl.col("lot_id").is_not_null()) | oversell
    )
    return work.filter(slow).select("bk").unique()


# --- shared P&L arithmetic --------------------------------------------------------------------


def _pnl(frame: pl.DataFrame) -> pl.DataFrame:
    """Add proceeds / basis / P&L columns to allocation rows.

    Needs ``take`` (quantity matched), ``cost_rel`` and ``wadj_rel`` (the lot's basis and
    adjustment released pro-rata), the lot's ``is_long`` and the close's ``c_qty``,
    ``c_price``, ``c_fees``. ``tax_res`` is the taxable result before any wash sale.
    """
    fee_alloc = pl.col("c_fees") * pl.col("take") / pl.col("c_qty")
    at_price = pl.col("take") * pl.col("c_price")
    long = pl.col("is_long")
    return frame.with_columns(
        proceeds=pl.when(long).then(at_price - fee_alloc).otherwise(pl.col("cost_rel")),
        basis=pl.when(long).then(pl.col("cost_rel")).otherwise(at_price + fee_alloc),
    ).with_columns(
        realized=pl.col("proceeds") - pl.col("basis"),
        tax_res=pl.col("proceeds") - pl.col("basis") - pl.col("wadj_rel"),
    )


# --- FIFO closed form -------------------------------------------------------------------------


def _fifo_closed_form(
    lots: pl.DataFrame, closes: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """FIFO allocation of books without oversell or named lots, by interval overlap.

    Lot j of a book covers (O_{j-1}, O_j] of the book's cumulative opened quantity, close i
    covers (C_{i-1}, C_i] of its cumulative closed quantity, and FIFO gives close i exactly the
    overlap of its interval with each lot's (no oversell guarantees those lots were opened
    before the close). Sorting all interval ends of a book together, the gap before each end
    belongs to the next lot end and the next close end: a backward fill.

    Returns (lot state, realised rows, books with a possible wash sale).
    """
    lots = lots.sort("bk", "oseq")
    closes = closes.sort("bk", "c_seq")
    ends = pl.concat(
        [
            lots.select(
                "bk",
                pos=pl.col("rem").cum_sum().over("bk"),
                lk="lk",
                c_seq=pl.lit(None, pl.Int64),
            ),
            closes.select(
                "bk",
                pos=pl.col("c_qty").cum_sum().over("bk"),
                lk=pl.lit(None, pl.Int64),
                c_seq="c_seq",
            ),
        ]
    ).sort("bk", "pos")
    pieces = (
        ends.with_columns(
            take=pl.col("pos") - pl.col("pos").shift(1).over("bk").fill_null(0.0),
            lk=pl.col("lk").backward_fill().over("bk"),
            c_seq=pl.col("c_seq").backward_fill().over("bk"),
        )
        # a gap of float noise between two ends that should coincide is not a match
        .filter(
            pl.col("lk").is_not_null()
            & pl.col("c_seq").is_not_null()
            & (pl.col("take") > EPS * pl.col("pos"))
        )
        .select("lk", "c_seq", "take", alloc_idx=pl.int_range(pl.len()).over("c_seq"))
    )
    real = (
        pieces.join(lots.drop("bk"), on="lk", how="inner")
        .join(closes.drop("method", "wash"), on="c_seq", how="inner")
        .with_columns(
            cost_rel=pl.col("cost") * pl.col("take") / pl.col("orig"),
            wadj_rel=pl.lit(0.0),
            disallowed=pl.lit(0.0),
        )
    )
    real = _pnl(real)
    wash_bk = _possible_wash_books(real.filter(loss_rows_expr()), lots)

    taken = real.group_by("lk").agg(
        pl.col("take").sum().alias("_taken"), pl.col("c_ts").max()
    )
    rem = pl.col("orig") - pl.col("_taken").fill_null(0.0)
    done = rem <= EPS * pl.col("orig")
    lots = (
        lots.join(taken, on="lk", how="left")
        .with_columns(
            rem=pl.when(done).then(0.0).otherwise(rem),
            cost=pl.when(done)
            .then(0.0)
            .otherwise(pl.col("cost") * rem / pl.col("orig")),
            closed_ts=pl.when(done).then(pl.col("c_ts")).otherwise(pl.col("closed_ts")),
        )
        .select(_LOT_STATE)
    )
    return lots, real.select(_REAL_STATE), wash_bk


def _possible_wash_books(loss: pl.DataFrame, lots: pl.DataFrame) -> pl.DataFrame:
    """Books with a loss row and any lot opened within 30 days of that sale (conservative)."""
    if loss.height == 0:
        return pl.DataFrame(schema={"bk": pl.Int64})
    opens = (
        lots.join(loss.select("bk").unique(), on="bk", how="semi")
        .group_by("bk", "open_date")
        .agg(n=pl.len())
        .sort("bk", "open_date")
        .with_columns(n=pl.col("n").cum_sum().over("bk"))
        .sort("open_date")
    )
    sales = loss.select(
        "bk",
        "c_seq",
        hi=pl.col("c_date") + pl.duration(days=WASH_WINDOW_DAYS),
        lo=pl.col("c_date") - pl.duration(days=WASH_WINDOW_DAYS + 1),
    ).unique()

    def count_upto(col: str) -> pl.DataFrame:
        return (
            sales.sort(col)
            .join_asof(
                opens,
                left_on=col,
                right_on="open_date",
                by="bk",
                strategy="backward",
                check_sortedness=False,
            )
            .select("bk", "c_seq", pl.col("n").fill_null(0).alias(f"n_{col}"))
        )

    counts = count_upto("hi").join(count_upto("lo"), on=["bk", "c_seq"], how="inner")
    return counts.filter(pl.col("n_hi") > pl.col("n_lo")).select("bk").unique()


# --- the round engine -------------------------------------------------------------------------

_REJ_SCHEMA = {"c_seq": pl.Int64, "_code": pl.Int8, "_avail": pl.Float64}


def _rounds(
    lots: pl.DataFrame, closes: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Replay books round by round (round k = the k-th close of every book).

    Returns (lot state, realised rows, rejections ``c_seq, _code, _avail``).
    """
    if closes.height == 0:
        return lots, _empty_real(), pl.DataFrame(schema=_REJ_SCHEMA)

    # lots that no close can touch skip the working set
    never = pl.col("entry_round") > pl.col("last_round")
    finished = [lots.filter(never)]
    entering = lots.filter(~never).partition_by("entry_round", as_dict=True)
    by_round = closes.partition_by("round", as_dict=True)
    n_rounds = int(closes["round"].max()) + 1
    next_lk = int(lots["lk"].max()) + 1 if lots.height else 0

    active = lots.clear()
    real_parts, rej_parts = [], []
    for k in range(n_rounds):
        new = entering.pop((k,), None)
        if new is not None:
            active = pl.concat([active, new])
        # lots of books with no close left are final
        retire = pl.col("last_round") < k
        finished.append(active.filter(retire))
        active = active.filter(~retire)

        active, real, rej, closed, next_lk = _one_round(
            active, by_round[(k,)], k, next_lk
        )
        real_parts.append(real)
        rej_parts.append(rej)
        finished.append(closed)
    finished.append(active)
    finished.extend(entering.values())
    return pl.concat(finished), pl.concat(real_parts), pl.concat(rej_parts)


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


def _one_round(active: pl.DataFrame, ck: pl.DataFrame, k: int, next_lk: int):
    """Apply the closes ``ck`` (at most one per book) to the working lots ``active``.

    Returns (active lots, realised rows, rejections, lots closed this round, next free lot key).
    """
    cand = (
        active.join(ck.drop("method", "wash", "c_long"), on="bk", how="inner")
        .filter(pl.col("avail_round") <= k)  # opened before this close
        .with_columns(
            _named=(pl.col("oseq") == pl.col("c_named")).fill_null(False),
            # priority keys, ascending: the named lot first, then the lot method
            _k1=pl.when(pl.col("method") == 2)
            .then(-(pl.col("cost") + pl.col("wadj")) / pl.col("rem"))
            .otherwise(0.0),
            _k2=pl.when(pl.col("method") == 1)
            .then(-pl.col("oseq"))
            .otherwise(pl.col("oseq")),
        )
        .sort(
            ["bk", "_named", "_k1", "_k2", "split"],
            descending=[False, True, False, False, False],
        )
    )
    avail = cand.group_by("bk").agg(
        _avail=pl.col("rem").sum(), _named_ok=pl.col("_named").any()
    )
    judged = (
        ck.select("bk", "c_seq", "c_qty", "c_named")
        .join(avail, on="bk", how="left")
        .with_columns(
            pl.col("_avail").fill_null(0.0), pl.col("_named_ok").fill_null(False)
        )
        .with_columns(
            _code=pl.when(pl.col("c_named").is_not_null() & ~pl.col("_named_ok"))
            .then(pl.lit(1, pl.Int8))
            .when(pl.col("c_qty") > pl.col("_avail") * (1 + EPS))
            .then(pl.lit(2, pl.Int8))
        )
    )
    rej = judged.filter(pl.col("_code").is_not_null()).select(list(_REJ_SCHEMA))
    if rej.height:
        cand = cand.join(rej.select("c_seq"), on="c_seq", how="anti")

    take = (pl.col("c_qty") - pl.col("_before")).clip(0.0, pl.col("rem"))
    alloc = (
        cand.with_columns(_before=pl.col("rem").cum_sum().over("bk") - pl.col("rem"))
        .with_columns(take=take)
        # within tolerance of the whole lot: close it (no 1e-15 leftovers)
        .with_columns(
            take=pl.when(pl.col("rem") - pl.col("take") <= EPS * pl.col("orig"))
            .then(pl.col("rem"))
            .otherwise(pl.col("take"))
        )
        .filter(pl.col("take") > EPS * pl.col("c_qty"))
        .with_columns(
            frac=pl.col("take") / pl.col("rem"),
            alloc_idx=pl.int_range(pl.len(), dtype=pl.Int64).over("bk"),
        )
        .with_columns(
            cost_rel=pl.col("cost") * pl.col("frac"),
            wadj_rel=pl.col("wadj") * pl.col("frac"),
        )
    )
    alloc = _pnl(alloc)

    touched = pl.col("_take").is_not_null()
    full = touched & (pl.col("_take") >= pl.col("rem"))
    active = (
        active.join(
            alloc.select(
                "lk", _take="take", _dcost="cost_rel", _dwadj="wadj_rel", _cts="c_ts"
            ),
            on="lk",
            how="left",
        )
        .with_columns(
            rem=pl.when(full)
            .then(0.0)
            .when(touched)
            .then(pl.col("rem") - pl.col("_take"))
            .otherwise(pl.col("rem")),
            cost=pl.when(full)
            .then(0.0)
            .when(touched)
            .then(pl.col("cost") - pl.col("_dcost"))
            .otherwise(pl.col("cost")),
            wadj=pl.when(full)
            .then(0.0)
            .when(touched)
            .then(pl.col("wadj") - pl.col("_dwadj"))
            .otherwise(pl.col("wadj")),
            closed_ts=pl.when(full).then(pl.col("_cts")).otherwise(pl.col("closed_ts")),
        )
        .select(_LOT_STATE)
    )

    disallowed = None
    if alloc.select(loss_rows_expr().any()).item():
        active, disallowed, next_lk = apply_wash_sales(alloc, active, next_lk)
    if disallowed is not None and disallowed.height:
        alloc = alloc.join(disallowed, on="lk", how="left").with_columns(
            pl.col("disallowed").fill_null(0.0)
        )
    else:
        alloc = alloc.with_columns(disallowed=pl.lit(0.0))

    is_closed = pl.col("rem") <= 0
    return (
        active.filter(~is_closed),
        alloc.select(_REAL_STATE),
        rej,
        active.filter(is_closed),
        next_lk,
    )


# --- output -----------------------------------------------------------------------------------


def _assemble(
    orig: pl.DataFrame,
    checked: pl.DataFrame,
    work: pl.DataFrame,
    ledger_rej: pl.DataFrame,
    lots_parts: list[pl.DataFrame],
    real_parts: list[pl.DataFrame],
) -> Ledger:
    """Contract-typed, deterministically ordered output frames; strings gathered by ``seq``."""
    trade_id = work.get_column("trade_id")
    pid = work.get_column("portfolio_id")
    iid = work.get_column("instrument_id")

    def lot_id(oseq: pl.Series, split: pl.Series) -> pl.Series:
        base = trade_id.gather(oseq)
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

    lots = pl.concat([p.select(_LOT_STATE) for p in lots_parts]).sort(
        "bk", "oseq", "split"
    )
    oseq = lots.get_column("oseq")
    lots = lots.select(
        portfolio_id=pid.gather(oseq),
        instrument_id=iid.gather(oseq),
        lot_id=lot_id(oseq, lots.get_column("split")),
        position_type=side,
        strategy_id=work.get_column("strategy_id").gather(oseq),
        open_trade_id=trade_id.gather(oseq),
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

    real = pl.concat([p.select(_REAL_STATE) for p in real_parts]).sort(
        "bk", "c_seq", "alloc_idx"
    )
    c_seq = real.get_column("c_seq")
    long_term = pl.col("c_date") > pl.col("hstart").dt.offset_by("1y")
    real = real.select(
        portfolio_id=pid.gather(c_seq),
        instrument_id=iid.gather(c_seq),
        trade_id=trade_id.gather(c_seq),
        lot_id=lot_id(real.get_column("oseq"), real.get_column("split")),
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
        term=pl.when(long_term).then(pl.lit("LONG")).otherwise(pl.lit("SHORT")),
    ).select([pl.col(c).cast(d) for c, d in REALIZED_PNL_SCHEMA.items()])

    # ledger rejections get their words here, from the few rejected rows only
    book = pl.when(pl.col("is_long")).then(pl.lit("LONG")).otherwise(pl.lit("SHORT"))
    ledger_reasons = ledger_rej.join(
        work.select("seq", "_r", "side", "quantity", "lot_id", "is_long"),
        left_on="c_seq",
        right_on="seq",
        how="inner",
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
    rejected_r = set(ledger_reasons.get_column("_r").to_list())
    acc_r = work.get_column("_r")
    if rejected_r:
        acc_r = acc_r.filter(~acc_r.is_in(list(rejected_r)))
    accepted = orig[acc_r].drop("_r")  # event order

    reasons = pl.concat(
        [
            checked.filter(pl.col("reason").is_not_null()).select("_r", "reason"),
            ledger_reasons,
        ]
    )
    rejected = (
        orig.join(reasons, on="_r", how="inner")
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
