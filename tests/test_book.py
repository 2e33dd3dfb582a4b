"""The composed state: point in time, input order, and the ledger's quarantine rows."""

from __future__ import annotations

from datetime import datetime, time, timezone

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from bench.foundation import book_inputs_from
from transforms import contract
from transforms.book import BookInputs, Market, book_moment, build_book, build_books, ledger_quarantine, to_utc


@pytest.fixture(scope="module")
def inputs(tiny_book) -> BookInputs:
    return book_inputs_from(tiny_book)


@pytest.fixture(scope="module")
def full(inputs):
    return build_book(inputs)


def test_state_as_of_a_past_day_equals_that_days_valuation(inputs, full):
    """Two independent paths: the as-of state is built from lots and positions of the trades
    known then; daily valuations from cumulative trade quantities of the full book."""
    days = full.daily_valuations["date"].unique().sort()
    for day in (days[5], days[len(days) // 2], days[-1]):
        moment = datetime.combine(day, time(23, 59, 59), tzinfo=timezone.utc)
        past = build_book(inputs, moment, with_daily=False)
        assert past.as_of == moment
        assert past.trades["trade_ts"].max() <= moment
        joined = past.portfolio_state.join(full.daily_valuations.filter(pl.col("date") == day), on="portfolio_id")
        assert joined.height > 0
        gap = (joined["total_value"] - joined["nav"]).abs().max()
        assert gap < 0.01, (day, gap)


def test_state_now_equals_last_valuation(full):
    last = full.daily_valuations.filter(pl.col("date") == pl.col("date").max())
    joined = full.portfolio_state.join(last, on="portfolio_id")
    assert joined.height == last.height
    assert (joined["total_value"] - joined["nav"]).abs().max() < 0.01
    assert (joined["cash_balance"] - joined["cash"]).abs().max() < 0.01


def test_input_row_order_does_not_matter(inputs, full):
    shuffled = BookInputs(
        trades=inputs.trades.sample(fraction=1.0, shuffle=True, seed=1),
        portfolios=inputs.portfolios.reverse(),
        instruments=inputs.instruments.sample(fraction=1.0, shuffle=True, seed=2),
        prices=inputs.prices.sample(fraction=1.0, shuffle=True, seed=3),
        fx_rates=inputs.fx_rates.reverse(),
        cash_flows=inputs.cash_flows.sample(fraction=1.0, shuffle=True, seed=4),
    )
    other = build_book(shuffled)
    for name in ("lots", "realized_pnl", "positions", "daily_valuations", "portfolio_state", "cash_ledger"):
        a, b = getattr(full, name), getattr(other, name)
        keys = [c for c in a.columns if a.schema[c] not in (pl.Float64,) and not isinstance(a.schema[c], pl.List)]
        assert_frame_equal(a.sort(keys), b.sort(keys), rel_tol=1e-12, abs_tol=1e-9)


def test_book_moment_comes_from_the_data(inputs):
    moment = book_moment(inputs)
    assert moment == to_utc(inputs.prices["date"].max())
    assert book_moment(inputs) == moment  # never the wall clock


def test_empty_book_builds_empty_state():
    empty = BookInputs(**{k: contract.landing_frame(k) for k in ("trades", "portfolios", "instruments", "prices", "fx_rates", "cash_flows")})
    book = build_book(empty)
    assert book.portfolio_state.height == 0 and book.lots.height == 0


def test_ledger_rejections_become_quarantine_rows():
    rejected = pl.DataFrame(
        {"trade_id": ["T1"], "portfolio_id": ["P1"], "instrument_id": ["I1"], "side": ["SELL"], "quantity": [5.0],
         "source_file": ["trades/a.csv"], "source_row": [7], "reason": ["SELL of 5 exceeds open LONG quantity 0"]}
    )
    rows = ledger_quarantine(rejected)
    assert rows.schema == pl.Schema(contract.QUARANTINE_SCHEMA)
    row = rows.row(0, named=True)
    assert (row["stage"], row["source_file"], row["source_row"]) == ("ledger", "trades/a.csv", 7)
    assert '"trade_id":"T1"' in row["raw"]


def test_shards_sharing_one_market_equal_the_whole_book(inputs, full):
    """Prices and fx prepared once (``Market``) and shared by shards of portfolios give the same
    tables as the whole book, now and as of a past moment."""
    ids = inputs.portfolios["portfolio_id"].sort()
    market = Market.of(inputs)
    moment = datetime.combine(full.daily_valuations["date"].unique().sort()[10], time(12), tzinfo=timezone.utc)
    for as_of, whole in ((None, full), (moment, build_book(inputs, moment))):
        parts = [build_book(inputs.for_portfolios(ids[k::2]), as_of, market=market) for k in range(2)]
        for name in ("lots", "positions", "daily_valuations", "portfolio_state"):
            joined = pl.concat([getattr(p, name) for p in parts])
            expected = getattr(whole, name)
            keys = [c for c in expected.columns if expected.schema[c] not in (pl.Float64,) and not isinstance(expected.schema[c], pl.List)]
            assert_frame_equal(joined.sort(keys), expected.sort(keys), rel_tol=1e-12, abs_tol=1e-9)


def test_books_built_shard_by_shard_equal_the_whole_book(inputs):
    """``build_books`` in shards of a few hundred trades (several shards, two at a time), with a
    portfolio that has no trades: together the same tables as one ``build_book``, every
    portfolio in exactly one shard, all at the whole book's moment."""
    idle = inputs.portfolios.head(1).with_columns(pl.lit("P-IDLE").alias("portfolio_id"))
    book = BookInputs(**{**inputs.__dict__, "portfolios": pl.concat([inputs.portfolios, idle])})
    whole = build_book(book)
    parts = list(build_books(book, shard_rows=max(1, book.trades.height // 5), workers=2))
    assert len(parts) >= 3
    assert {p.as_of for p in parts} == {whole.as_of}
    for name in ("lots", "realized_pnl", "positions", "daily_valuations", "portfolio_state", "cash_ledger"):
        joined = pl.concat([getattr(p, name) for p in parts])
        expected = getattr(whole, name)
        keys = [c for c in expected.columns if expected.schema[c] not in (pl.Float64,) and not isinstance(expected.schema[c], pl.List)]
        assert_frame_equal(joined.sort(keys), expected.sort(keys), rel_tol=1e-12, abs_tol=1e-9)
    assert "P-IDLE" in pl.concat([p.portfolio_state for p in parts])["portfolio_id"].to_list()


def test_overlapping_steps_change_nothing(inputs, full):
    alone = build_book(inputs, overlap=False)
    for name in ("trades", "lots", "realized_pnl", "cash_ledger", "positions", "daily_valuations", "portfolio_state"):
        assert_frame_equal(getattr(alone, name), getattr(full, name))


def test_rebuilding_the_same_input_gives_the_same_bits(inputs, full):
    """A rebuild reproduces every table exactly, not only within a tolerance: Polars' grouped
    float sums add in an order that changes from run to run, so the cash balances, positions
    and state sum in row order (``transforms.ordering.ordered_sum``); with Polars' sums this
    test failed."""
    names = ("trades", "lots", "realized_pnl", "cash_ledger", "positions", "daily_valuations", "portfolio_state")
    for _ in range(12):
        again = build_book(inputs)
        for name in names:
            assert getattr(again, name).equals(getattr(full, name)), name


def test_a_failure_beside_the_ledger_surfaces(inputs):
    broken = BookInputs(**{**inputs.__dict__, "cash_flows": inputs.cash_flows.drop("amount")})
    for overlap in (True, False):
        with pytest.raises(pl.exceptions.ColumnNotFoundError):
            build_book(broken, overlap=overlap)


def test_a_step_not_started_beside_is_taken_back_by_the_waiting_thread():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from transforms.book import _result_or_run_here

    ran_on = []

    def step(x):
        ran_on.append(threading.current_thread().name)
        return x * 2

    release = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="beside") as pool:
        busy = pool.submit(release.wait)
        queued = pool.submit(step, 21)  # waits behind ``busy``: taken back, run here
        assert _result_or_run_here(queued, step, 21) == 42 and queued.cancelled()
        release.set()
        busy.result()
        started = pool.submit(step, 5)
        started.result()  # done beside: its result, not run again
        assert _result_or_run_here(started, step, 5) == 10
    assert ran_on == [threading.current_thread().name, "beside_0"]
