"""Ex-ante risk (transforms.risk): Hull's published two-stock VaR example, parametric VaR and CVaR
against scipy.stats.norm (closed form and numerical integration), historical VaR against
numpy.quantile and scipy's mquantiles, the Euler identity sum(component) = sigma, cash,
holdings without history, and bad input."""

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from scipy.stats import norm
from scipy.stats.mstats import mquantiles

from transforms.conventions import PERIODS_PER_YEAR
from transforms.covariance import ReturnMatrix, sample_covariance
from transforms.risk import (
    CASH_KEY,
    CASH_NOTE,
    NO_BENCHMARK,
    NO_COVERED,
    NO_HISTORY,
    RISK_CONTRIBUTIONS_SCHEMA,
    RISK_SCHEMA,
    TOO_FEW,
    VAR_SCHEMA,
    ex_ante_risk,
    historical_var,
    horizon_returns,
    parametric_var,
    risk_contributions,
    risk_contributions_of,
    value_at_risk,
)

IDS = ("AAA", "BBB", "CCC", "DDD", "EEE")
SECTORS = {"AAA": "Technology", "BBB": "Technology", "CCC": "Energy", "DDD": "Utilities", "EEE": "Financials"}


@pytest.fixture(scope="module")
def market():
    rng = np.random.default_rng(5)
    t = 400
    common = rng.standard_t(4, (t, 1)) * 0.008
    x = common * np.array([1.2, 1.0, 0.7, 0.4, 1.1]) + rng.normal(0, 0.01, (t, 5))
    dates = pl.Series("date", [date(2022, 1, 3) + timedelta(days=i) for i in range(t)], dtype=pl.Date)
    return ReturnMatrix(IDS, dates, x)


def _holdings(rows):
    """(portfolio, instrument, weight, nav) -> holdings; the sector follows the instrument,
    ``CASH:`` rows have none."""
    return pl.DataFrame(
        {
            "portfolio_id": [r[0] for r in rows],
            "instrument_id": [r[1] for r in rows],
            "weight": [r[2] for r in rows],
            "sector": [None if r[1].startswith("CASH") else SECTORS.get(r[1], "Industrials") for r in rows],
            "nav": [r[3] for r in rows],
        },
        schema={"portfolio_id": pl.String, "instrument_id": pl.String, "weight": pl.Float64, "sector": pl.String, "nav": pl.Float64},
    )


BOOK = [
    ("P1", "AAA", 0.4, 2e6),
    ("P1", "CCC", 0.3, 2e6),
    ("P1", "EEE", -0.1, 2e6),  # a short
    ("P1", "CASH:USD", 0.4, 2e6),
    ("P2", "BBB", 0.5, 1e6),
    ("P2", "DDD", 0.5, 1e6),
    ("CASHONLY", "CASH:EUR", 1.0, 3e5),
]


def _w(portfolio, rows=BOOK):
    w = np.zeros(len(IDS))
    for p, i, weight, _ in rows:
        if p == portfolio and i in IDS:
            w[IDS.index(i)] = weight
    return w


# --- Hull's worked example ------------------------------------------------------------------------


def test_hull_two_stock_portfolio():
    # Hull, Risk Management and Financial Institutions (3rd ed., 2012), ch. 15, the Microsoft
    # and AT&T example: $10m in Microsoft (daily volatility 2%) and $5m in AT&T (1%),
    # correlation 0.3. The daily standard deviation of the portfolio is $220,227 and the 10-day
    # 99% VaR 220,227 x sqrt(10) x 2.33 = $1,622,657; alone, Microsoft's is $1,473,621 and
    # AT&T's $368,405. Hull rounds z to 2.33, so our VaR is rescaled by 2.33 / norm.ppf(0.99).
    s = np.array([[0.02**2, 0.3 * 0.02 * 0.01], [0.3 * 0.02 * 0.01, 0.01**2]])
    ids = ("MSFT", "T")
    holdings = pl.DataFrame(
        {
            "portfolio_id": ["both", "both", "msft", "att"],
            "instrument_id": ["MSFT", "T", "MSFT", "T"],
            "weight": [10 / 15, 5 / 15, 1.0, 1.0],
            "sector": ["Technology", "Communication Services", "Technology", "Communication Services"],
            "nav": [15e6, 15e6, 10e6, 5e6],
        }
    )
    risk = ex_ante_risk(holdings, ids, s)
    assert risk.filter(pl.col("portfolio_id") == "both")["volatility"][0] * 15e6 == pytest.approx(220_227, abs=1)
    days = pl.Series("date", [date(2024, 1, 1) + timedelta(days=i) for i in range(3)])
    var = value_at_risk(holdings, ReturnMatrix(ids, days, np.zeros((3, 2))), s, confidences=[0.99], horizons=[10])
    para = var.filter(pl.col("method") == "parametric")
    rescale = 2.33 / norm.ppf(0.99)
    hull = {"both": 1_622_657, "msft": 1_473_621, "att": 368_405}
    for pid, figure in hull.items():
        assert para.filter(pl.col("portfolio_id") == pid)["var"][0] * rescale == pytest.approx(figure, abs=1)
    # the diversification benefit Hull quotes: (1,473,621 + 368,405) - 1,622,657 = 219,369
    assert (hull["msft"] + hull["att"] - hull["both"]) == 219_369
    # three days are too few for a 99% historical VaR: null, with the reason
    hist = var.filter(pl.col("method") == "historical")
    assert hist["var"].null_count() == 3 and set(hist["note"]) == {TOO_FEW}


