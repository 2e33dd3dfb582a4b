"""The whole portfolio state of a book, composed from the ledger, cash, positions, valuations
and state transforms; and the same state as of any past moment.

This is the one place where the silver transforms are chained, so the Dagster assets, the
``portfolio state --as-of`` command, the notebooks and the benchmark all compute the state the
same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timezone
from functools import partial

import polars as pl

from transforms import contract
from transforms.cash import cash_balances, cash_ledger, without_trades
from transforms.fx import Currencies, UsdTable, as_utc, usd_table
from transforms.lots import build_ledger
from transforms.positions import positions
from transforms.prices import PriceTable, price_table
from transforms.shards import SHARD_WORKERS, InPlace, map_shards, portfolio_shards, shared_pool
from transforms.state import portfolio_state, realized_by_portfolio
from transforms.valuations import daily_valuations


@dataclass(frozen=True)
class BookInputs:
    """The bronze frames the state is built from (contract columns; extra columns are kept)."""

    trades: pl.DataFrame
    portfolios: pl.DataFrame
    instruments: pl.DataFrame
    prices: pl.DataFrame
    fx_rates: pl.DataFrame
    cash_flows: pl.DataFrame

    def as_of(self, moment: datetime) -> "BookInputs":
        """The inputs known at ``moment``: trades and flows up to it, prices and fx to its date."""
        moment = to_utc(moment)
        day = moment.date()
        return replace(
            self,
            trades=self.trades.filter(pl.col("trade_ts") <= moment),
            cash_flows=self.cash_flows.filter(pl.col("ts") <= moment),
            prices=self.prices.filter(pl.col("date") <= day),
            fx_rates=self.fx_rates.filter(pl.col("date") <= day),
        )


    def for_portfolios(self, portfolio_ids: pl.Series) -> "BookInputs":
        """The inputs of some portfolios only (a shard): their trades, flows and records;
        market and reference data stay whole."""
        ids = portfolio_ids.implode()
        return replace(
            self,
            trades=self.trades.filter(pl.col("portfolio_id").is_in(ids)),
            portfolios=self.portfolios.filter(pl.col("portfolio_id").is_in(ids)),
            cash_flows=self.cash_flows.filter(pl.col("portfolio_id").is_in(ids)),
        )


@dataclass(frozen=True)
class Market:
    """The prices and fx of a book, prepared once (``PriceTable``, ``UsdTable``).

    They are the same for every portfolio, so a build shard by shard shares one ``Market``
    rather than preparing them again for each shard."""

    prices: PriceTable
    fx: UsdTable

    @classmethod
    def of(cls, inputs: BookInputs) -> "Market":
        """Prepare the prices and fx rates of ``inputs``."""
        return cls(price_table(inputs.prices), usd_table(inputs.fx_rates))

    def until(self, day: date) -> "Market":
        """The market known at the end of ``day``: prices and fx quoted on or before it."""
        return Market(self.prices.until(day), self.fx.until(day))


class _Tracked:
    """An executor that remembers what was submitted to it (to wait for it on an error)."""

    def __init__(self, executor: Executor) -> None:
        self.executor, self.submitted = executor, []

    def submit(self, fn, *args) -> Future:
        future = self.executor.submit(fn, *args)
        self.submitted.append(future)
        return future


@dataclass(frozen=True)
class Book:
    """Every silver table of a book at one moment ``as_of``."""

    as_of: datetime
    trades: pl.DataFrame  # accepted trades only
    rejected_trades: pl.DataFrame  # trades the ledger refused, with a reason
    lots: pl.DataFrame
    realized_pnl: pl.DataFrame
    cash_ledger: pl.DataFrame
    positions: pl.DataFrame
    daily_valuations: pl.DataFrame | None
    portfolio_state: pl.DataFrame


def _result_or_run_here(future: Future, fn, *args):
    """The result of the task ``future`` runs (``fn(*args)``), or, when it has not started yet
    because its thread is still busy, ``fn(*args)`` run on this thread instead."""
    return fn(*args) if future.cancel() else future.result()


def to_utc(moment: datetime | date) -> datetime:
    """A timezone-aware UTC datetime; a naive one is taken as UTC, a date as its last microsecond."""
    if not isinstance(moment, datetime):
        return datetime.combine(moment, time.max, tzinfo=timezone.utc)
    return as_utc(moment)


def moment_of(last_price_date: date | None, *last_events: datetime | None) -> datetime:
    """The moment the current state describes: the end of ``last_price_date``, or the latest of
    ``last_events`` (last trade, last cash flow) if one is later; 1970 for an empty book.
    Taken from the data, never the wall clock, so a rebuild of the same input gives the same
    state."""
    candidates = [to_utc(m) for m in (last_price_date, *last_events) if m is not None]
    return max(candidates) if candidates else datetime(1970, 1, 1, tzinfo=timezone.utc)


def book_moment(inputs: BookInputs) -> datetime:
    """``moment_of`` the last price date, trade and cash flow of ``inputs``."""
    return moment_of(inputs.prices["date"].max(), inputs.trades["trade_ts"].max(), inputs.cash_flows["ts"].max())


def build_book(
    inputs: BookInputs,
    as_of: datetime | None = None,
    *,
    with_daily: bool = True,
    market: Market | None = None,
    overlap: bool = True,
) -> Book:
    """Build the state of ``inputs`` as of ``as_of`` (default: ``book_moment(inputs)``).

    Steps: ledger (lots, realised P&L, oversell rejections) → cash ledger from the accepted
    trades and the cash flows → positions and portfolio state at ``as_of`` → daily valuations
    through the last price date on or before ``as_of`` (skipped when ``with_daily`` is false,
    e.g. for a point-in-time query that needs only the state).

    ``market``: the prepared prices and fx of a book ``inputs`` is a shard of
    (``Market.of(book)``), used instead of preparing ``inputs.prices`` and ``inputs.fx_rates``;
    with ``as_of``, only what it knew by then is used.

    ``overlap``: run the steps that do not wait for each other on a second, kept thread (fx
    rates, cash entries and the price table beside the ledger, part of its replay and of its
    output frames, the daily valuations and the realised P&L per portfolio beside the
    positions and state); the tables are the same either way.
    Pass False when the cores are already busy, e.g. when shards are built at once: there it
    slowed the standard book's rebuild from 9.8 s to 14.0 s (one run each).
    """
    if as_of is not None:
        inputs = inputs.as_of(as_of)
    moment = to_utc(as_of) if as_of is not None else book_moment(inputs)
    if market is not None and as_of is not None:
        market = market.until(moment.date())
    beside = _Tracked(shared_pool("book", 1) if overlap else InPlace())
    try:
        # beside the ledger: the fx rates, the cash entries of every trade (those of the trades
        # the ledger rejects are dropped after it) and the price table; the ledger's replay
        # takes that thread's help once it is free (``transforms.lots._replay``)
        preparing_fx = beside.submit(usd_table, inputs.fx_rates) if market is None else None
        all_cash = beside.submit(cash_ledger, inputs.trades, inputs.cash_flows, inputs.instruments)
        preparing_prices = beside.submit(price_table, inputs.prices) if market is None else None
        ledger = build_ledger(inputs.trades, inputs.portfolios, executor=beside.executor)
        cash = without_trades(all_cash.result(), ledger.rejected_trades["trade_id"])
        fx = market.fx if market is not None else preparing_fx.result()
        prices = market.prices if market is not None else preparing_prices.result()
        # beside the positions and state: the daily valuations (the longest step left), then
        # the realised P&L per portfolio, which this thread takes back if it gets to the state
        # first (the two steps' costs swing by half from run to run on a shared machine)
        daily = (
            beside.submit(
                partial(daily_valuations, trade_codes=ledger.accepted_codes),
                ledger.accepted_trades, cash, prices, fx, inputs.instruments, inputs.portfolios,
            )
            if with_daily
            else None
        )
        book_currencies = Currencies(inputs.instruments, inputs.portfolios)
        realized_step = (
            partial(realized_by_portfolio, codes=ledger.realized_codes, currencies=book_currencies),
            ledger.realized_pnl, inputs.portfolios, inputs.instruments, moment, fx,
        )
        realized = beside.submit(*realized_step)
        balances = cash_balances(cash, moment)
        pos = positions(
            ledger.lots, cash, prices, fx, inputs.instruments, inputs.portfolios, moment, balances=balances,
            currencies=book_currencies, lot_codes=ledger.lot_codes,
        )
        state = portfolio_state(
            pos, ledger.realized_pnl, inputs.portfolios, moment, fx,
            instruments=inputs.instruments, cash_ledger=cash, balances=balances,
            realized=_result_or_run_here(realized, *realized_step), currencies=book_currencies,
        )
        daily = daily.result() if daily is not None else None
    except BaseException:  # what runs beside ends before the error is raised
        wait(beside.submitted)
        raise
    return Book(
        as_of=moment,
        trades=ledger.accepted_trades,
        rejected_trades=ledger.rejected_trades,
        lots=ledger.lots,
        realized_pnl=ledger.realized_pnl,
        cash_ledger=cash,
        positions=pos,
        daily_valuations=daily,
        portfolio_state=state,
    )


def ledger_quarantine(rejected_trades: pl.DataFrame) -> pl.DataFrame:
    """Ledger rejections (oversells, unknown lots) as quarantine rows (stage ``ledger``)."""
    raw_columns = [c for c in contract.LANDING_SCHEMAS["trades"] if c in rejected_trades.columns]

    def lineage(name: str) -> pl.Expr:  # trades built in memory (tests, notebooks) have none
        dtype = contract.LINEAGE[name]
        value = pl.col(name) if name in rejected_trades.columns else pl.lit(None, dtype)
        return value.cast(dtype).alias(name)

    frame = rejected_trades.select(
        pl.lit("trades").alias("kind"),
        lineage("source_file"),
        lineage("source_sha256"),
        lineage("source_row"),
        pl.lit(None, pl.String).alias("column"),
        pl.col("reason"),
        pl.struct(pl.col(raw_columns).cast(pl.String)).struct.json_encode().alias("raw"),
        pl.lit("ledger").alias("stage"),
        pl.lit(None, pl.String).alias("run_id"),
        pl.lit(None, contract.TS).alias("quarantined_at"),
    )
    return frame.cast(contract.QUARANTINE_SCHEMA)


def book_shards(inputs: BookInputs, shard_rows: int) -> list[pl.Series]:
    """The portfolio shards ``build_books`` builds: ``portfolio_shards`` sized by trades (about
    ``shard_rows`` each), every portfolio of ``inputs.portfolios`` in exactly one, even one
    with no trades."""
    return portfolio_shards(pl.concat([inputs.trades.select("portfolio_id"), inputs.portfolios.select("portfolio_id")]), shard_rows)


def build_books(
    inputs: BookInputs, as_of: datetime | None = None, *, shard_rows: int, workers: int = SHARD_WORKERS
) -> Iterator[Book]:
    """``build_book`` shard by shard of portfolios (``book_shards``), ``workers`` shards at a
    time; the books in shard order.

    This is how the pipeline's ledger builds many portfolios (``assets.state``): memory holds a
    few shards, not the whole book, and the prices and fx are prepared once for all shards
    (``Market``); a single shard prepares them itself, beside its ledger. The steps of one
    build share a second core only when fewer shards than workers are built. Every shard is
    described at the same moment: ``as_of``, default ``book_moment(inputs)``."""
    as_of = as_of if as_of is not None else book_moment(inputs)
    ids = book_shards(inputs, shard_rows)
    if len(ids) <= 1:
        yield build_book(inputs, as_of)
        return
    market = Market.of(inputs)
    overlap = len(ids) < workers
    yield from map_shards(lambda s: build_book(inputs.for_portfolios(s), as_of, market=market, overlap=overlap), ids, workers)

