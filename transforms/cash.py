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

from collections.abc import Iterable
from datetime import datetime

import numpy as np
import polars as pl

from transforms.contract import CASH_LEDGER_SCHEMA, CURRENCY_DECIMALS, DEFAULT_CURRENCY_DECIMALS, TS
from transforms.fx import as_of_date, as_utc
from transforms.ordering import order_by_key_then, ordered_sum, time_offsets
from transforms.prices import codes

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


def settlement_amount(
    amount: pl.Expr, currency: pl.Expr = pl.col("currency"), present: Iterable[str] | None = None
) -> pl.Expr:
    """``amount`` rounded half away from zero to the minor unit of ``currency`` (cents unless
    ``contract.CURRENCY_DECIMALS`` says otherwise).

    ``present``, when given, lists every currency the rows can hold (nulls aside); branches for
    minor units none of them use are left out (each branch is a full pass over the rows).
    """
    rounded = amount.round(DEFAULT_CURRENCY_DECIMALS, mode="half_away_from_zero")
    known = None if present is None else set(present)
    for decimals in sorted(set(CURRENCY_DECIMALS.values())):
        codes = [c for c, d in CURRENCY_DECIMALS.items() if d == decimals and (known is None or c in known)]
        if not codes:
            continue
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
    ccy = instruments.lazy().select("instrument_id", pl.col("currency")).collect()
    # trades take their currency from this (small) table, so only its currencies need rounding rules
    present = ccy["currency"].drop_nulls().cast(pl.String).unique().to_list()
    gross = pl.col("quantity") * pl.col("price")
    fees = pl.col("fees").fill_null(0.0)
    trade_entries = (
        _with_currency(trades.lazy().collect(), ccy)
        .lazy()
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
                pl.when(pl.col("side").is_in(PAYING_SIDES)).then(-(gross + fees)).otherwise(gross - fees),
                present=present,
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
    ledger = pl.concat([trade_entries.select(cast), flow_entries.select(cast)]).collect()
    return _sort_entries(ledger)


def without_trades(cash_ledger: pl.DataFrame, trade_ids: pl.Series) -> pl.DataFrame:
    """``cash_ledger`` less the entries of the trades ``trade_ids`` (and of trades with a null
    id); cash flows stay. Order is kept, so ``cash_ledger(trades)`` less the trades a ledger
    rejects is ``cash_ledger`` of the trades it accepts (a duplicated trade id is rejected in
    all its copies)."""
    if trade_ids.len() == 0 and cash_ledger["entry_id"].null_count() == 0:
        return cash_ledger
    gone = (pl.col("source") == "TRADE") & (
        pl.col("entry_id").is_null() | pl.col("entry_id").is_in(trade_ids.drop_nulls().implode())
    )
    return cash_ledger.filter(~gone)


def _with_currency(trades: pl.DataFrame, ccy: pl.DataFrame) -> pl.DataFrame:
    """``trades`` with the instrument's ``currency`` (null when unknown), as a left join would.

    Instruments are few and trades many, so each trade's instrument is coded among the
    instruments' ids (an Enum cast, ``transforms.prices.codes``) and the currency gathered by
    that code: the trade columns are not copied, as a join would. Duplicate instrument ids keep
    the plain join (it repeats the trade once per match).
    """
    known = ccy.filter(pl.col("instrument_id").is_not_null())
    if "currency" in trades.columns or known["instrument_id"].is_duplicated().any():
        return trades.join(ccy, on="instrument_id", how="left")
    code = pl.Series(codes(trades["instrument_id"], known["instrument_id"]))
    return trades.with_columns(known["currency"].gather(code.set(code < 0, None)))


def _sort_entries(ledger: pl.DataFrame) -> pl.DataFrame:
    """``ledger`` sorted by (portfolio_id, ts, entry_id), nulls first in each (polars' default).

    Sorting on two strings is the cost, so (portfolio_id, ts) is packed into one Int64 key:
    ``portfolio rank << w | 1 + offset since the earliest ts`` (offsets in the coarsest whole
    unit, ``w`` bits; rank 0 and offset 0 are kept for nulls, so they still sort first).
    ``order_by_key_then`` sorts the key and breaks its ties (entries at the same moment, about
    a third of a book) by entry_id. Books whose key does not fit in 63 bits take the plain sort.
    """
    if ledger.height == 0:
        return ledger
    ledger = ledger.rechunk()  # the lazy concat yields many chunks; gathers across them are slow
    ts = ledger["ts"].to_physical()
    if ts.null_count() == ts.len():
        return ledger.sort("portfolio_id", "ts", "entry_id")
    portfolios = ledger["portfolio_id"].unique().drop_nulls().sort()
    valid = ts.is_not_null().to_numpy()
    us = ts.fill_null(0).to_numpy()
    offset = np.zeros(us.size, dtype=np.int64)
    offset[valid] = time_offsets(us[valid]) + 1
    width = int(offset.max()).bit_length()
    if width + (portfolios.len() + 1).bit_length() > 63:
        return ledger.sort("portfolio_id", "ts", "entry_id")
    # the code of the id among the sorted ids follows the string order (null: -1, so rank 0);
    # trades come in time order, so ids are not grouped and each row is looked up
    rank = codes(ledger["portfolio_id"], portfolios) + 1
    return ledger.gather(order_by_key_then((rank << width) | offset, ledger["entry_id"]))


def cash_balances(cash_ledger: pl.DataFrame | pl.LazyFrame, as_of: datetime) -> pl.DataFrame:
    """Cash per (portfolio_id, currency) as of the moment ``as_of`` (``CASH_BALANCES_SCHEMA``).

    Only entries with ``ts <= as_of`` count. ``settled_cash`` sums those whose settle_date is on
    or before the UTC date of ``as_of``; ``pending_cash`` the rest; ``total_cash`` both.
    A naive ``as_of`` is taken as UTC.
    """
    moment, day = as_utc(as_of), as_of_date(as_of)
    settled = pl.col("settle_date") <= day
    entries = cash_ledger.lazy()
    if not isinstance(cash_ledger, pl.DataFrame) or _has_entries_after(cash_ledger["ts"], moment):
        # the current state (``as_of`` at or after the last entry) keeps every entry: the
        # filter would copy the columns for nothing (half the cost of the demo book's balances)
        entries = entries.filter(pl.col("ts") <= moment)
    return (
        entries
        .group_by("portfolio_id", "currency")
        .agg(
            # when/then/otherwise(0) sums the same entries as a filter, without a gather per group;
            # summed in row order (``ordered_sum``): the same bits on every run
            ordered_sum(pl.when(settled).then(pl.col("amount")).otherwise(0.0)).alias("settled_cash"),
            ordered_sum(pl.when(~settled).then(pl.col("amount")).otherwise(0.0)).alias("pending_cash"),
            ordered_sum(pl.col("amount")).alias("total_cash"),
            pl.col("ts").max().alias("last_ts"),
        )
        .select([pl.col(c).cast(t) for c, t in CASH_BALANCES_SCHEMA.items()])
        .sort("portfolio_id", "currency")
        .collect()
    )


def _has_entries_after(ts: pl.Series, moment: datetime) -> bool:
    """Whether some entry time is after ``moment`` or null (an entry a filter on ``ts <= moment``
    drops)."""
    latest = ts.max()
    return bool(ts.null_count()) or (latest is not None and latest > moment)
