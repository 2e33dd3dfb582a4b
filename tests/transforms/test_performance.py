"""Daily time-weighted returns and return statistics (transforms.performance), checked by hand
and against empyrical (the maintained fork, empyrical-reloaded) to 1e-8."""

from datetime import date, timedelta

import empyrical
import numpy as np
import pandas as pd
import polars as pl
import pytest

from transforms.contract import PERFORMANCE_SCHEMA, RETURNS_DAILY_SCHEMA
from transforms.conventions import PERIODS_PER_YEAR, risk_free_per_period
from transforms.market_returns import BENCHMARK_RETURNS_SCHEMA
import transforms.performance as performance_module
from transforms.performance import (
    NAV_UNKNOWN,
    NO_CAPITAL,
    NO_IRR,
    NO_RETURNS,
    PERIODS,
    PREVIOUS_NAV_UNKNOWN,
    SHORT_HISTORY,
    money_weighted_returns,
    performance,
    period_starts,
    period_statistics,
    return_statistics,
    returns_daily,
    xirr,
)

D0 = date(2025, 3, 3)


def _valuations(rows):
    """(portfolio, day offset, nav, net_flows) -> daily valuation rows."""
    return pl.DataFrame(
        {
            "portfolio_id": [r[0] for r in rows],
            "date": [D0 + timedelta(days=r[1]) for r in rows],
            "base_currency": ["USD"] * len(rows),
            "nav": [r[2] for r in rows],
            "net_flows": [r[3] for r in rows],
        },
        schema_overrides={"nav": pl.Float64, "net_flows": pl.Float64},
    )


def test_flows_arrive_at_the_start_of_the_day_and_returns_chain_link():
    # deposit 1,000 and hold it flat; +10%; 500 more at the start of day 3 then 1,700 at the
    # close (1,700 / 1,600 - 1); a 200 withdrawal and 1,500 left (no gain)
    out = returns_daily(_valuations([("P", 0, 1000.0, 1000.0), ("P", 1, 1100.0, 0.0), ("P", 2, 1700.0, 500.0), ("P", 3, 1500.0, -200.0)]))
    assert out.schema == pl.Schema(RETURNS_DAILY_SCHEMA)
    assert out["capital"].to_list() == [1000.0, 1000.0, 1600.0, 1500.0]
    assert out["daily_return"].to_list() == pytest.approx([0.0, 0.1, 0.0625, 0.0], abs=1e-15)
    assert out["growth"].to_list() == pytest.approx([1.0, 1.1, 1.1 * 1.0625, 1.1 * 1.0625], abs=1e-15)
    assert out["return_note"].null_count() == out.height


def test_days_without_capital_or_nav_are_flagged_not_nan():
    out = returns_daily(
        _valuations(
            [
                ("P", 0, 0.0, 0.0),  # valued (a trade settled later) but no money in yet
                ("P", 1, 500.0, 500.0),
                ("P", 2, None, 0.0),  # a value without an fx rate
                ("P", 3, 520.0, 0.0),
                ("P", 4, 260.0, 0.0),
            ]
        )
    )
    assert out["return_note"].to_list() == [NO_CAPITAL, None, NAV_UNKNOWN, PREVIOUS_NAV_UNKNOWN, None]
    assert out["daily_return"].to_list()[:4] == [None, 0.0, None, None]
    assert out["daily_return"][4] == pytest.approx(-0.5)
    assert out["growth"].to_list() == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.5])
    assert not out.select(pl.col("daily_return", "growth").is_nan().any()).row(0)[0]


def test_portfolios_are_independent_and_row_order_does_not_matter():
    rows = [("A", 0, 100.0, 100.0), ("A", 1, 110.0, 0.0), ("B", 0, 50.0, 50.0), ("B", 1, 40.0, 0.0), ("A", 2, 99.0, 0.0)]
    out = returns_daily(_valuations(rows))
    shuffled = returns_daily(_valuations(rows[::-1]))
    assert out.equals(shuffled)
    assert out.filter(pl.col("portfolio_id") == "B")["daily_return"].to_list() == pytest.approx([0.0, -0.2])
    assert out.filter(pl.col("portfolio_id") == "A")["daily_return"].to_list() == pytest.approx([0.0, 0.1, -0.1])


