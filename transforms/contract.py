"""The data contract: the columns, types and allowed values of every landing kind and every
table the pipeline publishes.

This module is the one place that names columns and dtypes. Ingestion casts landing files to
these types, the ledger reads them, the warehouse publishes them, and the sample-book generator
writes them. Nothing here does any work: it is data about data.

Conventions (used everywhere):
- timestamps are UTC, microsecond precision (``TS``); calendar days are ``pl.Date``;
- ids are strings; quantities and money are ``Float64`` in the instrument's (or stated) currency;
- ``quantity`` on a trade is always positive; the side says the direction.
"""

from __future__ import annotations

import polars as pl

TS = pl.Datetime("us", "UTC")

# --- allowed values -------------------------------------------------------------------------
PORTFOLIO_STATUSES = ("ACTIVE", "SUSPENDED", "LIQUIDATING", "CLOSED")
TAX_STATUSES = ("TAXABLE", "EXEMPT")
LOT_METHODS = ("FIFO", "LIFO", "HIFO")
TRADE_SIDES = ("BUY", "SELL", "SELL_SHORT", "BUY_TO_COVER")
OPENING_SIDES = ("BUY", "SELL_SHORT")
CLOSING_SIDES = ("SELL", "BUY_TO_COVER")
CASH_FLOW_TYPES = ("DEPOSIT", "WITHDRAWAL", "DIVIDEND", "INTEREST", "FEE")
POSITION_TYPES = ("LONG", "SHORT", "CASH")
ASSET_CLASSES = ("EQUITY", "FIXED_INCOME", "COMMODITY", "REAL_ESTATE", "CASH_EQUIVALENT")
UNCLASSIFIED = "UNCLASSIFIED"  # the sector of an instrument that has none
BASE_CURRENCY = "USD"  # fx_rates quote every currency in USD per unit
# Settlement amounts are whole minor units: 2 decimals unless listed here (ISO 4217).
CURRENCY_DECIMALS: dict[str, int] = {"JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "JOD": 3, "OMR": 3, "TND": 3}
DEFAULT_CURRENCY_DECIMALS = 2

# --- landing kinds: column -> dtype, in published order ---------------------------------------
# ``required`` columns must be present in a file; ``optional`` ones are null when absent.
LANDING_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "instruments": {
        "instrument_id": pl.String,
        "name": pl.String,
        "asset_class": pl.String,
        "sector": pl.String,
        "country": pl.String,
        "currency": pl.String,
        "lot_size": pl.Int64,
    },
    "portfolios": {
        "portfolio_id": pl.String,
        "portfolio_name": pl.String,
        "status": pl.String,
        "base_currency": pl.String,
        "benchmark_id": pl.String,
        "tax_status": pl.String,
        "lot_method": pl.String,
        "inception_date": pl.Date,
    },
    "prices": {
        "instrument_id": pl.String,
        "date": pl.Date,
        "close": pl.Float64,
        "volume": pl.Int64,
    },
    "fx_rates": {
        "date": pl.Date,
        "currency": pl.String,
        "usd_per_unit": pl.Float64,
    },
    "trades": {
        "trade_id": pl.String,
        "portfolio_id": pl.String,
        "instrument_id": pl.String,
        "trade_ts": TS,
        "settle_date": pl.Date,
        "side": pl.String,
        "quantity": pl.Float64,
        "price": pl.Float64,
        "fees": pl.Float64,
        "strategy_id": pl.String,
        "lot_id": pl.String,
    },
    "cash_flows": {
        "flow_id": pl.String,
        "portfolio_id": pl.String,
        "ts": TS,
        "type": pl.String,
        "amount": pl.Float64,
        "currency": pl.String,
        "instrument_id": pl.String,
    },
    "targets": {
        "portfolio_id": pl.String,
        "strategy_id": pl.String,
        "instrument_id": pl.String,
        "target_weight": pl.Float64,
        "effective_date": pl.Date,
    },
    "benchmarks": {
        "benchmark_id": pl.String,
        "instrument_id": pl.String,
        "weight": pl.Float64,
        "effective_date": pl.Date,
    },
    "signals": {
        "signal_id": pl.String,
        "source": pl.String,
        "ts": TS,
        "instrument_id": pl.String,
        "portfolio_id": pl.String,
        "strategy_id": pl.String,
        "score": pl.Float64,
        "confidence": pl.Float64,
        "horizon": pl.String,
        "priority": pl.Int64,
    },
}

OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "instruments": (),
    "portfolios": ("benchmark_id",),
    "prices": ("volume",),
    "fx_rates": (),
    "trades": ("strategy_id", "lot_id", "fees"),
    "cash_flows": ("instrument_id",),
    "targets": ("strategy_id",),
    "benchmarks": (),
    "signals": ("portfolio_id", "strategy_id", "confidence", "horizon", "priority"),
}

# The id column (or columns) that must be unique within a kind, across all its files.
UNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "instruments": ("instrument_id",),
    "portfolios": ("portfolio_id",),
    "prices": ("instrument_id", "date"),
    "fx_rates": ("date", "currency"),
    "trades": ("trade_id",),
    "cash_flows": ("flow_id",),
    "targets": ("portfolio_id", "strategy_id", "instrument_id", "effective_date"),
    "benchmarks": ("benchmark_id", "instrument_id", "effective_date"),
    "signals": ("signal_id",),
}

# Kinds whose rows must name a known instrument / portfolio (checked against bronze).
REFERENCES: dict[str, dict[str, str]] = {
    "prices": {"instrument_id": "instruments"},
    "trades": {"instrument_id": "instruments", "portfolio_id": "portfolios"},
    "cash_flows": {"portfolio_id": "portfolios", "instrument_id": "instruments"},
    "targets": {"portfolio_id": "portfolios", "instrument_id": "instruments"},
    "benchmarks": {"instrument_id": "instruments"},
    "signals": {"instrument_id": "instruments", "portfolio_id": "portfolios"},
}

LANDING_KINDS: tuple[str, ...] = tuple(LANDING_SCHEMAS)
# Ingestion order: reference data before the kinds that refer to it.
INGEST_ORDER: tuple[str, ...] = (
    "instruments",
    "portfolios",
    "fx_rates",
    "prices",
    "benchmarks",
    "trades",
    "cash_flows",
    "targets",
    "signals",
)

# Lineage columns that ingestion adds to every accepted bronze row.
LINEAGE = {
    "source_file": pl.String,  # path relative to the landing root, e.g. "trades/2024-01.csv"
    "source_sha256": pl.String,
    "source_row": pl.Int64,  # 1-based data row number in the file (header is row 0)
}

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "kind": pl.String,
    "source_file": pl.String,
    "source_sha256": pl.String,
    "source_row": pl.Int64,  # null when the whole file is quarantined
    "column": pl.String,  # null when the reason is about the row or file, not one column
    "reason": pl.String,
    "raw": pl.String,  # the raw row as JSON (strings as read), or a file excerpt
    "stage": pl.String,  # "file", "row", "reference", "ledger"
    "run_id": pl.String,
    "quarantined_at": TS,
}

INGESTION_LOG_SCHEMA: dict[str, pl.DataType] = {
    "kind": pl.String,
    "source_file": pl.String,
    "source_sha256": pl.String,
    "version": pl.Int64,  # 1 for a file's first content, +1 each time its content changes
    "status": pl.String,  # "INGESTED", "QUARANTINED" (whole file)
    "rows_read": pl.Int64,
    "rows_accepted": pl.Int64,
    "rows_quarantined": pl.Int64,
    "extra_columns": pl.String,  # comma-separated names of ignored extra columns, or null
    "message": pl.String,
    "run_id": pl.String,
    "ingested_at": TS,
}


