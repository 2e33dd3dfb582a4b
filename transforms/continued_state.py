"""The state of some portfolios carried forward by new entries from what an earlier build
stored, instead of rebuilt from their whole history: what the intraday path computes for a
file of trades (``continue_book``).

What is carried, and why it equals a rebuild (up to the order floats are added in):

- cash balances (``carry_cash_balances``): the stored balances plus the new entries' sums.
  A balance is a sum of entries, split settled / pending by the settle date against the
  moment's date, so this holds while that date stays the same: the pipeline rebuilds every
  portfolio when the state's date moves (``assets.scope.plan_scope``).
- realised P&L per portfolio (``carry_realized``): the stored total plus the new realised
  rows, each converted at the fx of its close date as ``transforms.state`` does. A new BUY
  can raise an earlier sale's disallowed loss, which changes its taxable P&L but not its
  realised P&L, so the earlier rows' total stands.
- positions and the portfolio state are functions of the open lots, the balances and the
  realised totals at the moment: the rows of the books the trades touched, the cash rows and
  the state are recomputed from the carried ones (``transforms.positions``,
  ``transforms.state``); the other books' stored rows stand but for their weights.
- the daily valuations change only on the days from the first new entry's date on
  (holdings and cash are cumulative). ``valuations_on_day`` recomputes the one row of the
  state's date from the positions and balances; a portfolio whose new entries are dated
  earlier must be rebuilt (``valuation_changes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import polars as pl

from transforms.book import Market, to_utc
from transforms.cash import CASH_BALANCES_SCHEMA, cash_balances, cash_ledger
from transforms.contract import DAILY_VALUATIONS_SCHEMA, LANDING_SCHEMAS, TS
from transforms.fx import Currencies, FxRates, as_of_date
from transforms.ledger_state import continue_ledger
from transforms.lots import Ledger
from transforms.ordering import ordered_sum
from transforms.positions import positions as build_positions, reweighted
from transforms.state import portfolio_state, realized_by_portfolio
from transforms.valuations import QTY_EPS

REALIZED_TOTALS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "realized_pnl": pl.Float64,  # base currency, each row at the fx of its close date
    "last_close_ts": TS,  # or a later moment no later than the last cash entry (``carry_realized``)
}


def carry_cash_balances(balances: pl.DataFrame, entries: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    """``CASH_BALANCES_SCHEMA`` rows: ``balances`` (as of a moment on the date of ``as_of``)
    with the cash-ledger ``entries`` after them added, as of ``as_of``.

    Per (portfolio, currency): settled, pending and total cash are the earlier ones plus the
    new entries' (``transforms.cash.cash_balances`` of ``entries``); ``last_ts`` the later
    of the two. A pair that only one side has keeps that side's figures. Sorted by
    (portfolio_id, currency)."""
    key = ["portfolio_id", "currency"]
    added = cash_balances(entries, as_of)
    both = balances.select(list(CASH_BALANCES_SCHEMA)).join(added, on=key, how="full", coalesce=True, suffix="_new")
    sums = [(pl.col(c).fill_null(0.0) + pl.col(f"{c}_new").fill_null(0.0)).alias(c)
            for c in ("settled_cash", "pending_cash", "total_cash")]
    return (
        both.select(*key, *sums, pl.max_horizontal("last_ts", "last_ts_new").alias("last_ts"))
        .cast(CASH_BALANCES_SCHEMA)
        .sort(key)
    )


def carry_realized(
    totals: pl.DataFrame,
    realized_pnl: pl.DataFrame,
    portfolios: pl.DataFrame,
    instruments: pl.DataFrame,
    as_of: datetime,
    fx_rates: FxRates,
    currencies: Currencies | None = None,
) -> pl.DataFrame:
    """``REALIZED_TOTALS_SCHEMA`` rows: the earlier ``totals`` per portfolio plus the new
    ``realized_pnl`` rows (``REALIZED_PNL_SCHEMA``), converted and summed by
    ``transforms.state.realized_by_portfolio``; ``last_close_ts`` the later of the two.

    ``totals`` may come from a stored portfolio state, whose ``last_updated`` bounds its last
    close from above: the state takes the latest of the positions' and cash's updates and the
    last close, and a close is a trade whose cash entry carries the same time, so that bound
    changes no state's ``last_updated``."""
    added = realized_by_portfolio(realized_pnl, portfolios, instruments, as_of, fx_rates, currencies=currencies)
    both = totals.select(list(REALIZED_TOTALS_SCHEMA)).join(added, on="portfolio_id", how="full", coalesce=True,
                                                             suffix="_new")
    return both.select(
        "portfolio_id",
        (pl.col("realized_pnl").fill_null(0.0) + pl.col("realized_pnl_new").fill_null(0.0)).alias("realized_pnl"),
        pl.max_horizontal("last_close_ts", "last_close_ts_new").alias("last_close_ts"),
    ).cast(REALIZED_TOTALS_SCHEMA).sort("portfolio_id")


def last_business_day(market: Market, day: date) -> date | None:
    """The last price date on or before ``day`` (the last day the daily valuations have a row
    for); None when there is none."""
    index = market.prices.day_index(day)
    return market.prices.days[index] if index >= 0 else None


