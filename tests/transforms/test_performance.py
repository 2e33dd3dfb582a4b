"""Daily time-weighted returns and return statistics (transforms.performance), checked by hand
and against empyrical (the maintained fork, empyrical-reloaded) to 1e-8."""

from datetime import date, timedelta

import empyrical
import numpy as np
import pandas as pd
import polars as pl
import pytest

from transforms.contract import RETURNS_DAILY_SCHEMA
from transforms.conventions import PERIODS_PER_YEAR, risk_free_per_period
from transforms.performance import (
    NAV_UNKNOWN,
    NO_CAPITAL,
    PREVIOUS_NAV_UNKNOWN,
    max_drawdown,
    return_statistics,
    returns_daily,
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


def test_max_drawdown_and_its_duration_by_hand():
    # wealth 1.1, 0.55, 0.66, 0.99, 1.089: the peak 1.1 is never regained (4 days under water)
    mdd, days = max_drawdown(np.array([0.1, -0.5, 0.2, 0.5, 0.1]))
    assert mdd == pytest.approx(0.55 / 1.1 - 1) and days == 4
    # a first-day loss is a drawdown from the starting value 1: wealth 0.9, 0.945, 1.0395 (a
    # new peak), 1.029: under water on days 1-2, then day 4
    mdd, days = max_drawdown(np.array([-0.1, 0.05, 0.1, -0.01]))
    assert mdd == pytest.approx(-0.1) and days == 2
    assert max_drawdown(np.array([0.01, 0.02])) == (0.0, 0)


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