def empty_frame(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Return an empty DataFrame with exactly ``schema`` (column -> dtype)."""
    return pl.DataFrame(schema=schema)


def landing_frame(kind: str, with_lineage: bool = False) -> pl.DataFrame:
    """Return an empty frame of landing ``kind`` (optionally with the lineage columns)."""
    schema = dict(LANDING_SCHEMAS[kind])
    if with_lineage:
        schema.update(LINEAGE)
    return empty_frame(schema)


# --- silver tables (built by transforms/, published to the warehouse) ------------------------
# Sign conventions: quantities and market values of SHORT positions are negative, so
# NAV = cash + sum(market_value) and unrealized_pnl = market_value - cost_basis for every row.

LOTS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "lot_id": pl.String,  # the opening trade's trade_id; a wash-sale split adds "~W<n>"
    "position_type": pl.String,  # LONG or SHORT
    "strategy_id": pl.String,
    "open_trade_id": pl.String,
    "open_ts": TS,
    "open_price": pl.Float64,
    "original_quantity": pl.Float64,  # > 0
    "quantity": pl.Float64,  # remaining, >= 0 (the side is in position_type)
    "cost_basis": pl.Float64,  # remaining economic basis, local ccy: qty*price + fees (LONG);
    #                            proceeds received: qty*price - fees (SHORT); always >= 0
    "wash_sale_adjustment": pl.Float64,  # remaining disallowed loss added to the tax basis
    "tax_basis": pl.Float64,  # cost_basis + wash_sale_adjustment
    "holding_start": pl.Date,  # open date, moved back by a wash sale's carried holding period
    "status": pl.String,  # OPEN or CLOSED
    "closed_ts": TS,  # when the remaining quantity reached zero, else null
}

# The ledger's own state, what an intraday build continues from (``transforms.ledger_state``):
# every OPEN lot with the replay's working fields, and per book (portfolio, instrument, side)
# what decides whether new trades can continue it.
LEDGER_STATE_SCHEMA: dict[str, pl.DataType] = {
    **{c: LOTS_SCHEMA[c] for c in ("portfolio_id", "instrument_id", "lot_id", "position_type", "strategy_id",
                                   "open_trade_id", "open_ts", "open_price", "original_quantity", "quantity",
                                   "cost_basis", "wash_sale_adjustment", "holding_start")},
    "piece": pl.Int32,  # 0 for the lot itself, n for its wash-sale piece "~W<n>"
    "unit_tax_basis": pl.Float64,  # the HIFO key: tax basis per unit when the lot was made
    "pieces": pl.Int32,  # wash-sale pieces split off this lot so far (closed ones too)
    "absorbed_loss": pl.Boolean,  # took a disallowed loss: not a replacement lot again
}

LEDGER_BOOKS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "position_type": pl.String,
    "last_event_ts": TS,  # the latest trade applied or rejected in the book
}

# Loss rows (LONG, wash-sale rule applies) whose sale still has loss shares no replacement took,
# and whose sale is within 30 days of its book's last event: a later BUY takes them
# (``transforms.lot_kernel``, "Matching"); the realised row is keyed by trade_id and lot_id
LEDGER_OPEN_LOSSES_SCHEMA: dict[str, pl.DataType] = {
    **{c: pl.String for c in ("portfolio_id", "instrument_id", "trade_id", "lot_id")},
    "close_ts": TS,
    "quantity": pl.Float64,
    "realized_pnl": pl.Float64,
    "wash_sale_adjustment": pl.Float64,
    "disallowed_loss": pl.Float64,
    "holding_start": pl.Date,
    "loss_shares_before": pl.Float64,  # the sale's loss shares ahead of this row's
    "replacement_shares_paired": pl.Float64,  # replacement shares the sale's loss took so far
}

REALIZED_PNL_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "trade_id": pl.String,  # the closing trade
    "lot_id": pl.String,
    "position_type": pl.String,  # the lot's side: LONG (closed by SELL) or SHORT (BUY_TO_COVER)
    "close_ts": TS,
    "quantity": pl.Float64,  # > 0
    "proceeds": pl.Float64,  # LONG: qty*price - allocated fees; SHORT: the lot's opening proceeds
    "cost_basis": pl.Float64,  # LONG: the lot's basis; SHORT: qty*price + allocated fees
    "realized_pnl": pl.Float64,  # proceeds - cost_basis (economic)
    "wash_sale_adjustment": pl.Float64,  # the sold lot's adjustment carried into this close
    "disallowed_loss": pl.Float64,  # >= 0: loss deferred into replacement lots
    "taxable_pnl": pl.Float64,  # realized_pnl - wash_sale_adjustment + disallowed_loss
    "holding_start": pl.Date,
    "holding_days": pl.Int64,
    "term": pl.String,  # SHORT (<= 1 year) or LONG (> 1 year)
}

CASH_LEDGER_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "entry_id": pl.String,  # "<trade_id>" or "<flow_id>"
    "source": pl.String,  # TRADE or CASH_FLOW
    "entry_type": pl.String,  # the trade side or the cash-flow type
    "instrument_id": pl.String,
    "ts": TS,
    "settle_date": pl.Date,  # trades: settle_date; cash flows: the date of ts
    "currency": pl.String,
    "amount": pl.Float64,  # signed, local currency: + cash in, - cash out (fees included)
    "is_external": pl.Boolean,  # DEPOSIT / WITHDRAWAL: flows that performance must remove
}

POSITIONS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "instrument_id": pl.String,  # for CASH rows: "CASH:<currency>"
    "position_type": pl.String,  # LONG, SHORT, CASH
    "currency": pl.String,  # the instrument's (or cash) currency
    "quantity": pl.Float64,  # signed; CASH rows: the cash amount in its currency
    "price": pl.Float64,  # local close used (1.0 for cash)
    "price_date": pl.Date,
    "fx_rate": pl.Float64,  # base ccy per unit of the local ccy on price_date
    "cost_basis": pl.Float64,  # base ccy, signed like quantity (at each lot's open-date fx)
    "average_cost": pl.Float64,  # local ccy per unit: local cost basis / |quantity|
    "market_value": pl.Float64,  # base ccy, signed
    "unrealized_pnl": pl.Float64,  # market_value - cost_basis (base)
    "weight": pl.Float64,  # market_value / NAV
    "last_updated": TS,  # latest trade (or cash entry) affecting this row
}

DAILY_VALUATIONS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "date": pl.Date,  # business day from the price calendar
    "base_currency": pl.String,
    "nav": pl.Float64,  # cash + long_market_value + short_market_value
    "cash": pl.Float64,  # settled + pending, base ccy
    "settled_cash": pl.Float64,
    "pending_cash": pl.Float64,
    "long_market_value": pl.Float64,  # >= 0
    "short_market_value": pl.Float64,  # <= 0
    "net_flows": pl.Float64,  # external flows (deposits - withdrawals) that day, base ccy
    "stale_prices": pl.Int64,  # positions valued at a price older than date
}

RETURNS_DAILY_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "date": pl.Date,
    "base_currency": pl.String,
    "nav": pl.Float64,
    "net_flows": pl.Float64,  # external flows counted that day (start of day)
    "capital": pl.Float64,  # previous nav + net_flows: what earned the day's return
    "daily_return": pl.Float64,  # nav / capital - 1; null where return_note says why
    "return_note": pl.String,  # null, or why the day has no return
    "growth": pl.Float64,  # chain-linked value of 1 at the start (days without a return count 0)
}

PERFORMANCE_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "period": pl.String,  # MTD, QTD, YTD, 1Y, 3Y, ITD (transforms.performance.PERIODS)
    "start_date": pl.Date,  # the period's first day, or the first valued day when later
    "end_date": pl.Date,  # the as-of date
    "base_currency": pl.String,
    "benchmark_id": pl.String,
    "days": pl.Int64,  # daily returns in the period
    "days_without_return": pl.Int64,  # days whose return is null (returns_daily.return_note)
    "cumulative_return": pl.Float64,  # time-weighted, chain-linked
    "annualised_return": pl.Float64,  # null under a year
    "benchmark_cumulative_return": pl.Float64,
    "volatility": pl.Float64,  # annualised
    "sharpe": pl.Float64,
    "sortino": pl.Float64,
    "max_drawdown": pl.Float64,  # <= 0
    "drawdown_days": pl.Int64,  # longest run of days under a previous peak
    "calmar": pl.Float64,
    "beta": pl.Float64,
    "alpha": pl.Float64,  # annualised (Jensen, geometric as empyrical)
    "tracking_error": pl.Float64,  # annualised
    "information_ratio": pl.Float64,
    "money_weighted_return": pl.Float64,  # over the period (from the XIRR)
    "money_weighted_return_annualised": pl.Float64,  # the XIRR; null under a year
    "note": pl.String,  # null, or why figures are missing
}

EXPOSURES_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "date": pl.Date,
    "base_currency": pl.String,
    "benchmark_id": pl.String,
    "nav": pl.Float64,
    "long_exposure": pl.Float64,  # >= 0, base ccy (= daily_valuations.long_market_value)
    "short_exposure": pl.Float64,  # <= 0
    "gross_exposure": pl.Float64,  # long - short
    "net_exposure": pl.Float64,  # long + short
    "leverage": pl.Float64,  # gross / nav; null when nav <= 0
    "net_leverage": pl.Float64,  # net / nav
    "top10_weight": pl.Float64,  # the 10 largest |values| / gross
    "herfindahl": pl.Float64,  # sum((|v| / gross) ** 2)
    "beta_adjusted_net": pl.Float64,  # sum(v * beta to the benchmark) / nav
    "positions_without_beta": pl.Int64,
}

EXPOSURE_BREAKDOWN_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "date": pl.Date,
    "dimension": pl.String,  # sector, asset_class, currency, country
    "bucket": pl.String,  # the dimension's value (UNKNOWN when the instrument has none)
    "long_exposure": pl.Float64,
    "short_exposure": pl.Float64,
    "gross_exposure": pl.Float64,
    "net_exposure": pl.Float64,
    "gross_weight": pl.Float64,  # gross / nav
    "net_weight": pl.Float64,  # net / nav
}

EXPOSURES_FIRM_SCHEMA: dict[str, pl.DataType] = {
    "level": pl.String,  # instrument or sector
    "key": pl.String,
    "currency": pl.String,  # the firm's reporting currency (USD)
    "long_exposure": pl.Float64,
    "short_exposure": pl.Float64,
    "gross_exposure": pl.Float64,
    "net_exposure": pl.Float64,
    "portfolios": pl.Int64,  # portfolios holding it
    "share_of_gross": pl.Float64,  # of the firm's gross at this level
    "unconverted_positions": pl.Int64,  # positions without an fx rate to the firm currency
}

CASH_BALANCES_BASE_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "currency": pl.String,
    "account_type": pl.String,  # CASH or MARGIN (transforms.margin)
    "settled_cash": pl.Float64,  # local currency
    "pending_cash": pl.Float64,
    "total_cash": pl.Float64,
    "fx_rate": pl.Float64,  # base per unit of the currency; null when not convertible
    "settled_cash_base": pl.Float64,
    "pending_cash_base": pl.Float64,
    "total_cash_base": pl.Float64,
    "negative_settled_cash": pl.Boolean,  # a cash account below zero settled cash
    "last_ts": TS,
}

MARGIN_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "base_currency": pl.String,
    "account_type": pl.String,
    "as_of": TS,
    "equity": pl.Float64,  # nav
    "settled_cash": pl.Float64,
    "pending_cash": pl.Float64,
    "long_market_value": pl.Float64,
    "short_market_value": pl.Float64,
    "initial_requirement": pl.Float64,
    "maintenance_requirement": pl.Float64,
    "excess": pl.Float64,  # equity - maintenance requirement; negative: a deficit
    "initial_excess": pl.Float64,
    "buying_power": pl.Float64,
    "margin_call": pl.Boolean,
    "negative_settled_cash": pl.Boolean,
    "long_initial": pl.Float64,  # the rule set used
    "long_maintenance": pl.Float64,
    "short_initial": pl.Float64,
    "short_maintenance": pl.Float64,
}

PORTFOLIO_STATE_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "portfolio_name": pl.String,
    "status": pl.String,
    "base_currency": pl.String,
    "total_value": pl.Float64,  # NAV
    "cash_balance": pl.Float64,
    "settled_cash": pl.Float64,
    "pending_cash": pl.Float64,
    "long_market_value": pl.Float64,
    "short_market_value": pl.Float64,
    "unrealized_pnl": pl.Float64,
    "realized_pnl": pl.Float64,  # cumulative, economic, base ccy
    "positions_count": pl.Int64,  # non-cash positions
    "weights": pl.List(pl.Struct({"instrument_id": pl.String, "weight": pl.Float64})),
    "as_of": TS,  # the moment the state describes
    "last_updated": TS,  # latest trade or cash flow included
}


# --- gold tables: what the analytics modules return, published under assets/analytics.py's names

# transforms.market_returns
BENCHMARK_RETURNS_SCHEMA: dict[str, pl.DataType] = {
    "benchmark_id": pl.String,
    "base_currency": pl.String,
    "date": pl.Date,
    "effective_date": pl.Date,  # of the basket held that day
    "daily_return": pl.Float64,
    "note": pl.String,  # null, or why the day has no return
}

# transforms.drift
DRIFT_SCHEMA: dict[str, pl.DataType] = {
    "date": pl.Date,
    "portfolio_id": pl.String,
    "level": pl.String,  # "instrument", "sector", "strategy"
    "key": pl.String,  # instrument_id, sector, strategy_id ("UNASSIGNED" for null)
    "actual_weight": pl.Float64,
    "target_weight": pl.Float64,
    "drift": pl.Float64,
    "abs_drift": pl.Float64,
    "relative_drift": pl.Float64,  # null when the target is 0
    "breach": pl.Boolean,  # null at strategy level (no band)
    "band_abs": pl.Float64,
    "band_rel": pl.Float64,
    "note": pl.String,
}
DRIFT_SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "date": pl.Date,
    "portfolio_id": pl.String,
    "nav": pl.Float64,
    "drift": pl.Float64,  # 0.5 * sum over instruments of |actual - target|; null with an issue
    "portfolio_band": pl.Float64,
    "breach": pl.Boolean,
    "instruments_breaching": pl.Int64,
    "sectors_breaching": pl.Int64,
    "max_abs_drift": pl.Float64,  # over instruments
    "note": pl.String,
}
DRIFT_ALERTS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "date": pl.Date,
    "level": pl.String,  # "instrument", "sector", "portfolio"
    "key": pl.String,  # instrument_id, sector, or the portfolio_id at portfolio level
    "drift": pl.Float64,  # the portfolio drift figure at portfolio level; null on ERROR rows
    "band_type": pl.String,  # "abs" or "rel"; null on ERROR rows
    "band": pl.Float64,
    "severity": pl.String,  # LOW, MEDIUM, HIGH, ERROR
    "message": pl.String,
    "rising": pl.Boolean,  # the trend slope is > 0; null without a trend
}

# transforms.risk_report
RISK_MODEL_SCHEMA: dict[str, pl.DataType] = {
    "base_currency": pl.String,
    "matrix": pl.String,  # exposures (instrument x factor), factor_covariance (factor x factor), specific_variance (instrument)
    "row_id": pl.String,
    "column_id": pl.String,  # null for specific_variance
    "value": pl.Float64,  # per day
}

# transforms.risk
RISK_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "nav": pl.Float64,
    "positions": pl.Int64,  # non-cash holdings
    "excluded_positions": pl.Int64,  # non-cash holdings without return history
    "excluded_weight": pl.Float64,  # their summed weight
    "volatility": pl.Float64,  # per day: sqrt(w' S w)
    "annualised_volatility": pl.Float64,  # volatility * sqrt(252)
    "tracking_error": pl.Float64,  # per day: sqrt((w - b)' S (w - b)); null without a benchmark
    "annualised_tracking_error": pl.Float64,
    "note": pl.String,  # null, or what is excluded or missing
}
VAR_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "method": pl.String,  # historical or parametric
    "confidence": pl.Float64,  # 0.95, 0.99
    "horizon_days": pl.Int64,  # 1, 10
    "observations": pl.Int64,  # historical: return windows used; parametric: null
    "var": pl.Float64,  # loss, base currency (> 0 is a loss)
    "cvar": pl.Float64,  # expected loss beyond the VaR, base currency
    "var_pct_nav": pl.Float64,  # var / nav
    "cvar_pct_nav": pl.Float64,
    "note": pl.String,
}
RISK_CONTRIBUTIONS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "level": pl.String,  # position or sector
    "key": pl.String,  # the instrument_id, or the sector (CASH for cash rows)
    "weight": pl.Float64,
    "marginal": pl.Float64,  # d sigma / d weight, per day
    "component": pl.Float64,  # weight * marginal; sums to the daily volatility
    "share": pl.Float64,  # component / volatility
    "note": pl.String,
}

# transforms.stress
STRESS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "scenario": pl.String,  # the named scenario, or worst_day_<rank>
    "kind": pl.String,  # named or historical
    "scenario_date": pl.Date,  # historical: the replayed day; named: null
    "pnl": pl.Float64,  # base currency; a loss is negative
    "pnl_pct_nav": pl.Float64,  # pnl / nav
    "note": pl.String,  # null, or what was not shocked and why
}

# transforms.attribution
ATTRIBUTION_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "date": pl.Date,
    "sector": pl.String,
    "portfolio_weight": pl.Float64,
    "benchmark_weight": pl.Float64,
    "portfolio_return": pl.Float64,  # as given (null when the portfolio holds none of it)
    "benchmark_return": pl.Float64,
    "allocation": pl.Float64,
    "selection": pl.Float64,
    "interaction": pl.Float64,
    "total_effect": pl.Float64,
    "note": pl.String,  # the input's note, passed on
}
ATTRIBUTION_LINKED_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "sector": pl.String,
    "method": pl.String,
    "start_date": pl.Date,
    "end_date": pl.Date,
    "periods": pl.Int64,
    "allocation": pl.Float64,
    "selection": pl.Float64,
    "interaction": pl.Float64,
    "total_effect": pl.Float64,
    "note": pl.String,  # null, or why the effects could not be linked
}
LINK_SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "method": pl.String,
    "start_date": pl.Date,
    "end_date": pl.Date,
    "periods": pl.Int64,
    "portfolio_return": pl.Float64,  # R = prod(1 + R_t) - 1
    "benchmark_return": pl.Float64,
    "excess_return": pl.Float64,  # R - B
    "allocation": pl.Float64,
    "selection": pl.Float64,
    "interaction": pl.Float64,
    "total_effect": pl.Float64,
    "residual": pl.Float64,  # excess_return - total_effect, ~0
    "note": pl.String,
}
CONTRIBUTION_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "start_date": pl.Date,
    "end_date": pl.Date,
    "average_weight": pl.Float64,  # sum of the daily weights / the portfolio's periods
    "contribution": pl.Float64,
    "note": pl.String,  # null, or why the contribution could not be linked
}

# published with the period each row belongs to (MTD, QTD, YTD, 1Y), after portfolio_id
ATTRIBUTION_LINKED_TABLE_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String, "period": pl.String, **{k: v for k, v in ATTRIBUTION_LINKED_SCHEMA.items() if k != "portfolio_id"}
}
ATTRIBUTION_SUMMARY_TABLE_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String, "period": pl.String, **{k: v for k, v in LINK_SUMMARY_SCHEMA.items() if k != "portfolio_id"}
}
CONTRIBUTION_TABLE_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String, "period": pl.String, **{k: v for k, v in CONTRIBUTION_SCHEMA.items() if k != "portfolio_id"}
}

# the drift figure of every run's as-of date (analytics keeps one row per portfolio and date)
DRIFT_HISTORY_SCHEMA: dict[str, pl.DataType] = {"portfolio_id": pl.String, "date": pl.Date, "drift": pl.Float64}


# --- rebalancing tables: what optimizers.rebalance returns, published under assets/rebalancing.py's names
REBALANCE_SCENARIOS = ("do_nothing", "full_rebalance", "optimised")

# one row per (run, portfolio, sleeve, instrument) of a portfolio the run rebalanced
RECOMMENDATIONS_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String,
    "as_of": pl.Date,  # the day the problem is priced on
    "portfolio_id": pl.String,
    "strategy_id": pl.String,  # the sleeve ("UNASSIGNED" for holdings without one)
    "instrument_id": pl.String,
    "current_weight": pl.Float64,  # of NAV, this sleeve
    "target_weight": pl.Float64,
    "recommended_weight": pl.Float64,  # after rounding to lots and the repair
    "trade_quantity": pl.Float64,  # shares, signed (+ buy); the sleeve's part of the instrument's trade
    "trade_value": pl.Float64,  # base currency, signed
    "unit_value": pl.Float64,  # one share in the base currency
    "estimated_spread": pl.Float64,  # base currency, >= 0
    "estimated_commission": pl.Float64,
    "estimated_impact": pl.Float64,
    # base currency, the optimiser's tax model: negative is a saving from a harvested loss; a loss
    # below the harvest threshold counts 0 here (lot_sales has the tax of the lots actually sold)
    "estimated_tax": pl.Float64,
    "trigger": pl.String,  # the run's trigger kinds for the portfolio, by priority ("manual, drift")
    "solver": pl.String,  # CLARABEL or the fallback that solved it
    "solver_status": pl.String,  # optimal, optimal_inaccurate
    "rounding_status": pl.String,  # ROUNDED or REPAIRED (a REJECTED trade is never published)
    "note": pl.String,  # why an instrument could not trade freely, or null
}

# three rows per (run, portfolio considered): the scenarios side by side
REBALANCE_ANALYSIS_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String,
    "portfolio_id": pl.String,
    "scenario": pl.String,  # do_nothing, full_rebalance, optimised
    "nav": pl.Float64,
    "turnover": pl.Float64,  # sum |trade| / NAV
    "spread": pl.Float64,  # expected, base currency
    "commission": pl.Float64,
    "impact": pl.Float64,
    "tax": pl.Float64,
    "total_cost": pl.Float64,
    "drift_after": pl.Float64,  # 0.5 * (sum |w - target| over instruments + |cash - cash target|) (rebalance.drift_of)
    # the portfolio's drift figure in gold drift_summary when the run decided (each cash currency
    # apart; null when not measured): execution monitoring's drift before
    "drift_at_decision": pl.Float64,
    "tracking_error_after": pl.Float64,  # annualised, factor model, against the targets
    "risk_benefit": pl.Float64,  # base currency: risk_aversion * (TE^2 now - TE^2 after) * NAV
    "net_benefit": pl.Float64,  # risk_benefit - total_cost
    "hard_violations": pl.String,  # the hard constraint groups this scenario breaks, or null
    "chosen": pl.Boolean,  # the scenario the run publishes
    "reason": pl.String,  # why it was chosen (on the chosen row), or why not
}

# the lots each TAXABLE sell is taken from (tax-optimal order, optimizers.tax.select_lots)
LOT_SALES_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String,
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "lot_id": pl.String,
    "quantity": pl.Float64,
    "price": pl.Float64,  # local
    "basis_per_share": pl.Float64,  # tax basis, local
    "gain": pl.Float64,  # local
    "term": pl.String,  # SHORT or LONG
    "tax": pl.Float64,  # local; negative: a saving
    "wash_sale": pl.Boolean,
}

# one row per run
REBALANCE_RUNS_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String,
    "as_of": pl.Date,
    # the moment of the state the decisions were made on: trades after it can fill the orders
    "decided_at": TS,
    "started_at": TS,
    "portfolios": pl.Int64,  # considered
    "triggered": pl.Int64,  # with at least one trigger
    "rebalanced": pl.Int64,  # with published recommendations
    "no_benefit": pl.Int64,  # solved, but doing nothing was better
    "infeasible": pl.Int64,
    "rejected": pl.Int64,  # the rounded trade broke a hard constraint: nothing published
    "skipped": pl.Int64,  # SUSPENDED, CLOSED, or no trigger
    "shapes_compiled": pl.Int64,
    "solve_seconds_p50": pl.Float64,
    "solve_seconds_p99": pl.Float64,
    "seconds": pl.Float64,  # the whole optimisation stage
    "orders": pl.Int64,
    "gross_notional": pl.Float64,  # base currency, the recommendations' |trade_value| summed
    "estimated_cost": pl.Float64,  # base currency
    "average_drift_before": pl.Float64,  # over rebalanced portfolios, LIQUIDATING ones left out (rebalance.drift_of)
    "average_drift_after": pl.Float64,  # planned: after the recommended trades
}


# --- rebalancing: triggers and decisions (transforms.rebalance_triggers), netted orders
# (optimizers.netting) and execution monitoring (transforms.execution_quality)
# one row per trigger that fired
TRIGGERS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "kind": pl.String,  # one of TRIGGER_KINDS
    "value": pl.Float64,  # the measured figure; null for calendar and manual (and flagged rows)
    "threshold": pl.Float64,  # the limit it passed; null for calendar and manual
    "priority": pl.Int64,  # PRIORITIES[kind], 1 = most urgent
    "triggered_at": TS,  # the run's `now`
    "note": pl.String,  # a sentence: what was measured against what
}

# one row per portfolio: what this run does with it
DECISIONS_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "status": pl.String,  # contract.PORTFOLIO_STATUSES
    "action": pl.String,  # one of ACTIONS
    "reason": pl.String,
    "trigger_kinds": pl.List(pl.String),  # distinct kinds that fired, by priority then kind
    "top_priority": pl.Int64,  # the most urgent priority; null without a trigger
}

# one row per external order (instrument, side, batch)
ORDERS_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String,
    "order_id": pl.String,
    "instrument_id": pl.String,
    "side": pl.String,
    "quantity": pl.Float64,
    "price": pl.Float64,
    "currency": pl.String,
    "notional": pl.Float64,
    "wave": pl.Int64,
    "batch": pl.Int64,
    "batches": pl.Int64,
}

# one row per internal crossing between two portfolios
CROSSINGS_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String,
    "instrument_id": pl.String,
    "quantity": pl.Float64,
    "price": pl.Float64,
    "currency": pl.String,
    "notional": pl.Float64,
}

# one row per (order, portfolio): who the order trades for
ALLOCATIONS_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String,
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "side": pl.String,
    "quantity": pl.Float64,
    "crossed_quantity": pl.Float64,
    "external_quantity": pl.Float64,
    "order_id": pl.String,
}

# one row per allocation: its fills against the decision price and the estimate
EXECUTION_QUALITY_SCHEMA: dict[str, pl.DataType] = {
    "order_id": pl.String,
    "run_id": pl.String,
    "portfolio_id": pl.String,
    "instrument_id": pl.String,
    "side": pl.String,
    "quantity": pl.Float64,
    "decision_price": pl.Float64,
    "filled_quantity": pl.Float64,
    "fill_ratio": pl.Float64,
    "status": pl.String,  # FILLED, PARTIAL, UNFILLED
    "average_price": pl.Float64,  # null when unfilled
    "slippage_bps": pl.Float64,  # side-signed: positive = worse than the decision price
    "fees": pl.Float64,
    "realized_cost": pl.Float64,  # local currency
    "estimated_cost": pl.Float64,  # the optimiser's estimate for the whole allocation
    "estimated_cost_filled": pl.Float64,  # estimated_cost * fill_ratio
    "cost_ratio": pl.Float64,  # realized_cost / estimated_cost_filled
    "note": pl.String,
}

# one row per run: the success figures against their goals
EXECUTION_SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String,
    "orders": pl.Int64,
    "allocations": pl.Int64,
    "filled_allocations": pl.Int64,
    "fully_executed_share": pl.Float64,
    "goal_fully_executed": pl.Float64,
    "fully_executed_goal_met": pl.Boolean,
    "average_fill_ratio": pl.Float64,
    "slippage_bps": pl.Float64,  # weighted by filled_quantity * decision_price
    "realized_cost": pl.Float64,
    "estimated_cost": pl.Float64,
    "estimated_cost_filled": pl.Float64,
    "cost_ratio": pl.Float64,
    "average_drift_before": pl.Float64,
    "average_drift_after": pl.Float64,
    "goal_drift_after": pl.Float64,
    "drift_goal_met": pl.Boolean,
    "note": pl.String,
}