def max_drawdown(returns):
    s = return_statistics(np.array(returns))
    return s["max_drawdown"], s["drawdown_days"]


def test_max_drawdown_and_its_duration_by_hand():
    # wealth 1.1, 0.55, 0.66, 0.99, 1.089: the peak 1.1 is never regained (4 days under water)
    mdd, days = max_drawdown([0.1, -0.5, 0.2, 0.5, 0.1])
    assert mdd == pytest.approx(0.55 / 1.1 - 1) and days == 4
    # a first-day loss is a drawdown from the starting value 1: wealth 0.9, 0.945, 1.0395 (a
    # new peak), 1.029: under water on days 1-2, then day 4
    mdd, days = max_drawdown([-0.1, 0.05, 0.1, -0.01])
    assert mdd == pytest.approx(-0.1) and days == 2
    assert max_drawdown([0.01, 0.02]) == (0.0, 0)


@pytest.fixture(scope="module")
def series():
    rng = np.random.default_rng(11)
    index = pd.bdate_range("2023-01-02", periods=600)
    bench = rng.normal(0.0003, 0.011, index.size)
    port = 0.0001 + 1.2 * bench + rng.normal(0, 0.006, index.size)
    return pd.Series(port, index=index), pd.Series(bench, index=index)


@pytest.mark.parametrize("annual_rf", [0.0, 0.04])
def test_statistics_agree_with_empyrical(series, annual_rf):
    port, bench = series
    rf = risk_free_per_period(annual_rf)
    s = return_statistics(port.to_numpy(), bench.to_numpy(), rf)
    alpha, beta = empyrical.alpha_beta(port, bench, risk_free=rf)
    expected = {
        "cumulative_return": empyrical.cum_returns_final(port),
        "annualised_return": empyrical.annual_return(port),
        "volatility": empyrical.annual_volatility(port),
        "sharpe": empyrical.sharpe_ratio(port, risk_free=rf),
        "sortino": empyrical.sortino_ratio(port, required_return=rf),
        "max_drawdown": empyrical.max_drawdown(port),
        "calmar": empyrical.calmar_ratio(port),
        "beta": beta,
        "alpha": alpha,
        # empyrical's excess Sharpe is the per-period information ratio
        "information_ratio": empyrical.excess_sharpe(port, bench) * np.sqrt(PERIODS_PER_YEAR),
    }
    for key, value in expected.items():
        assert s[key] == pytest.approx(float(value), rel=1e-8, abs=1e-12), key
    active = port - bench
    assert s["tracking_error"] == pytest.approx(active.std(ddof=1) * np.sqrt(PERIODS_PER_YEAR), rel=1e-12)
    assert s["days"] == port.size


def test_statistics_that_cannot_be_computed_are_none():
    empty = return_statistics(np.array([]))
    assert empty["cumulative_return"] is None and empty["volatility"] is None and empty["sharpe"] is None
    flat = return_statistics(np.zeros(30), np.zeros(30))
    assert flat["cumulative_return"] == 0.0 and flat["volatility"] == 0.0
    assert all(flat[k] is None for k in ("sharpe", "sortino", "calmar", "beta", "alpha", "tracking_error", "information_ratio"))
    one = return_statistics(np.array([0.02]))
    assert one["volatility"] is None and one["annualised_return"] == pytest.approx(1.02**252 - 1)
    wiped_out = return_statistics(np.array([0.1, -1.0]))
    assert wiped_out["cumulative_return"] == -1.0 and wiped_out["annualised_return"] is None
    with pytest.raises(ValueError, match="benchmark has 2 returns"):
        return_statistics(np.zeros(3), np.zeros(2))


def test_risk_free_per_period_compounds_to_the_annual_rate():
    assert (1 + risk_free_per_period(0.05)) ** PERIODS_PER_YEAR == pytest.approx(1.05, rel=1e-14)
    with pytest.raises(ValueError, match="above -100%"):
        risk_free_per_period(-1.0)