# --- numpy kernels against scipy and numpy ---------------------------------------------------------


@pytest.mark.parametrize("c", [0.95, 0.99])
@pytest.mark.parametrize("h", [1, 10])
def test_parametric_var_is_the_normal_closed_form(c, h):
    sigma = 0.013
    var, cvar = parametric_var(sigma, c, h)
    sd = sigma * np.sqrt(h)
    assert var == pytest.approx(norm.ppf(c, scale=sd), rel=1e-14)
    # the expected loss beyond the VaR by numerical integration of the normal density
    assert cvar == pytest.approx(norm.expect(lambda x: x, scale=sd, lb=var, conditional=True), rel=1e-9)
    # published standard normal figures: z = 1.6449 and 2.3263, ES = 2.0627 and 2.6652 sigma
    z, es = {0.95: (1.6449, 2.0627), 0.99: (2.3263, 2.6652)}[c]
    assert var / sd == pytest.approx(z, abs=1e-4) and cvar / sd == pytest.approx(es, abs=1e-4)


@pytest.mark.parametrize("c", [0.95, 0.99])
def test_historical_var_is_the_linear_quantile(c):
    pnl = np.random.default_rng(9).standard_t(3, 257) * 1000.0
    var, cvar = historical_var(pnl, c)
    q = np.quantile(pnl, 1 - c)  # numpy's default: linear (Hyndman & Fan type 7)
    assert var == pytest.approx(-q, rel=1e-14)
    assert var == pytest.approx(-mquantiles(pnl, [1 - c], alphap=1, betap=1)[0], rel=1e-12)
    assert cvar == pytest.approx(-pnl[pnl <= q].mean(), rel=1e-14)
    assert cvar >= var
    # several series at once, one per column
    both = historical_var(np.column_stack([pnl, 2 * pnl]), c)
    assert both[0] == pytest.approx([var, 2 * var], rel=1e-14)
    assert both[1] == pytest.approx([cvar, 2 * cvar], rel=1e-14)


def test_horizon_returns_compound_overlapping_windows():
    x = np.random.default_rng(1).normal(0, 0.02, (15, 3))
    by_hand = np.array([np.prod(1 + x[t : t + 10], axis=0) - 1 for t in range(6)])
    assert np.allclose(horizon_returns(x, 10), by_hand, rtol=1e-14, atol=0)
    assert np.array_equal(horizon_returns(x, 1), x)
    assert horizon_returns(x, 20).shape == (0, 3)


def test_contributions_sum_to_sigma_and_are_the_gradient():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(6, 6))
    s = a @ a.T * 1e-4
    w = rng.normal(size=6)
    sigma, marginal, component = risk_contributions_of(w, s)
    assert component.sum() == pytest.approx(sigma, rel=1e-13)
    eps = 1e-7
    grad = [(np.sqrt((w + eps * e) @ s @ (w + eps * e)) - np.sqrt((w - eps * e) @ s @ (w - eps * e))) / (2 * eps) for e in np.eye(6)]
    assert marginal == pytest.approx(grad, rel=1e-6)
    with pytest.raises(ValueError, match="zero volatility"):
        risk_contributions_of(np.zeros(6), s)


# --- frames ---------------------------------------------------------------------------------------


