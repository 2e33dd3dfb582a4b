"""Positions as of a moment: open lots aggregated per (portfolio, instrument, side) plus cash.

Rows follow ``POSITIONS_SCHEMA``: quantities, cost bases and market values of SHORT positions are
negative, so ``NAV = sum(market_value)`` over all rows of a portfolio (cash included) and
``unrealized_pnl = market_value - cost_basis`` on every row.

For a LONG / SHORT row (from lots with status OPEN, quantity > 0 and open_ts <= as_of):

- ``quantity``      = sum of lot quantities (negative for SHORT);
- local basis       = sum of lot ``cost_basis`` (negative for SHORT);
- ``cost_basis``    = sum over lots of ``cost_basis * fx(open date of the lot)`` (base ccy, signed);
- ``average_cost``  = local basis / |quantity| (so it carries the sign of the row: negative for
  SHORT; its absolute value is the average opening price net of fees);
- ``price``         = latest close on or before the as-of date (forward fill; which closes
  count: ``transforms.prices``). An instrument with no close on or before that date is priced
  at the ``open_price`` of its latest open lot in the row, and ``price_date`` is then that
  lot's open date;
- ``fx_rate``       = base per local on ``price_date`` (see ``transforms.fx``);
- ``market_value``  = quantity * price * fx_rate; ``unrealized_pnl`` = market_value - cost_basis;
- ``last_updated``  = latest ``open_ts`` among the row's lots.

CASH rows, one per (portfolio, currency) with any ledger entry up to ``as_of``: instrument_id
``CASH:<ccy>``, quantity = total cash (settled + pending) in that currency, price 1.0,
price_date = the as-of date, fx at that date, market_value = cost_basis = quantity * fx,
average_cost 1.0, unrealized_pnl 0.0, last_updated = the latest ledger ts.

``weight`` = market_value / NAV of the portfolio; it is null (never NaN or inf) when the NAV is 0.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

from transforms.cash import cash_balances
from transforms.contract import POSITIONS_SCHEMA
from transforms.fx import Currencies, FxRates, as_of_date, as_utc, usd_table
from transforms.lots import RowCodes
from transforms.ordering import ordered_sum
from transforms.prices import Prices, day_numbers, price_table

AnyFrame = pl.DataFrame | pl.LazyFrame


def _with_weights(rows: pl.LazyFrame) -> pl.LazyFrame:
    # ``rows`` in a fixed order (the output's): the NAV adds in row order (``ordered_sum``)
    nav = ordered_sum(pl.col("market_value")).over("portfolio_id")
    return rows.with_columns(pl.when(nav != 0).then(pl.col("market_value") / nav).otherwise(None).alias("weight"))


def reweighted(positions: AnyFrame) -> pl.DataFrame:
    """``positions`` (``POSITIONS_SCHEMA`` rows, whole portfolios) in the output order with
    every ``weight`` recomputed: for rows of one portfolio built at different times (the
    books a new trade changed beside the stored rows of the others), whose NAV moved."""
    ordered = positions.lazy().sort("portfolio_id", "position_type", "instrument_id")
    return _with_weights(ordered).select([pl.col(c).cast(t) for c, t in POSITIONS_SCHEMA.items()]).collect()


def positions(
    lots: AnyFrame,
    cash_ledger: AnyFrame,
    prices: Prices,
    fx_rates: FxRates,
    instruments: AnyFrame,
    portfolios: AnyFrame,
    as_of: datetime,
    *,
    balances: pl.DataFrame | None = None,
    currencies: Currencies | None = None,
    lot_codes: RowCodes | None = None,
) -> pl.DataFrame:
    """Positions (``POSITIONS_SCHEMA``) as of ``as_of``; see the module docstring for the rules.

    ``lots`` are those built from the trades up to ``as_of`` (``LOTS_SCHEMA``). ``prices`` is a
    prices frame or the book's ``PriceTable``, ``fx_rates`` a frame or a ``UsdTable``. A naive
    ``as_of`` is taken as UTC. ``balances``, when given, is ``cash_balances(cash_ledger, as_of)``
    already computed (``build_book`` shares it with the portfolio state), and ``currencies``
    is ``Currencies(instruments, portfolios)`` (shared with the realised P&L). ``lot_codes``,
    when given, are the portfolio and instrument codes of the rows of ``lots``
    (``Ledger.lot_codes`` of the ledger that built them, a DataFrame): the id strings are then
    not looked up. Sorted by (portfolio_id, position_type, instrument_id).
    """
    moment, day = as_utc(as_of), as_of_date(as_of)
    fx = usd_table(fx_rates)  # cleaned once, used by the three conversions below
    short = pl.col("position_type") == "SHORT"
    sign = pl.when(short).then(pl.lit(-1.0)).otherwise(pl.lit(1.0))

    # Eager from here on: each step is collected once.
    is_open = (
        (pl.col("status") == "OPEN")
        & (pl.col("quantity") > 0)
        & (pl.col("open_ts") <= moment)
        & pl.col("position_type").is_in(["LONG", "SHORT"])
    )
    columns = (
        "portfolio_id", "instrument_id", "position_type", "lot_id", "status", "quantity", "cost_basis", "open_ts",
        "open_price",
    )
    derived = (pl.col("open_ts").dt.date().alias("_open_date"), sign.alias("_sign"))
    # the basis converts at the fx of each lot's open date: lots are many, currencies few, and
    # lots come grouped by portfolio and instrument, so codes are looked up per run of lots
    # (or translated from the ledger's); the codes ride along the grouping (one portfolio and
    # instrument per group)
    book = Currencies(instruments, portfolios) if currencies is None else currencies
    lots = lots.lazy().select(columns).collect()  # a lazy input reads only these columns
    keep = lots.select(is_open.fill_null(False)).to_series().to_numpy()
    open_lots = lots.filter(pl.Series(keep)).with_columns(*derived)
    if lot_codes is not None and lot_codes.portfolio.size == lots.height:
        kept = lot_codes.take(keep)
        lot_p, lot_i = book.recode(kept.portfolio, kept.portfolio_ids, kept.instrument, kept.instrument_ids)
    else:
        lot_p = book.portfolio_codes(open_lots["portfolio_id"])
        lot_i = book.instrument_codes(open_lots["instrument_id"])
    rate = book.base_per_local(fx, lot_p, lot_i, day_numbers(open_lots["_open_date"]))
    held = (
        open_lots.with_columns(pl.Series("_fx_open", rate).fill_nan(None), _p=lot_p, _i=lot_i)
        .group_by("portfolio_id", "instrument_id", "position_type")
        .agg(
            ordered_sum(pl.col("_sign") * pl.col("quantity")).alias("quantity"),
            ordered_sum(pl.col("_sign") * pl.col("cost_basis")).alias("_local_basis"),
            ordered_sum(pl.col("_sign") * pl.col("cost_basis") * pl.col("_fx_open")).alias("cost_basis"),
            pl.col("open_ts").max().alias("last_updated"),
            pl.col("open_price").sort_by("open_ts", "lot_id").last().alias("_fallback_price"),
            pl.col("_open_date").sort_by("open_ts", "lot_id").last().alias("_fallback_date"),
            pl.col("_p").first(),
            pl.col("_i").first(),
        )
    )
    held_p, held_i = held["_p"].to_numpy(), held["_i"].to_numpy()
    # the (few) rows are priced and converted in numpy: the latest close, else the fallback
    close, close_day = price_table(prices).latest(held["instrument_id"], day)
    has_close = ~np.isnan(close)
    price = np.where(has_close, close, held["_fallback_price"].cast(pl.Float64).fill_null(np.nan).to_numpy())
    price_day = np.where(has_close, close_day, day_numbers(held["_fallback_date"]))
    held = held.with_columns(
        pl.Series("price", price).fill_nan(None),
        pl.Series("price_date", price_day.astype(np.int32)).cast(pl.Date),
        book.currency_of(held_i).alias("currency"),
        pl.Series("fx_rate", book.base_per_local(fx, held_p, held_i, price_day)).fill_nan(None),
    ).with_columns(
        (pl.col("quantity") * pl.col("price") * pl.col("fx_rate")).alias("market_value"),
        (pl.col("_local_basis") / pl.col("quantity").abs()).alias("average_cost"),
    )

    cash = cash_balances(cash_ledger, moment) if balances is None else balances
    cash_rate = book.balance_rates(fx, cash, day)
    cash = cash.with_columns(pl.lit(day).alias("price_date"), pl.Series("fx_rate", cash_rate).fill_nan(None)).select(
        "portfolio_id",
        pl.concat_str(pl.lit("CASH:"), pl.col("currency")).alias("instrument_id"),
        pl.lit("CASH").alias("position_type"),
        "currency",
        pl.col("total_cash").alias("quantity"),
        pl.lit(1.0).alias("price"),
        "price_date",
        "fx_rate",
        (pl.col("total_cash") * pl.col("fx_rate")).alias("cost_basis"),
        pl.lit(1.0).alias("average_cost"),
        (pl.col("total_cash") * pl.col("fx_rate")).alias("market_value"),
        pl.col("last_ts").alias("last_updated"),
    )

    cols = [c for c in POSITIONS_SCHEMA if c not in ("unrealized_pnl", "weight")]
    rows = pl.concat([held.lazy().select(cols), cash.lazy().select(cols)], how="vertical_relaxed").with_columns(
        (pl.col("market_value") - pl.col("cost_basis")).alias("unrealized_pnl")
    )
    return (
        _with_weights(rows.sort("portfolio_id", "position_type", "instrument_id"))
        .select([pl.col(c).cast(t) for c, t in POSITIONS_SCHEMA.items()])
        .collect()
    )