def test_period_starts():
    starts = period_starts(date(2026, 10, 30))
    assert starts == {
        "MTD": date(2026, 10, 1), "QTD": date(2026, 10, 1), "YTD": date(2026, 1, 1),
        "1Y": date(2025, 10, 31), "3Y": date(2023, 10, 31), "ITD": None,
    }
    assert period_starts(date(2028, 2, 29))["1Y"] == date(2027, 3, 1)
    assert period_starts(date(2026, 5, 15))["QTD"] == date(2026, 4, 1)


def test_xirr_matches_excels_published_example():
    # Microsoft's XIRR documentation: -10,000 on 1 Jan 2008; 2,750 on 1 Mar 2008; 4,250 on
    # 30 Oct 2008; 3,250 on 15 Feb 2009; 2,750 on 1 Apr 2009 -> 0.373362535
    days = np.array([0] + [(d - date(2008, 1, 1)).days for d in (date(2008, 3, 1), date(2008, 10, 30), date(2009, 2, 15), date(2009, 4, 1))])
    amounts = np.array([10_000.0, -2_750.0, -4_250.0, -3_250.0, -2_750.0])  # money in is positive
    rate = xirr(days / 365.0, amounts, days[-1] / 365.0, 0.0)
    # Excel iterates until its result is within 0.000001% (it prints 0.373362535)
    assert rate == pytest.approx(0.373362535, abs=1e-8)
    assert np.sum(amounts * (1 + rate) ** (-days / 365.0)) == pytest.approx(0.0, abs=1e-8)
    assert xirr(np.array([0.0]), np.array([0.0]), 1.0, 5.0) is None  # no money in
    assert xirr(np.array([0.0]), np.array([100.0]), 1.0, -5.0) is None  # no rate loses more than all


def test_money_weighted_return_of_a_period_with_flows():
    # 1,000 at the start; 500 more at the start of day 100; 1,650 at the end of day 365
    start = date(2025, 1, 1)
    rows = pl.DataFrame(
        {
            "portfolio_id": ["P"] * 3,
            "date": [start, start + timedelta(days=100), start + timedelta(days=364)],
            "nav": [1000.0, 1520.0, 1650.0],
            "net_flows": [1000.0, 500.0, 0.0],
            "capital": [1000.0, 1510.0, 1520.0],
        }
    )
    out = money_weighted_returns(rows, ["portfolio_id"])
    x = out["money_weighted_return_annualised"][0]
    # independent check: the rate grows both deposits to the end value
    assert 1000 * (1 + x) ** 1.0 + 500 * (1 + x) ** (265 / 365) == pytest.approx(1650.0, rel=1e-12)
    assert out["money_weighted_return"][0] == pytest.approx(x, rel=1e-12)  # exactly one year
    assert out["mwr_note"][0] is None


def _daily(pid, start, returns, benchmark="BM", base="USD"):
    """returns_daily-like rows for one portfolio: 1,000 deposited on the first day, then ``returns``."""
    navs = [1000.0]
    for r in returns:
        navs.append(navs[-1] * (1 + r))
    calendar = pl.date_range(start, start + timedelta(days=3 * len(navs)), "1d", eager=True)
    days = calendar.filter(calendar.dt.weekday() <= 5).head(len(navs))  # weekdays
    frame = pl.DataFrame({"portfolio_id": pid, "date": days, "base_currency": base, "nav": navs})
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(1000.0).otherwise(0.0).alias("net_flows"))
    return returns_daily(frame)