def test_ex_ante_risk_and_tracking_error(market):
    s = sample_covariance(market.values)
    bench = pl.DataFrame({"portfolio_id": ["P1", "P1", "P1"], "instrument_id": ["AAA", "CCC", "DDD"], "weight": [0.5, 0.3, 0.2]})
    out = ex_ante_risk(_holdings(BOOK), IDS, s, bench)
    assert out.schema == pl.Schema(RISK_SCHEMA)
    assert out["portfolio_id"].to_list() == ["CASHONLY", "P1", "P2"]
    p1 = out.row(1, named=True)
    w, b = _w("P1"), np.array([0.5, 0.0, 0.3, 0.2, 0.0])
    assert p1["volatility"] == pytest.approx(np.sqrt(w @ s @ w), rel=1e-13)
    assert p1["annualised_volatility"] == pytest.approx(np.sqrt(w @ s @ w * PERIODS_PER_YEAR), rel=1e-13)
    assert p1["tracking_error"] == pytest.approx(np.sqrt((w - b) @ s @ (w - b)), rel=1e-13)
    assert p1["positions"] == 3 and p1["excluded_positions"] == 0 and p1["note"] is None
    p2 = out.row(2, named=True)
    assert p2["tracking_error"] is None and p2["note"] == NO_BENCHMARK
    cash = out.row(0, named=True)
    assert cash["volatility"] == 0.0 and cash["positions"] == 0


def test_value_at_risk_against_numpy_and_scipy(market):
    s = sample_covariance(market.values)
    out = value_at_risk(_holdings(BOOK), market)
    assert out.schema == pl.Schema(VAR_SCHEMA)
    assert out.height == 3 * 2 * 2 * 2
    assert out.select(pl.col("portfolio_id", "method", "confidence", "horizon_days")).equals(
        out.select(pl.col("portfolio_id", "method", "confidence", "horizon_days")).sort(pl.all())
    )
    w, nav = _w("P1"), 2e6
    sigma = np.sqrt(w @ s @ w)
    daily = market.values @ w * nav
    ten = (np.array([np.prod(1 + market.values[t : t + 10], axis=0) - 1 for t in range(len(market.values) - 9)]) @ w) * nav
    for c in (0.95, 0.99):
        for h, pnl in ((1, daily), (10, ten)):
            row = out.filter((pl.col("portfolio_id") == "P1") & (pl.col("confidence") == c) & (pl.col("horizon_days") == h))
            hist = row.filter(pl.col("method") == "historical").row(0, named=True)
            q = np.quantile(pnl, 1 - c)
            assert hist["var"] == pytest.approx(-q, rel=1e-12)
            assert hist["cvar"] == pytest.approx(-pnl[pnl <= q].mean(), rel=1e-12)
            assert hist["var_pct_nav"] == pytest.approx(-q / nav, rel=1e-12)
            assert hist["observations"] == len(pnl)
            para = row.filter(pl.col("method") == "parametric").row(0, named=True)
            sd = sigma * np.sqrt(h) * nav
            assert para["var"] == pytest.approx(norm.ppf(c) * sd, rel=1e-13)
            assert para["cvar"] == pytest.approx(sd * norm.pdf(norm.ppf(c)) / (1 - c), rel=1e-13)
            assert para["observations"] is None and para["note"] is None


def test_cash_only_portfolio_has_zero_risk_and_no_nan(market):
    s = sample_covariance(market.values)
    frames = [
        ex_ante_risk(_holdings(BOOK), IDS, s),
        value_at_risk(_holdings(BOOK), market),
        risk_contributions(_holdings(BOOK), IDS, s),
    ]
    for frame in frames:
        floats = [c for c, t in frame.schema.items() if t == pl.Float64]
        assert not frame.select(pl.any_horizontal(pl.col(floats).is_nan().fill_null(False)).any()).item()
    var = frames[1].filter(pl.col("portfolio_id") == "CASHONLY")
    assert var["var"].to_list() == [0.0] * 8 and var["cvar"].to_list() == [0.0] * 8
    contrib = frames[2].filter(pl.col("portfolio_id") == "CASHONLY")
    assert contrib["key"].to_list() == ["CASH:EUR", CASH_KEY]
    assert contrib["component"].to_list() == [0.0, 0.0] and contrib["share"].null_count() == 2
    assert set(contrib["note"]) == {CASH_NOTE}


def test_holdings_without_history_are_excluded_and_flagged(market):
    s = sample_covariance(market.values)
    rows = BOOK + [("P2", "NEWIPO", 0.1, 1e6), ("GHOST", "NEWIPO", 0.9, 5e5), ("GHOST", "CASH:USD", 0.1, 5e5)]
    risk = ex_ante_risk(_holdings(rows), IDS, s)
    p2 = risk.filter(pl.col("portfolio_id") == "P2").row(0, named=True)
    w = _w("P2")
    assert p2["volatility"] == pytest.approx(np.sqrt(w @ s @ w), rel=1e-13)
    assert p2["excluded_positions"] == 1 and p2["excluded_weight"] == pytest.approx(0.1)
    assert "1 position(s) without return history excluded" in p2["note"]
    ghost = risk.filter(pl.col("portfolio_id") == "GHOST").row(0, named=True)
    assert ghost["volatility"] is None and NO_COVERED in ghost["note"]
    var = value_at_risk(_holdings(rows), market).filter(pl.col("portfolio_id") == "GHOST")
    assert var["var"].null_count() == 8 and all(NO_COVERED in n for n in var["note"])
    contrib = risk_contributions(_holdings(rows), IDS, s)
    new = contrib.filter((pl.col("portfolio_id") == "P2") & (pl.col("key") == "NEWIPO")).row(0, named=True)
    assert new["component"] is None and new["note"] == NO_HISTORY