def valuation_changes(entries: pl.DataFrame, valuations: pl.DataFrame, day: date,
                      last_day: date | None) -> tuple[pl.DataFrame, pl.Series]:
    """``(rows, rebuild)`` for new cash-ledger ``entries`` at a moment on ``day``, the last
    business day being ``last_day``: the stored ``valuations`` rows of ``last_day`` that
    ``valuations_on_day`` recomputes, and the portfolios whose daily valuations must be
    rebuilt (sorted).

    Holdings and cash are cumulative, so an entry changes the rows from its date on. One
    dated after ``last_day`` changes no row yet; one dated on it (when it is ``day``: the
    positions and balances at the moment are those of its close) changes that row alone; an
    earlier one, or one on ``last_day`` when the moment is a later day, or a portfolio with
    no stored row of that day, changes more: rebuild."""
    empty = pl.Series("portfolio_id", [], pl.String)
    if last_day is None or entries.height == 0:
        return valuations.clear(), empty
    dated = entries.select("portfolio_id", pl.col("ts").dt.date().alias("date"))
    before = (pl.col("date") < last_day) if day == last_day else (pl.col("date") <= last_day)
    rebuild = dated.filter(before)["portfolio_id"]
    changed = dated.filter(pl.col("date") == last_day)["portfolio_id"].unique() if day == last_day else empty
    rows = valuations.filter(pl.col("date") == last_day, pl.col("portfolio_id").is_in(changed.implode()),
                             ~pl.col("portfolio_id").is_in(rebuild.implode()))
    missing = changed.filter(~changed.is_in(rows["portfolio_id"].implode()))
    return rows, pl.concat([rebuild, missing]).unique().sort()


def valuations_on_day(
    positions: pl.DataFrame,
    balances: pl.DataFrame,
    before: pl.DataFrame,
    market: Market,
    currencies: Currencies,
    day: date,
) -> tuple[pl.DataFrame, pl.Series]:
    """``(rows, unpriced)``: the ``DAILY_VALUATIONS_SCHEMA`` row of business day ``day`` of
    each portfolio of ``before`` (its stored row of that day) from its ``positions`` and cash
    ``balances`` as of a moment on ``day`` after every entry; and the portfolios it cannot
    value so (sorted), which must be rebuilt.

    The rules are those of ``transforms.valuations`` at ``day``: an instrument's holding is
    the net quantity of its LONG and SHORT rows (flat within ``QTY_EPS``), valued at the
    latest close on or before ``day`` times base per local at that close's date; positive
    holdings add to ``long_market_value``, negative ones to ``short_market_value``; a close
    older than ``day`` counts in ``stale_prices``; ``cash`` and ``settled_cash`` convert at
    ``day``'s fx, ``pending_cash = cash - settled_cash``; ``nav = cash + long + short``;
    ``net_flows`` (external flows, which trades do not change) are the stored row's. A
    holding with no close at all is valued there at the last trade price, which only the
    trades know, and an amount in a currency with no rate is left null there: such a
    portfolio is in ``unpriced``. Sorted by portfolio_id."""
    day_no = int(pl.Series([day], dtype=pl.Date).to_physical()[0])
    ids = before["portfolio_id"]
    held = (
        positions.filter(pl.col("position_type") != "CASH", pl.col("portfolio_id").is_in(ids.implode()))
        .group_by("portfolio_id", "instrument_id")
        .agg(pl.col("quantity").sum())
        .filter(pl.col("quantity").abs() > QTY_EPS)
        .sort("portfolio_id", "instrument_id")
    )
    close, quoted = market.prices.latest(held["instrument_id"], day)
    p = currencies.portfolio_codes(held["portfolio_id"])
    rate = currencies.base_per_local(market.fx, p, currencies.instrument_codes(held["instrument_id"]), quoted)
    quantity = held["quantity"].to_numpy()
    value = quantity * (close * rate)
    cash_rate = currencies.balance_rates(market.fx, balances, day)
    # no close (valued at the last trade price) or no rate (a value the valuations leave null)
    unpriced = pl.concat([held.filter(pl.Series(np.isnan(value)))["portfolio_id"],
                          balances.filter(pl.Series(np.isnan(cash_rate)))["portfolio_id"]]).unique().sort()
    market_values = (  # summed in row order (``ordered_sum``): the same bits on every run
        held.with_columns(pl.Series("value", value), pl.Series("stale", ~np.isnan(close) & (quoted < day_no)))
        .group_by("portfolio_id")
        .agg(
            ordered_sum(pl.col("value").filter(pl.col("quantity") > 0)).alias("long_market_value"),
            ordered_sum(pl.col("value").filter(pl.col("quantity") < 0)).alias("short_market_value"),
            pl.col("stale").sum().cast(pl.Int64).alias("stale_prices"),
        )
    )
    cash = (
        balances.with_columns(pl.Series("rate", cash_rate))
        .group_by("portfolio_id")
        .agg(ordered_sum(pl.col("total_cash") * pl.col("rate")).alias("cash"),
             ordered_sum(pl.col("settled_cash") * pl.col("rate")).alias("settled_cash"))
    )
    rows = (
        before.select("portfolio_id", "base_currency", "net_flows")
        .join(cash, on="portfolio_id", how="left")
        .join(market_values, on="portfolio_id", how="left")
        .with_columns(pl.col("cash", "settled_cash", "long_market_value", "short_market_value").fill_null(0.0),
                      pl.col("stale_prices").fill_null(0))
        .with_columns(
            pl.lit(day).alias("date"),
            (pl.col("cash") + pl.col("long_market_value") + pl.col("short_market_value")).alias("nav"),
            (pl.col("cash") - pl.col("settled_cash")).alias("pending_cash"),
        )
    )
    rows = rows.filter(~pl.col("portfolio_id").is_in(unpriced.implode()))
    return rows.select(list(DAILY_VALUATIONS_SCHEMA)).cast(DAILY_VALUATIONS_SCHEMA).sort("portfolio_id"), unpriced


