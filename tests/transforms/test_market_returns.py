"""Instrument returns in a base currency and buy-and-hold benchmark returns
(transforms.market_returns), checked against returns worked by hand."""

from datetime import date

import polars as pl
import pytest

from transforms.market_returns import BENCHMARK_RETURNS_SCHEMA, INSTRUMENT_RETURNS_SCHEMA, benchmark_returns, instrument_returns

DAYS = [date(2026, 3, d) for d in (2, 3, 4, 5)]
INSTRUMENTS = pl.DataFrame({"instrument_id": ["A", "B", "E"], "currency": ["USD", "USD", "EUR"]})
FX = pl.DataFrame({"date": DAYS, "currency": ["EUR"] * 4, "usd_per_unit": [1.10, 1.10, 1.21, 1.21]})


def _prices(rows):
    return pl.DataFrame(rows, schema=["instrument_id", "date", "close"], orient="row")


PRICES = _prices(
    [("A", DAYS[0], 100.0), ("A", DAYS[1], 110.0), ("A", DAYS[2], 99.0), ("A", DAYS[3], 99.0),
     ("B", DAYS[0], 50.0), ("B", DAYS[1], 50.0), ("B", DAYS[2], 55.0), ("B", DAYS[3], 60.5),
     ("E", DAYS[1], 10.0), ("E", DAYS[3], 11.0)]  # E: first close on day 1, stale on day 2
)


def test_instrument_returns_combine_price_and_currency():
    out = instrument_returns(PRICES, FX, INSTRUMENTS, ["EUR", "USD"])
    assert out.schema == pl.Schema(INSTRUMENT_RETURNS_SCHEMA)
    a_usd = out.filter((pl.col("instrument_id") == "A") & (pl.col("base_currency") == "USD"))
    assert a_usd["daily_return"].to_list()[0] is None
    assert a_usd["daily_return"].to_list()[1:] == pytest.approx([0.1, -0.1, 0.0])
    # A in EUR: the dollar gains 10% against the euro on day 2, so a -10% day is -18.18% in EUR
    a_eur = out.filter((pl.col("instrument_id") == "A") & (pl.col("base_currency") == "EUR"))
    assert a_eur["daily_return"].to_list()[1:] == pytest.approx([0.1, 99 / 1.21 / (110 / 1.10) - 1, 0.0])
    # E in USD: no close before day 1 (no rows), a stale close on day 2 moves with the euro only
    e_usd = out.filter((pl.col("instrument_id") == "E") & (pl.col("base_currency") == "USD"))
    assert e_usd["date"].to_list() == DAYS[1:]
    assert e_usd["value"].to_list() == pytest.approx([11.0, 12.1, 13.31])
    assert e_usd["daily_return"].to_list()[1:] == pytest.approx([0.1, 0.1])
    assert not out.select(pl.col("daily_return").is_nan().any()).item()


def _benchmarks(rows):
    return pl.DataFrame(rows, schema=["benchmark_id", "instrument_id", "weight", "effective_date"], orient="row")


def test_benchmark_baskets_drift_with_prices_and_are_replaced_on_their_effective_date():
    # BM: 50/50 A and B bought at day 0's close; effective on day 2 (4 March), all B
    bm = _benchmarks([("BM", "A", 0.5, DAYS[0]), ("BM", "B", 0.5, DAYS[0]), ("BM", "B", 1.0, DAYS[2])])
    out = benchmark_returns(bm, PRICES, FX, INSTRUMENTS, ["USD"])
    assert out.schema == pl.Schema(BENCHMARK_RETURNS_SCHEMA)
    # units 0.005 A and 0.01 B: levels 1.0, 1.05 (0.55 + 0.5), then the new basket from the
    # close of day 1: all B, +10% and +10%
    assert out["date"].to_list() == DAYS[1:]
    assert out["daily_return"].to_list() == pytest.approx([0.05, 0.1, 0.1])
    assert out["effective_date"].to_list() == [DAYS[0], DAYS[2], DAYS[2]]
    assert out["note"].null_count() == 3
    # held, the basket drifts: a third day under the first basket would weigh A at 0.55/1.05
    held = benchmark_returns(bm.filter(pl.col("effective_date") == DAYS[0]), PRICES, FX, INSTRUMENTS, ["USD"])
    level = [1.0, 1.05, 0.005 * 99 + 0.01 * 55, 0.005 * 99 + 0.01 * 60.5]
    assert held["daily_return"].to_list() == pytest.approx([level[k + 1] / level[k] - 1 for k in range(3)])


def test_a_basket_that_does_not_sum_to_one_or_lacks_a_price_is_flagged_not_used():
    bm = _benchmarks([("BAD", "A", 0.5, DAYS[0]), ("BAD", "B", 0.4, DAYS[0]), ("LATE", "E", 1.0, DAYS[0])])
    out = benchmark_returns(bm, PRICES, FX, INSTRUMENTS, ["USD"])
    bad = out.filter(pl.col("benchmark_id") == "BAD")
    assert bad["daily_return"].null_count() == 3
    assert set(bad["note"]) == {"benchmark weights sum to 0.9, not 1"}
    late = out.filter(pl.col("benchmark_id") == "LATE")  # E has no close when the basket is bought
    assert late["daily_return"].null_count() == 3 and set(late["note"]) == {"a benchmark constituent has no value when the basket is bought"}
    empty = benchmark_returns(bm.clear(), PRICES, FX, INSTRUMENTS, ["USD"])
    assert empty.height == 0 and empty.schema == pl.Schema(BENCHMARK_RETURNS_SCHEMA)
