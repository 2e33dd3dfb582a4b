"""Cash: the cash ledger (one signed entry per trade and per cash flow) and cash balances.

Sign convention (``CASH_LEDGER_SCHEMA``): ``amount`` is local-currency money, + in, - out.

- trades, in the instrument's currency, settling on the trade's ``settle_date``:
  ``BUY`` / ``BUY_TO_COVER`` pay ``-(quantity * price + fees)``;
  ``SELL`` / ``SELL_SHORT`` receive ``quantity * price - fees`` (null fees count as 0; a null
  settle_date is taken as the trade date). A trade settles in whole minor units of its
  currency (cents; ``contract.CURRENCY_DECIMALS``), rounded half away from zero, as a broker
  books it: cash never holds fractions of a cent. (Lots and realised P&L keep the exact
  ``quantity * price``; the difference per trade is under half a cent.)
- cash flows, in the flow's currency, settling on the UTC date of ``ts``:
  ``DEPOSIT``, ``DIVIDEND``, ``INTEREST`` add ``|amount|``; ``WITHDRAWAL`` and ``FEE`` subtract it.
  ``is_external`` is true for ``DEPOSIT`` and ``WITHDRAWAL`` only.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from transforms.contract import CASH_LEDGER_SCHEMA, CURRENCY_DECIMALS, DEFAULT_CURRENCY_DECIMALS, TS
from transforms.fx import as_of_date, as_utc

PAYING_SIDES = ("BUY", "BUY_TO_COVER")
INFLOW_TYPES = ("DEPOSIT", "DIVIDEND", "INTEREST")
EXTERNAL_TYPES = ("DEPOSIT", "WITHDRAWAL")

CASH_BALANCES_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_id": pl.String,
    "currency": pl.String,
    "settled_cash": pl.Float64,  # entries with ts <= as_of and settle_date <= as_of date
    "pending_cash": pl.Float64,  # entries with ts <= as_of and settle_date > as_of date
    "total_cash": pl.Float64,  # settled + pending
    "last_ts": TS,  # latest entry ts included
}


def settlement_amount(amount: pl.Expr, currency: pl.Expr = pl.col("currency")) -> pl.Expr:
    """``amount`` rounded half away from zero to the minor unit of ``currency`` (cents unless
    ``contract.CURRENCY_DECIMALS`` says otherwise)."""
    rounded = amount.round(DEFAULT_CURRENCY_DECIMALS, mode="half_away_from_zero")
    for decimals in sorted(set(CURRENCY_DECIMALS.values())):
        codes = [c for c, d in CURRENCY_DECIMALS.items() if d == decimals]
        rounded = pl.when(currency.is_in(codes)).then(amount.round(decimals, mode="half_away_from_zero")).otherwise(rounded)
    return rounded


def cash_ledger(
    trades: pl.DataFrame | pl.LazyFrame,
    cash_flows: pl.DataFrame | pl.LazyFrame,
    instruments: pl.DataFrame | pl.LazyFrame,
) -> pl.DataFrame:
    """Build the cash ledger (``CASH_LEDGER_SCHEMA``) from accepted trades and cash flows.

    Entries are sorted by (portfolio_id, ts, entry_id). See the module docstring for signs.
    """
    ccy = instruments.lazy().select("instrument_id", pl.col("currency"))
    gross = pl.col("quantity") * pl.col("price")
    fees = pl.col("fees").fill_null(0.0)
    trade_entries = (
        trades.lazy()
        .join(ccy, on="instrument_id", how="left")
        .select(
            "portfolio_id",
            pl.col("trade_id").alias("entry_id"),
            pl.lit("TRADE").alias("source"),
            pl.col("side").alias("entry_type"),
            "instrument_id",
            pl.col("trade_ts").alias("ts"),
            pl.coalesce("settle_date", pl.col("trade_ts").dt.date()).alias("settle_date"),
            "currency",
            settlement_amount(
                pl.when(pl.col("side").is_in(PAYING_SIDES)).then(-(gross + fees)).otherwise(gross - fees)
            ).alias("amount"),
            pl.lit(False).alias("is_external"),
        )
    )
    magnitude = pl.col("amount").abs()
    flow_entries = cash_flows.lazy().select(
        "portfolio_id",
        pl.col("flow_id").alias("entry_id"),
        pl.lit("CASH_FLOW").alias("source"),
        pl.col("type").alias("entry_type"),
        "instrument_id",
        "ts",
        pl.col("ts").dt.date().alias("settle_date"),
        "currency",
        pl.when(pl.col("type").is_in(INFLOW_TYPES)).then(magnitude).otherwise(-magnitude).alias("amount"),
        pl.col("type").is_in(EXTERNAL_TYPES).alias("is_external"),
    )
    cast = [pl.col(c).cast(t) for c, t in CASH_LEDGER_SCHEMA.items()]
    return (
        pl.concat([trade_entries.select(cast), flow_entries.select(cast)])
        .sort("portfolio_id", "ts", "entry_id")
        .collect()
    )


def cash_balances(cash_ledger: pl.DataFrame | pl.LazyFrame, as_of: datetime) -> pl.DataFrame:
    """Cash per (portfolio_id, currency) as of the moment ``as_of`` (``CASH_BALANCES_SCHEMA``).

    Only entries with ``ts <= as_of`` count. ``settled_cash`` sums those whose settle_date is on
    or before the UTC date of ``as_of``; ``pending_cash`` the rest; ``total_cash`` both.
    A naive ``as_of`` is taken as UTC.
    """
    moment, day = as_utc(as_of), as_of_date(as_of)
    settled = pl.col("settle_date") <= day
    return (
        cash_ledger.lazy()
        .filter(pl.col("ts") <= moment)
        .group_by("portfolio_id", "currency")
        .agg(
            # when/then/otherwise(0) sums the same entries as a filter, without a gather per group
            pl.when(settled).then(pl.col("amount")).otherwise(0.0).sum().alias("settled_cash"),
            pl.when(~settled).then(pl.col("amount")).otherwise(0.0).sum().alias("pending_cash"),
            pl.col("amount").sum().alias("total_cash"),
            pl.col("ts").max().alias("last_ts"),
        )
        .select([pl.col(c).cast(t) for c, t in CASH_BALANCES_SCHEMA.items()])
        .sort("portfolio_id", "currency")
        .collect()
    )