@dataclass(frozen=True)
class StoredState:
    """What an earlier build stored of some portfolios: the ledger's open lots
    (``LEDGER_STATE_SCHEMA``) and open losses, the cash balances (``CASH_BALANCES_SCHEMA``),
    the realised totals (``REALIZED_TOTALS_SCHEMA``), the positions (``POSITIONS_SCHEMA``)
    and the daily valuation rows of the state's date (``DAILY_VALUATIONS_SCHEMA``)."""

    ledger_state: pl.DataFrame
    open_losses: pl.DataFrame
    balances: pl.DataFrame
    realized: pl.DataFrame
    positions: pl.DataFrame
    valuations: pl.DataFrame


@dataclass(frozen=True)
class ContinuedBook:
    """The tables of ``continue_book``: the continued ``ledger`` (``transforms.lots.Ledger``:
    its lots are the portfolios' open lots now and the lots the new trades closed), the new
    cash entries, the carried balances and realised totals, the positions and state of the
    portfolios, and their valuation rows of the state's date with the portfolios whose
    valuations must be rebuilt instead (``rebuild_valuations``)."""

    ledger: Ledger
    cash_entries: pl.DataFrame
    balances: pl.DataFrame
    realized: pl.DataFrame
    positions: pl.DataFrame
    portfolio_state: pl.DataFrame
    valuations: pl.DataFrame
    rebuild_valuations: pl.Series


def continue_book(
    stored: StoredState,
    trades: pl.DataFrame,
    portfolios: pl.DataFrame,
    instruments: pl.DataFrame,
    market: Market,
    as_of: datetime,
) -> ContinuedBook:
    """Apply new ``trades`` (after each of their books' last events: ``replay_needed`` names
    none) to the ``stored`` state of their portfolios, at the moment ``as_of`` (on the date of
    the stored state's moment): the module docstring's steps, the same tables a rebuild of
    the portfolios' whole history gives at ``as_of``.

    ``portfolios`` and the stored frames may hold more portfolios than the trades touch; the
    output covers the touched ones (the stored ones of the others are unchanged)."""
    moment = to_utc(as_of)
    day = as_of_date(moment)
    touched = trades["portfolio_id"].cast(pl.String).unique().sort()
    mine = pl.col("portfolio_id").is_in(touched.implode())
    ports, stored_balances = portfolios.filter(mine), stored.balances.filter(mine)
    ledger = continue_ledger(trades, ports, stored.ledger_state, stored.open_losses)
    entries = cash_ledger(ledger.accepted_trades, pl.DataFrame(schema=LANDING_SCHEMAS["cash_flows"]), instruments)
    balances = carry_cash_balances(stored_balances, entries, moment)
    book = Currencies(instruments, ports)
    realized = carry_realized(stored.realized.filter(mine), ledger.realized_pnl, ports, instruments, moment, market.fx,
                              book)
    # the books the trades replayed are valued again; the others' rows stand (same lots, and
    # the same closes and fx on the same date) but for their weights
    replayed = build_positions(ledger.lots, entries, market.prices, market.fx, instruments, ports, moment,
                               balances=balances, currencies=book, lot_codes=ledger.lot_codes)
    pair = ["portfolio_id", "instrument_id"]
    others = stored.positions.filter(mine, pl.col("position_type") != "CASH").join(
        trades.select(pl.col(c).cast(pl.String) for c in pair).unique(), on=pair, how="anti")
    pos = reweighted(pl.concat([others, replayed]))
    state = portfolio_state(pos, ledger.realized_pnl, ports, moment, market.fx, instruments=instruments,
                            cash_ledger=entries, balances=balances, realized=realized, currencies=book)
    last_day = last_business_day(market, day)
    on_day, rebuild = valuation_changes(entries, stored.valuations.filter(mine), day, last_day)
    rows, unpriced = valuations_on_day(pos, balances, on_day, market, book, last_day or day)
    return ContinuedBook(
        ledger=ledger, cash_entries=entries, balances=balances, realized=realized, positions=pos,
        portfolio_state=state, valuations=rows,
        rebuild_valuations=pl.concat([rebuild, unpriced]).unique().sort(),
    )

