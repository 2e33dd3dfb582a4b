"""Portfolio state: one summary row per portfolio as of a moment (``PORTFOLIO_STATE_SCHEMA``).

Built from the positions as of ``as_of`` (``transforms.positions.positions``), the realised P&L
rows (``REALIZED_PNL_SCHEMA``) and the cash ledger:

- ``total_value``         = NAV = sum of all positions' market_value (cash included);
- ``cash_balance``        = market value of the CASH rows;
- ``settled_cash`` / ``pending_cash`` = the ledger's settled / pending cash as of ``as_of``
  converted at the fx of the as-of date (as the CASH rows are), each summed from its own entries;
- ``long_market_value`` / ``short_market_value`` = market value of LONG / SHORT rows;
- ``unrealized_pnl``      = sum over rows (cash rows contribute 0);
- ``realized_pnl``        = sum of ``realized_pnl`` with ``close_ts <= as_of``, each converted to
  base at the fx of its close date (forward filled, see ``transforms.fx``);
- ``positions_count``     = number of LONG / SHORT rows;
- ``weights``             = non-cash weights netted per instrument (a LONG and a SHORT row of the
  same instrument add up), sorted by weight descending then instrument_id; null weights (NAV 0)
  stay null and sort last;
- ``last_updated``        = latest ledger entry (every trade and cash flow has one) or position
  update with ``ts <= as_of``; null when there is none.

Every portfolio in ``portfolios`` has a row; one without activity has zeros, ``positions_count``
0, an empty ``weights`` list and a null ``last_updated``.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

from transforms.cash import cash_balances
from transforms.contract import BASE_CURRENCY, PORTFOLIO_STATE_SCHEMA, TS
from transforms.fx import Currencies, FxRates, as_of_date, as_utc, usd_table
from transforms.lots import RowCodes
from transforms.ordering import ordered_sum
from transforms.prices import day_numbers
from transforms.state_kernel import totals_per_code

AnyFrame = pl.DataFrame | pl.LazyFrame
WEIGHTS_DTYPE = PORTFOLIO_STATE_SCHEMA["weights"]

_ZERO_FILLED = (
    "total_value",
    "cash_balance",
    "settled_cash",
    "pending_cash",
    "long_market_value",
    "short_market_value",
    "unrealized_pnl",
    "realized_pnl",
)


def portfolio_state(
    positions: AnyFrame,
    realized_pnl: AnyFrame,
    portfolios: AnyFrame,
    as_of: datetime,
    fx_rates: FxRates,
    *,
    instruments: AnyFrame,
    cash_ledger: AnyFrame,
    balances: pl.DataFrame | None = None,
    realized: pl.DataFrame | None = None,
    currencies: Currencies | None = None,
) -> pl.DataFrame:
    """One ``PORTFOLIO_STATE_SCHEMA`` row per portfolio in ``portfolios`` as of ``as_of``.

    ``positions`` must be the positions as of the same ``as_of``; ``instruments`` give the
    currency of realised P&L; ``cash_ledger`` the settled / pending split and last update.
    ``balances``, when given, is ``cash_balances(cash_ledger, as_of)`` already computed, and
    ``realized`` is ``realized_by_portfolio(realized_pnl, portfolios, instruments, as_of,
    fx_rates)`` (``build_book`` computes it on another thread meanwhile), and ``currencies``
    is ``Currencies(instruments, portfolios)``. A naive ``as_of`` is UTC. Sorted by portfolio_id.
    """
    moment, day = as_utc(as_of), as_of_date(as_of)
    fx = usd_table(fx_rates)
    ports = (
        portfolios.lazy()
        .select("portfolio_id", "portfolio_name", "status", pl.col("base_currency").fill_null(BASE_CURRENCY))
        .collect()
    )
    pos = positions.lazy().collect()
    mv = pl.col("market_value")
    ptype = pl.col("position_type")

    totals = pos.group_by("portfolio_id").agg(
        ordered_sum(mv).alias("total_value"),
        ordered_sum(mv.filter(ptype == "CASH")).alias("cash_balance"),
        ordered_sum(mv.filter(ptype == "LONG")).alias("long_market_value"),
        ordered_sum(mv.filter(ptype == "SHORT")).alias("short_market_value"),
        ordered_sum(pl.col("unrealized_pnl")).alias("unrealized_pnl"),
        (ptype != "CASH").sum().cast(pl.Int64).alias("positions_count"),
        pl.col("last_updated").filter(pl.col("last_updated") <= moment).max().alias("_pos_updated"),
    )
    weight = pl.col("weight")
    weights = (
        pos.lazy()
        .filter(ptype != "CASH")
        .group_by("portfolio_id", "instrument_id")
        .agg(pl.when(weight.is_not_null().any()).then(ordered_sum(weight)).otherwise(None).alias("weight"))
        .sort(["portfolio_id", "weight", "instrument_id"], descending=[False, True, False], nulls_last=True)
        .group_by("portfolio_id", maintain_order=True)
        .agg(pl.struct("instrument_id", "weight").alias("weights"))
        .collect()
    )

    if realized is None:
        realized = realized_by_portfolio(realized_pnl, portfolios, instruments, moment, fx)
    if balances is None:
        balances = cash_balances(cash_ledger, moment)
    # the (few) balances convert at the as-of date through the book's currency codes, as the
    # CASH rows of the positions do
    book = Currencies(instruments, portfolios) if currencies is None else currencies
    settled = (
        balances.with_columns(pl.Series("fx_rate", book.balance_rates(fx, balances, day)).fill_nan(None))
        .group_by("portfolio_id")
        .agg(
            ordered_sum(pl.col("settled_cash") * pl.col("fx_rate")).alias("settled_cash"),
            # Summed from the pending entries, not cash - settled: no pending cash is exactly 0.
            ordered_sum(pl.col("pending_cash") * pl.col("fx_rate")).alias("pending_cash"),
            pl.col("last_ts").max().alias("_cash_updated"),
        )
    )

    state = (
        ports.lazy()
        .join(totals.lazy(), on="portfolio_id", how="left")
        .join(settled.lazy(), on="portfolio_id", how="left")
        .join(realized.lazy(), on="portfolio_id", how="left")
        .join(weights.lazy(), on="portfolio_id", how="left")
        .with_columns([pl.col(c).fill_null(0.0) for c in _ZERO_FILLED])
        .with_columns(
            pl.col("positions_count").fill_null(0),
            pl.col("weights").fill_null(pl.lit([], dtype=WEIGHTS_DTYPE)),
            pl.lit(moment).cast(PORTFOLIO_STATE_SCHEMA["as_of"]).alias("as_of"),
            pl.max_horizontal("_pos_updated", "_cash_updated", "last_close_ts").alias("last_updated"),
        )
    )
    return (
        state.select([pl.col(c).cast(t) for c, t in PORTFOLIO_STATE_SCHEMA.items()])
        .sort("portfolio_id")
        .collect()
    )


def realized_by_portfolio(
    realized_pnl: AnyFrame,
    portfolios: AnyFrame,
    instruments: AnyFrame,
    as_of: datetime,
    fx_rates: FxRates,
    *,
    codes: RowCodes | None = None,
    currencies: Currencies | None = None,
) -> pl.DataFrame:
    """``portfolio_id``, ``realized_pnl`` (base ccy) and ``last_close_ts`` (latest close) over the
    realised rows closed by ``as_of``, one row per portfolio of ``portfolios`` that has any.

    Each row converts at the fx of its close date. Rows are many and currencies few, so the
    rate is read from a ``currency x day`` array over the close dates' range, and the sums
    run over integer portfolio codes in one compiled pass, adding in row order
    (``transforms.state_kernel``). A row whose rate is
    unknown (a currency never quoted) or whose P&L is null adds nothing, as a null in a sum.

    ``codes``, when given, are the rows' portfolio and instrument codes (``Ledger.realized_codes``
    of the ledger that built ``realized_pnl``, a DataFrame); the id strings are then not read.
    ``currencies``, when given, is ``Currencies(instruments, portfolios)`` already built."""
    moment, fx = as_utc(as_of), usd_table(fx_rates)
    columns = ("portfolio_id", "instrument_id", "close_ts", "realized_pnl")
    if isinstance(realized_pnl, pl.DataFrame):
        close_ts = realized_pnl["close_ts"]
        if close_ts.null_count() == 0 and not (close_ts.max() or moment) > moment:
            closes = realized_pnl.select(columns)  # every row counts (a build up to as_of): no copy
        else:
            keep = (close_ts <= moment).fill_null(False).to_numpy()
            closes = realized_pnl.select(columns).filter(pl.Series(keep))
            codes = codes.take(keep) if codes is not None else None
    else:
        closes, codes = realized_pnl.lazy().filter(pl.col("close_ts") <= moment).select(columns).collect(), None
    book = Currencies(instruments, portfolios) if currencies is None else currencies
    ids = book.portfolios["portfolio_id"]
    if codes is None:
        p, i = book.portfolio_codes(closes["portfolio_id"]), book.instrument_codes(closes["instrument_id"])
    else:
        p, i = book.recode(codes.portfolio, codes.portfolio_ids, codes.instrument, codes.instrument_ids)
    if closes.height == 0 or not (p >= 0).any():
        return pl.DataFrame(schema={"portfolio_id": pl.String, "realized_pnl": pl.Float64, "last_close_ts": TS})
    us = closes["close_ts"].to_physical().to_numpy()
    rate = book.base_per_local(fx, p, i, day_numbers(closes["close_ts"]))
    pnl = closes["realized_pnl"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    sums, latest, seen = totals_per_code(p, pnl, rate, us, ids.len())
    return pl.DataFrame(
        {
            "portfolio_id": ids.filter(pl.Series(seen)),
            "realized_pnl": sums[seen],
            "last_close_ts": pl.Series(latest[seen]).cast(TS),
        }
    )
