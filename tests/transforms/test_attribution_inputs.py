"""Attribution inputs (transforms.attribution_inputs): holdings-based weights and returns per
day, checked against the valuations, and the report's invariants on the tiny book."""

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from test_exposures import _hand_book  # the hand-built book of the exposures tests (same folder)
from transforms.attribution_inputs import attribution_report, benchmark_sector_sums, portfolio_days
from transforms.attribution import sector_sums
from transforms.book import build_book
from transforms.market_returns import benchmark_holdings, benchmark_returns
from transforms.performance import returns_daily
from transforms.prices import PriceTable
from transforms.sample_book import generate_book
from transforms.valuations import holdings


def _days(inputs, bm):
    book = build_book(inputs)
    prices = PriceTable(inputs.prices)
    h = holdings(book.trades, book.cash_ledger, prices, inputs.fx_rates, inputs.instruments, inputs.portfolios)
    mine = portfolio_days(h, book.daily_valuations, inputs.instruments, 1)
    bh = benchmark_holdings(bm, prices, inputs.fx_rates, inputs.instruments, ["USD", "EUR"])
    theirs = benchmark_sector_sums(bh, inputs.portfolios, inputs.instruments, h.days[1])
    return book, mine, theirs


def test_a_day_without_trades_or_flows_returns_the_time_weighted_return():
    inputs, bm = _hand_book()
    book, (mine, _), theirs = _days(inputs, bm)
    # every trade and flow is on day 0: days 1 and 2 are pure holding days
    r_t = mine.group_by("date").agg((pl.col("weight") * pl.col("return")).sum().alias("r"), pl.col("weight").sum().alias("w")).sort("date")
    twr = returns_daily(book.daily_valuations).filter(pl.col("date").is_in(r_t["date"].implode()))
    assert r_t["w"].to_list() == pytest.approx([1.0, 1.0], abs=1e-12)
    assert r_t["r"].to_list() == pytest.approx(twr["daily_return"].to_list(), abs=1e-12)
    # the benchmark side rebuilds the benchmark's returns
    b_t = theirs.group_by("date").agg(pl.col("earned").sum(), pl.col("weight").sum()).sort("date")
    published = benchmark_returns(bm, inputs.prices, inputs.fx_rates, inputs.instruments, ["USD"])
    assert b_t["earned"].to_list() == pytest.approx(published["daily_return"].to_list(), abs=1e-15)
    assert b_t["weight"].to_list() == pytest.approx([1.0, 1.0], abs=1e-12)
    assert set(mine.filter(pl.col("instrument_id") == "CASH")["sector"]) == {"CASH"}


def test_report_effects_sum_to_the_excess_on_the_tiny_book():
    book = generate_book("tiny", 11)
    frame = {k: pl.concat([f for _, f in parts], how="diagonal_relaxed") for k, parts in book.items()}
    from transforms.book import BookInputs

    inputs = BookInputs(*(frame[k] for k in ("trades", "portfolios", "instruments", "prices", "fx_rates", "cash_flows")))
    _, portfolio, theirs = _days(inputs, frame["benchmarks"])
    mine, sums = portfolio
    # the sector sums made in numpy are those of the rows, as transforms.attribution sums them
    assert_frame_equal(sums, sector_sums(mine), check_exact=False, rel_tol=1e-13, abs_tol=1e-16)
    report = attribution_report(portfolio, theirs, inputs.prices["date"].max())
    assert report["summary"]["residual"].abs().max() < 1e-12
    sums = report["daily"].group_by("portfolio_id", "date").agg(pl.col("portfolio_weight").sum(), pl.col("benchmark_weight").sum())
    assert (sums["portfolio_weight"] - 1).abs().max() < 1e-9 and (sums["benchmark_weight"] - 1).abs().max() < 1e-9
    # contributions add up to each period's holdings-based return (compound linking)
    from transforms.performance import period_starts

    start = period_starts(inputs.prices["date"].max())["YTD"]
    ytd = report["contribution"].filter(pl.col("period") == "YTD").group_by("portfolio_id").agg(pl.col("contribution").sum())
    held = (
        mine.filter(pl.col("date") >= start)
        .group_by("portfolio_id", "date").agg((pl.col("weight") * pl.col("return")).sum().alias("r"))
        .group_by("portfolio_id").agg(((pl.col("r") + 1).product() - 1).alias("expected"))
    )
    both = ytd.join(held, on="portfolio_id")
    assert both.height == mine["portfolio_id"].n_unique()
    assert (both["contribution"] - both["expected"]).abs().max() < 1e-12