def test_performance_periods_against_the_statistics_of_the_same_days():
    rng = np.random.default_rng(5)
    r = rng.normal(0.0004, 0.01, 800)
    b = rng.normal(0.0003, 0.009, 800)
    daily = pl.concat([_daily("P", date(2023, 6, 1), r), _daily("YOUNG", date(2026, 3, 2), r[:100])])
    days = daily.filter(pl.col("portfolio_id") == "P")["date"]
    bench = pl.DataFrame({"benchmark_id": "BM", "base_currency": "USD", "date": days, "effective_date": days[0],
                          "daily_return": np.r_[np.nan, b], "note": None}, nan_to_null=True,
                         schema_overrides={"note": pl.String})
    portfolios = pl.DataFrame({"portfolio_id": ["P", "YOUNG"], "benchmark_id": ["BM", None]})
    as_of = daily["date"].max()  # the young portfolio's last day: periods end there for both
    out = performance(daily, portfolios, bench, risk_free=risk_free_per_period(0.03))
    assert out.schema == pl.Schema(PERFORMANCE_SCHEMA)
    assert out.height == 12 and out["period"].to_list()[:6] == list(PERIODS)
    p = {row["period"]: row for row in out.filter(pl.col("portfolio_id") == "P").iter_rows(named=True)}
    # ITD: the first day (the deposit, 0%) and the 800 returns; its statistics are those of the series
    itd = return_statistics(np.r_[0.0, r][1:], b, risk_free_per_period(0.03))
    one = p["ITD"]
    assert one["days"] == 801
    for key in ("volatility", "sharpe", "sortino", "max_drawdown"):
        assert one[key] == pytest.approx(return_statistics(np.r_[0.0, r], None, risk_free_per_period(0.03))[key], rel=1e-9)
    assert one["beta"] == pytest.approx(itd["beta"], rel=1e-9)  # the first day has no benchmark return
    assert one["cumulative_return"] == pytest.approx(np.prod(1 + r) - 1, rel=1e-12)
    assert one["money_weighted_return"] == pytest.approx(one["cumulative_return"], rel=1e-9)  # no flow after the start
    # 1Y: the days after as_of minus one year, annualised
    year = [k for k, d in enumerate(days) if d > date(as_of.year - 1, as_of.month, as_of.day)]
    expected = np.prod(1 + np.r_[0.0, r][year]) - 1
    assert p["1Y"]["cumulative_return"] == pytest.approx(expected, rel=1e-12)
    assert p["1Y"]["annualised_return"] is not None
    # under a year: not annualised (GIPS)
    assert p["YTD"]["annualised_return"] is None and p["YTD"]["calmar"] is None and p["YTD"]["cumulative_return"] is not None
    young = {row["period"]: row for row in out.filter(pl.col("portfolio_id") == "YOUNG").iter_rows(named=True)}
    assert young["1Y"]["note"] == SHORT_HISTORY and young["1Y"]["cumulative_return"] is None
    assert young["ITD"]["beta"] is None and young["ITD"]["benchmark_cumulative_return"] is None
    assert young["ITD"]["cumulative_return"] == pytest.approx(np.prod(1 + r[:100]) - 1, rel=1e-12)


def test_a_period_of_flagged_days_has_no_figures_and_says_why():
    daily = returns_daily(_valuations([("Z", 0, 0.0, 0.0), ("Z", 1, 0.0, 0.0)]))
    out = performance(daily, pl.DataFrame({"portfolio_id": ["Z"], "benchmark_id": [None]}, schema_overrides={"benchmark_id": pl.String}),
                      pl.DataFrame(schema=BENCHMARK_RETURNS_SCHEMA))
    # 1Y and 3Y: a two-day history is shorter than the period; the others have no return
    assert out["note"].to_list() == [NO_RETURNS] * 3 + [SHORT_HISTORY] * 2 + [NO_RETURNS]
    assert out["days_without_return"].to_list() == [2] * 6
    assert out.select(pl.col(pl.Float64).is_not_null().any()).row(0) == (False,) * len([t for t in PERFORMANCE_SCHEMA.values() if t == pl.Float64])


def _book(rng, n_portfolios, n_days, with_benchmark):
    """Daily return rows of several portfolios (the last one without a benchmark)."""
    days = pl.Series(pd.bdate_range("2024-01-01", periods=n_days).date.tolist(), dtype=pl.Date)
    frames = []
    for k in range(n_portfolios):
        bench = rng.normal(0.0003, 0.01, n_days)
        frames.append(
            pl.DataFrame(
                {
                    "portfolio_id": f"P{k}",
                    "date": days,
                    "daily_return": 0.0002 + 0.9 * bench + rng.normal(0, 0.005, n_days),
                    "benchmark_return": bench if with_benchmark(k) else None,
                },
                schema_overrides={"benchmark_return": pl.Float64},
            )
        )
    return pl.concat(frames)