def test_contributions_frame_sums_to_volatility(market):
    s = sample_covariance(market.values)
    contrib = risk_contributions(_holdings(BOOK), IDS, s)
    assert contrib.schema == pl.Schema(RISK_CONTRIBUTIONS_SCHEMA)
    risk = ex_ante_risk(_holdings(BOOK), IDS, s)
    for pid in ("P1", "P2"):
        sigma = risk.filter(pl.col("portfolio_id") == pid)["volatility"][0]
        for level in ("position", "sector"):
            part = contrib.filter((pl.col("portfolio_id") == pid) & (pl.col("level") == level))
            assert part["component"].sum() == pytest.approx(sigma, rel=1e-12)
            assert part["share"].sum() == pytest.approx(1.0, rel=1e-12)
    # P2 holds two sectors; P1's Technology is AAA alone, so its sector row is AAA's
    p1 = contrib.filter(pl.col("portfolio_id") == "P1")
    aaa = p1.filter(pl.col("key") == "AAA").row(0, named=True)
    tech = p1.filter(pl.col("key") == "Technology").row(0, named=True)
    assert (tech["weight"], tech["component"]) == pytest.approx((aaa["weight"], aaa["component"]), rel=1e-15)
    assert tech["marginal"] == pytest.approx(aaa["marginal"], rel=1e-13)
    w = _w("P1")
    assert aaa["marginal"] == pytest.approx((s @ w)[0] / np.sqrt(w @ s @ w), rel=1e-12)


def test_portfolios_are_independent_and_row_order_does_not_matter(market):
    s = sample_covariance(market.values)
    full = [ex_ante_risk(_holdings(BOOK), IDS, s), value_at_risk(_holdings(BOOK), market), risk_contributions(_holdings(BOOK), IDS, s)]
    rev = [ex_ante_risk(_holdings(BOOK[::-1]), IDS, s), value_at_risk(_holdings(BOOK[::-1]), market), risk_contributions(_holdings(BOOK[::-1]), IDS, s)]
    p2_rows = [r for r in BOOK if r[0] == "P2"]
    alone = [ex_ante_risk(_holdings(p2_rows), IDS, s), value_at_risk(_holdings(p2_rows), market), risk_contributions(_holdings(p2_rows), IDS, s)]
    for a, b, c in zip(full, rev, alone):
        assert a.equals(b)
        # equal up to the last bits of a sum over a differently shaped array
        assert_frame_equal(a.filter(pl.col("portfolio_id") == "P2"), c, rel_tol=1e-13, abs_tol=0.0)


def test_nav_problems_are_null_with_a_note(market):
    rows = [("Z", "AAA", 1.0, 0.0), ("U", "AAA", 1.0, None)]
    out = value_at_risk(_holdings(rows), market)
    assert out["var"].null_count() == out.height and out["var_pct_nav"].null_count() == out.height
    assert set(out.filter(pl.col("portfolio_id") == "Z")["note"]) == {"nav is zero or negative"}
    assert set(out.filter(pl.col("portfolio_id") == "U")["note"]) == {"nav unknown"}


def test_bad_input(market):
    s = sample_covariance(market.values)
    with pytest.raises(ValueError, match="missing column"):
        ex_ante_risk(_holdings(BOOK).drop("nav"), IDS, s)
    with pytest.raises(ValueError, match="duplicate key"):
        ex_ante_risk(_holdings(BOOK + [BOOK[0]]), IDS, s)
    with pytest.raises(ValueError, match="more than one nav"):
        ex_ante_risk(_holdings([("P", "AAA", 0.5, 1.0), ("P", "BBB", 0.5, 2.0)]), IDS, s)
    with pytest.raises(ValueError, match="expected 4 x 4"):
        ex_ante_risk(_holdings(BOOK), IDS[:4], s)
    with pytest.raises(ValueError, match="non-finite weight"):
        ex_ante_risk(_holdings([("P", "AAA", float("inf"), 1.0)]), IDS, s)
    with pytest.raises(ValueError, match="confidence"):
        value_at_risk(_holdings(BOOK), market, confidences=[1.0])
    with pytest.raises(ValueError, match="horizon"):
        value_at_risk(_holdings(BOOK), market, horizons=[0])
