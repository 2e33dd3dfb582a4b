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
from transforms.contract import BASE_CURRENCY, PORTFOLIO_STATE_SCHEMA
from transforms.fx import FxRates, as_of_date, as_utc, base_per_local_on, usd_table

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
) -> pl.DataFrame:
    """One ``PORTFOLIO_STATE_SCHEMA`` row per portfolio in ``portfolios`` as of ``as_of``.

    ``positions`` must be the positions as of the same ``as_of``; ``instruments`` give the
    currency of realised P&L; ``cash_ledger`` the settled / pending split and last update.
    A naive ``as_of`` is UTC.
    Sorted by portfolio_id.
    """
    moment, day = as_utc(as_of), as_of_date(as_of)
    fx = usd_table(fx_rates)
    base = portfolios.lazy().select("portfolio_id", pl.col("base_currency").fill_null(BASE_CURRENCY))
    pos = positions.lazy()
    mv = pl.col("market_value")
    ptype = pl.col("position_type")

    totals = pos.group_by("portfolio_id").agg(
        mv.sum().alias("total_value"),
        mv.filter(ptype == "CASH").sum().alias("cash_balance"),
        mv.filter(ptype == "LONG").sum().alias("long_market_value"),
        mv.filter(ptype == "SHORT").sum().alias("short_market_value"),
        pl.col("unrealized_pnl").sum(),
        (ptype != "CASH").sum().cast(pl.Int64).alias("positions_count"),
        pl.col("last_updated").filter(pl.col("last_updated") <= moment).max().alias("_pos_updated"),
    )
    weight = pl.col("weight")
    weights = (
        pos.filter(ptype != "CASH")
        .group_by("portfolio_id", "instrument_id")
        .agg(pl.when(weight.is_not_null().any()).then(weight.sum()).otherwise(None).alias("weight"))
        .sort(["portfolio_id", "weight", "instrument_id"], descending=[False, True, False], nulls_last=True)
        .group_by("portfolio_id", maintain_order=True)
        .agg(pl.struct("instrument_id", "weight").alias("weights"))
    )

    balances = cash_balances(cash_ledger, moment).lazy().join(base, on="portfolio_id", how="left")
    balances = balances.with_columns(
        pl.col("base_currency").fill_null(BASE_CURRENCY), pl.lit(day).alias("_day")
    )
    settled = (
        base_per_local_on(balances.collect(), fx, date_col="_day", local_col="currency", base_col="base_currency")
        .group_by("portfolio_id")
        .agg(
            (pl.col("settled_cash") * pl.col("fx_rate")).sum().alias("settled_cash"),
            # Summed from the pending entries, not cash - settled: no pending cash is exactly 0.
            (pl.col("pending_cash") * pl.col("fx_rate")).sum().alias("pending_cash"),
            pl.col("last_ts").max().alias("_cash_updated"),
        )
        .lazy()
    )

    # Realised P&L. The rows come grouped by (portfolio, instrument) from the ledger, so the
    # currencies are resolved once per run of equal keys (any order is correct, grouped is fast),
    # the fx rate per row from per-currency searches over the small fx table, and the sum runs
    # on an integer portfolio key rather than on strings.
    closes = (
        realized_pnl.lazy()
        .filter(pl.col("close_ts") <= moment)
        .select(
            "portfolio_id",
            "instrument_id",
            "close_ts",
            "realized_pnl",
            pl.struct("portfolio_id", "instrument_id").rle_id().alias("_run"),
        )
        .collect()
    )
    run = closes["_run"].to_numpy()
    starts = np.flatnonzero(np.diff(run, prepend=-1) != 0)
    runs = (
        closes.select("portfolio_id", "instrument_id")
        .gather(starts)
        .join(instruments.lazy().select("instrument_id", "currency").collect(), on="instrument_id", how="left",
              maintain_order="left")
        .join(base.collect(), on="portfolio_id", how="left", maintain_order="left")
        .with_columns(
            pl.col("base_currency").fill_null(BASE_CURRENCY),
            pl.col("portfolio_id").rank("dense").cast(pl.Int64).alias("_p"),
        )
    )
    ccys = sorted(set(runs["currency"].drop_nulls()) | set(runs["base_currency"]))
    code = {c: k for k, c in enumerate(ccys)}
    local = runs["currency"].replace_strict(code, default=-1, return_dtype=pl.Int64).to_numpy()[run]
    base_ccy = runs["base_currency"].replace_strict(code, return_dtype=pl.Int64).to_numpy()[run]
    day = closes["close_ts"].dt.date().to_physical().cast(pl.Int64).to_numpy()
    usd_local, usd_base = np.full(run.size, np.nan), np.full(run.size, np.nan)
    for c, k in code.items():
        m = local == k
        usd_local[m] = fx.lookup(c, day[m])
        m = base_ccy == k
        usd_base[m] = fx.lookup(c, day[m])
    with np.errstate(invalid="ignore"):
        rate = np.where(local == base_ccy, 1.0, usd_local / usd_base)
    realized = (
        closes.select(
            pl.Series("_p", runs["_p"].to_numpy()[run]),
            (pl.col("realized_pnl") * pl.Series(rate).fill_nan(None)).alias("realized_pnl"),
            "close_ts",
        )
        .group_by("_p")
        .agg(pl.col("realized_pnl").sum(), pl.col("close_ts").max().alias("_realized_updated"))
        .join(runs.select("_p", "portfolio_id").unique("_p"), on="_p")
        .drop("_p")
        .lazy()
    )

    state = (
        portfolios.lazy()
        .select("portfolio_id", "portfolio_name", "status", pl.col("base_currency").fill_null(BASE_CURRENCY))
        .join(totals, on="portfolio_id", how="left")
        .join(settled, on="portfolio_id", how="left")
        .join(realized, on="portfolio_id", how="left")
        .join(weights, on="portfolio_id", how="left")
        .with_columns([pl.col(c).fill_null(0.0) for c in _ZERO_FILLED])
        .with_columns(
            pl.col("positions_count").fill_null(0),
            pl.col("weights").fill_null(pl.lit([], dtype=WEIGHTS_DTYPE)),
            pl.lit(moment).cast(PORTFOLIO_STATE_SCHEMA["as_of"]).alias("as_of"),
            pl.max_horizontal("_pos_updated", "_cash_updated", "_realized_updated").alias("last_updated"),
        )
    )
    return (
        state.select([pl.col(c).cast(t) for c, t in PORTFOLIO_STATE_SCHEMA.items()])
        .sort("portfolio_id")
        .collect()
    )