def test_period_statistics_of_many_portfolios_agree_with_empyrical_per_portfolio():
    rng = np.random.default_rng(21)
    rows = _book(rng, 4, 300, lambda k: k < 3)
    # a few days without a benchmark return, and the rows in no particular order
    rows = rows.with_columns(pl.when(pl.int_range(pl.len()) % 37 == 5).then(None).otherwise("benchmark_return").alias("benchmark_return"))
    rf = risk_free_per_period(0.02)
    out = period_statistics(rows.sample(fraction=1.0, shuffle=True, seed=3), ["portfolio_id"], rf)
    assert out["portfolio_id"].to_list() == ["P0", "P1", "P2", "P3"]
    for row in out.iter_rows(named=True):
        part = rows.filter(pl.col("portfolio_id") == row["portfolio_id"])
        r = pd.Series(part["daily_return"].to_numpy(), index=pd.DatetimeIndex(part["date"].to_list()))
        b = pd.Series(part["benchmark_return"].to_numpy(), index=r.index)
        both = b.notna()
        assert row["days"] == 300
        assert row["sharpe"] == pytest.approx(empyrical.sharpe_ratio(r, risk_free=rf), rel=1e-8)
        assert row["sortino"] == pytest.approx(empyrical.sortino_ratio(r, required_return=rf), rel=1e-8)
        assert row["max_drawdown"] == pytest.approx(empyrical.max_drawdown(r), rel=1e-8)
        assert row["calmar"] == pytest.approx(empyrical.calmar_ratio(r), rel=1e-8)
        if row["portfolio_id"] == "P3":
            assert row["beta"] is None and row["benchmark_cumulative_return"] is None and row["information_ratio"] is None
            continue
        alpha, beta = empyrical.alpha_beta(r[both], b[both], risk_free=rf)
        assert row["beta"] == pytest.approx(beta, rel=1e-8)
        assert row["alpha"] == pytest.approx(alpha, rel=1e-8)
        assert row["benchmark_cumulative_return"] == pytest.approx(empyrical.cum_returns_final(b[both]), rel=1e-8)
        assert row["information_ratio"] == pytest.approx(empyrical.excess_sharpe(r[both], b[both]) * np.sqrt(PERIODS_PER_YEAR), rel=1e-8)


def test_period_statistics_groups_are_independent_whatever_the_row_order():
    # P0 ends under water and P1 starts under water: their runs must not join (2 days each)
    rows = pl.DataFrame(
        {
            "portfolio_id": ["P0"] * 3 + ["P1"] * 4,
            "period": ["ITD"] * 7,
            "date": [D0 + timedelta(days=d) for d in (0, 1, 2, 0, 1, 2, 3)],
            "daily_return": [0.1, -0.2, 0.05, -0.1, -0.1, 0.5, 0.01],
        }
    )
    out = period_statistics(rows, ["portfolio_id", "period"])
    assert out["drawdown_days"].to_list() == [2, 2]
    for row in out.iter_rows(named=True):
        alone = return_statistics(rows.filter(pl.col("portfolio_id") == row["portfolio_id"])["daily_return"].to_numpy())
        assert {k: row[k] for k in alone} == alone
    # sorted, shuffled, or day by day (the order of a cross join with the periods): the same
    book = _book(np.random.default_rng(8), 5, 120, lambda k: k % 2 == 0).with_columns(
        pl.when(pl.col("date").dt.month() == 2).then(pl.lit("A")).otherwise(pl.lit("B")).alias("period")
    )
    keys = ["portfolio_id", "period"]
    expected = period_statistics(book, keys)
    assert expected.height == 10
    for order in (book.sample(fraction=1.0, shuffle=True, seed=1), book.sort("date", "portfolio_id"), book.sort("period")):
        got = period_statistics(order, keys)
        assert got.select(*keys, "days", "first_date", "last_date", "drawdown_days").equals(
            expected.select(*keys, "days", "first_date", "last_date", "drawdown_days")
        )
        for c in ("cumulative_return", "volatility", "sharpe", "sortino", "max_drawdown", "beta", "alpha", "information_ratio"):
            np.testing.assert_allclose(got[c].to_numpy(), expected[c].to_numpy(), rtol=1e-12, atol=1e-15, err_msg=c)
            assert got[c].null_count() == expected[c].null_count() == (0 if c not in ("beta", "alpha", "information_ratio") else 4)


def _flow_rows(pid, offsets, flows, navs, start_value):
    """Rows of one group for money_weighted_returns: days at ``offsets`` from D0, the first
    day's capital = start value + its flow."""
    return pl.DataFrame(
        {
            "portfolio_id": pid,
            "date": [D0 + timedelta(days=int(d)) for d in offsets],
            "nav": navs,
            "net_flows": flows,
            "capital": [start_value + flows[0]] + [0.0] * (len(offsets) - 1),
        },
        schema_overrides={"nav": pl.Float64, "net_flows": pl.Float64, "capital": pl.Float64},
    )


def _expected_xirr(part):
    """The rule of money_weighted_returns for one group, with the one-series ``xirr``."""
    days = np.array([(d - part["date"][0]).days for d in part["date"]], dtype=np.float64)
    if part["nav"].null_count():
        return None, NAV_UNKNOWN
    start = part["capital"][0] - part["net_flows"][0]
    x = xirr(np.r_[0.0, days / 365.0], np.r_[start, part["net_flows"].to_numpy()], (days[-1] + 1) / 365.0, part["nav"][-1])
    return x, None if x is not None else NO_IRR


def test_vectorised_money_weighted_returns_agree_with_xirr_group_by_group(monkeypatch):
    rng = np.random.default_rng(17)
    groups = []
    for k in range(300):
        n = int(rng.integers(1, 25))
        offsets = np.cumsum(rng.integers(1, 40, n)) - 1
        # deposits and withdrawals (some larger than what is invested), many days without flows
        flows = np.where(rng.random(n) < 0.5, 0.0, rng.normal(0.0, 400.0, n))
        start = 0.0 if k % 7 == 0 else float(rng.uniform(100.0, 2000.0))
        end = float(rng.uniform(-300.0, 3000.0))  # a negative end value: often no solution
        navs = list(rng.uniform(0.0, 2000.0, n - 1)) + [end]
        if k % 50 == 3:
            navs[n // 2] = None
        if k % 61 == 4:  # no money in at all
            start, flows = 0.0, np.zeros(n)
        groups.append(_flow_rows(f"G{k:03d}", offsets, list(flows), navs, start))
    # three rates solve these flows, -90%, -50% and 10%: (v - 0.1)(v - 0.5)(v - 1.1) = 0 with
    # v = 1 + x, that is v^3 - 1.7 v^2 + 0.71 v - 0.055; brentq finds -90%, Chandrupatla's
    # method 10%
    groups.append(_flow_rows("MANY", [0, 365, 730, 1094], [0.0, -1.7, 0.71, 0.0], [1.0, 1.0, 1.0, 0.055], 1.0))
    rows = pl.concat(groups)
    calls = []
    real_xirr = performance_module.xirr
    monkeypatch.setattr(performance_module, "xirr", lambda *a: calls.append(a) or real_xirr(*a))
    out = money_weighted_returns(rows.sample(fraction=1.0, shuffle=True, seed=2), ["portfolio_id"])
    monkeypatch.undo()
    assert out["portfolio_id"].to_list() == sorted(set(rows["portfolio_id"]))
    notes = set()
    for row, part in zip(out.iter_rows(named=True), rows.partition_by("portfolio_id", maintain_order=True)):
        expected, note = _expected_xirr(part)
        notes.add(note)
        assert row["mwr_note"] == note, row["portfolio_id"]
        if expected is None:
            assert row["money_weighted_return_annualised"] is None and row["money_weighted_return"] is None
        else:
            assert row["money_weighted_return_annualised"] == pytest.approx(expected, rel=1e-10, abs=1e-10), row["portfolio_id"]
    assert notes == {None, NO_IRR, NAV_UNKNOWN}
    many = out.filter(pl.col("portfolio_id") == "MANY")["money_weighted_return_annualised"][0]
    assert many == pytest.approx(-0.9, abs=1e-10)  # brentq's pick among the three
    # most groups are solved all together; the one with three rates by xirr itself
    assert 1 <= len(calls) < 60
    assert any(list(a[1]) == [1.0, 0.0, -1.7, 0.71, 0.0] for a in calls)
