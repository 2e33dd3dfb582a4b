"""Brinson attribution, multi-period linking and contribution to return (transforms.attribution),
checked against Carl Bacon's published examples, against the linking formulas worked in plain
Python, and against their invariants (effects add up to the excess return)."""

import math
from datetime import date, timedelta
from decimal import Decimal, localcontext

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from transforms.attribution import (
    ATTRIBUTION_LINKED_SCHEMA,
    ATTRIBUTION_SCHEMA,
    BENCHMARK_NET_ZERO,
    CANNOT_LINK,
    CANNOT_LINK_CONTRIBUTION,
    CONTRIBUTION_SCHEMA,
    LINK_METHODS,
    LINK_SUMMARY_SCHEMA,
    NO_BENCHMARK_HOLDINGS,
    PORTFOLIO_NET_ZERO,
    SECTOR_INPUTS_SCHEMA,
    TOTAL_RETURNS_SCHEMA,
    UNCLASSIFIED,
    brinson,
    contribution,
    link,
    link_summary,
    sector_inputs,
    total_returns,
)

D0 = date(2025, 1, 2)
EFFECTS = ["allocation", "selection", "interaction"]
COUNTRIES = ["UK", "Japan", "US"]


def _holdings(rows):
    """(portfolio, day, instrument, sector, weight, return) -> holding rows."""
    return pl.DataFrame(
        {
            "portfolio_id": [r[0] for r in rows],
            "date": [D0 + timedelta(days=r[1]) for r in rows],
            "instrument_id": [r[2] for r in rows],
            "sector": [r[3] for r in rows],
            "weight": [float(r[4]) for r in rows],
            "return": [float(r[5]) for r in rows],
        },
        schema_overrides={"sector": pl.String},
    )


def _by_sector(frame, column):
    return dict(zip(frame["sector"], frame[column], strict=True))


# --- Bacon's single-period example ------------------------------------------------------------
# Carl Bacon, Practical Portfolio Performance Measurement and Attribution (Wiley, 2nd ed. 2008),
# the UK / Japan / US equities example of chapter 5: portfolio weights 40/30/30% earning 20%,
# -5%, 6%; benchmark weights 40/20/40% earning 10%, -4%, 8%. The effects below are the book's
# Table 5.2 (BHB), 5.3 (BF) and 5.4 (BF, interaction in selection: "top-down"), as reproduced in
# the test suite of the R package PortfolioAttribution, repository anandkkumar/PortfolioAttribution,
# file tests/testthat/test_BHB_BF.R (the same data is in braverock/PortfolioAnalytics,
# sandbox/attribution/R/test_suite.R, "The same as in Table 5.2 (Bacon, 2008)").
BACON_PORTFOLIO = [
    # UK split into two holdings to exercise the weighted average: (0.25*0.26 + 0.15*0.10)/0.4 = 20%
    ("P", 0, "uk1", "UK", 0.25, 0.26),
    ("P", 0, "uk2", "UK", 0.15, 0.10),
    ("P", 0, "jp", "Japan", 0.30, -0.05),
    ("P", 0, "us", "US", 0.30, 0.06),
]
BACON_BENCHMARK = [
    ("P", 0, "uk", "UK", 0.40, 0.10),
    ("P", 0, "jp", "Japan", 0.20, -0.04),
    ("P", 0, "us", "US", 0.40, 0.08),
]
BACON_SINGLE = {
    # (method, interaction): {effect: (UK, Japan, US)}
    ("BHB", "separate"): {
        "allocation": (0.0, -0.004, -0.008),
        "selection": (0.04, -0.002, -0.008),
        "interaction": (0.0, -0.001, 0.002),
    },
    ("BF", "separate"): {
        "allocation": (0.0, -0.0104, -0.0016),
        "selection": (0.04, -0.002, -0.008),
        "interaction": (0.0, -0.001, 0.002),
    },
    ("BF", "in_selection"): {
        "allocation": (0.0, -0.0104, -0.0016),
        "selection": (0.04, -0.003, -0.006),
        "interaction": (0.0, 0.0, 0.0),
    },
}


@pytest.mark.parametrize(("method", "interaction"), list(BACON_SINGLE))
def test_bacon_single_period_example(method, interaction):
    portfolio, benchmark = _holdings(BACON_PORTFOLIO), _holdings(BACON_BENCHMARK)
    sectors = sector_inputs(portfolio, benchmark)
    assert sectors.schema == pl.Schema(SECTOR_INPUTS_SCHEMA)
    assert _by_sector(sectors, "portfolio_return")["UK"] == pytest.approx(0.20, abs=1e-15)
    totals = total_returns(portfolio, benchmark)
    assert totals.schema == pl.Schema(TOTAL_RETURNS_SCHEMA)
    # R = 8.3% and B = 6.4% (Bacon, chapter 5)
    assert totals.row(0, named=True) == pytest.approx(
        {"portfolio_id": "P", "date": D0, "portfolio_weight": 1.0, "benchmark_weight": 1.0,
         "portfolio_return": 0.083, "benchmark_return": 0.064, "note": None}, abs=1e-15
    )
    out = brinson(sectors, method, interaction)
    assert out.schema == pl.Schema(ATTRIBUTION_SCHEMA)
    for effect, published in BACON_SINGLE[(method, interaction)].items():
        got = _by_sector(out, effect)
        assert [got[c] for c in COUNTRIES] == pytest.approx(list(published), abs=1e-12), effect
    # the three effects add up to the excess return 8.3% - 6.4% = 1.9%
    assert out["total_effect"].sum() == pytest.approx(0.019, abs=1e-15)


# --- Bacon's four-quarter linking example -----------------------------------------------------
# Bacon (2008), chapter 8, Table 8.1 (quarterly weights and returns of the same three markets)
# and the linked totals of Tables 8.2 (Carino), 8.3 (Menchero), 8.4 (GRAP) and 8.5 (Frongello),
# all BF with the interaction in selection. Figures as printed in the R package's test file
# anandkkumar/PortfolioAttribution, tests/testthat/test_linking.R (to 4 decimals; that file
# compares with epsilon = 1e-4, which we keep: its Carino Japanese allocation -0.006 is the
# book's rounding of -0.00606). The same file gives the cumulative excess return 0.1327
# ("Exhibit 8.10", Davies-Laker test).
Q_WP = [(0.4, 0.3, 0.3), (0.7, 0.2, 0.1), (0.3, 0.5, 0.2), (0.3, 0.5, 0.2)]
Q_WB = [(0.4, 0.2, 0.4), (0.4, 0.3, 0.3), (0.5, 0.4, 0.1), (0.4, 0.4, 0.2)]
Q_RP = [(0.2, -0.05, 0.06), (-0.05, 0.03, -0.05), (-0.2, 0.08, -0.15), (0.1, -0.07, 0.25)]
Q_RB = [(0.1, -0.04, 0.08), (-0.07, 0.04, -0.1), (-0.25, 0.05, -0.2), (0.05, -0.05, 0.1)]
# Table 8.1: per-quarter allocation and selection (rows = quarters, columns = UK, Japan, US)
Q_ALLOCATION = [(0.0, -0.0104, -0.0016), (-0.0072, -0.0086, 0.0108), (0.025, 0.0175, -0.0075), (-0.003, -0.007, 0.0)]
Q_SELECTION = [(0.04, -0.003, -0.006), (0.014, -0.002, 0.005), (0.015, 0.015, 0.01), (0.015, -0.01, 0.03)]
BACON_LINKED = {
    # method: (allocation UK, Japan, US, total), (selection UK, Japan, US, total)
    "carino": ((0.0165, -0.006, 0.0015, 0.012), (0.0804, 0.0018, 0.0385, 0.1207)),
    "menchero": ((0.0156, -0.0078, 0.0014, 0.0092), (0.0838, 0.0005, 0.0391, 0.1234)),
    "grap": ((0.0167, -0.0055, 0.0011, 0.0124), (0.0785, 0.0016, 0.0402, 0.1203)),
    "frongello": ((0.0167, -0.0055, 0.0011, 0.0124), (0.0785, 0.0016, 0.0402, 0.1203)),
}
# Table 8.5: Frongello's per-quarter adjusted effects, quarters 2-4 (quarter 1 is unadjusted)
FRONGELLO_ADJUSTED_ALLOCATION = [(-0.0078, -0.0088, 0.0118), (0.0271, 0.0207, -0.0091), (-0.0026, -0.0069, 0.0)]
FRONGELLO_ADJUSTED_SELECTION = [(0.0133, -0.002, 0.0057), (0.009, 0.0163, 0.0105), (0.0162, -0.0097, 0.03)]


def _quarter_holdings(weights, returns):
    return _holdings(
        [("P", 91 * q, c, c, weights[q][i], returns[q][i]) for q in range(4) for i, c in enumerate(COUNTRIES)]
    )


@pytest.fixture(scope="module")
def bacon_quarters():
    portfolio, benchmark = _quarter_holdings(Q_WP, Q_RP), _quarter_holdings(Q_WB, Q_RB)
    daily = brinson(sector_inputs(portfolio, benchmark), "BF", "in_selection")
    return daily, total_returns(portfolio, benchmark)


def test_bacon_quarterly_effects_table_8_1(bacon_quarters):
    daily, totals = bacon_quarters
    for q in range(4):
        day = daily.filter(pl.col("date") == D0 + timedelta(days=91 * q))
        for effect, table in (("allocation", Q_ALLOCATION), ("selection", Q_SELECTION)):
            got = _by_sector(day, effect)
            assert [got[c] for c in COUNTRIES] == pytest.approx(list(table[q]), abs=1e-12)
    # quarterly R and B (8.3%/6.4%, -3.4%/-4.6%, -5%/-12.5%, 4.5%/2%)
    assert totals["portfolio_return"].to_list() == pytest.approx([0.083, -0.034, -0.05, 0.045], abs=1e-15)
    assert totals["benchmark_return"].to_list() == pytest.approx([0.064, -0.046, -0.125, 0.02], abs=1e-15)


@pytest.mark.parametrize("method", LINK_METHODS)
def test_bacon_linked_tables_8_2_to_8_5(bacon_quarters, method):
    daily, totals = bacon_quarters
    linked = link(daily, totals, method)
    assert linked.schema == pl.Schema(ATTRIBUTION_LINKED_SCHEMA)
    assert linked["periods"].to_list() == [4, 4, 4]
    for effect, published in zip(("allocation", "selection"), BACON_LINKED[method], strict=True):
        got = _by_sector(linked, effect)
        assert [got[c] for c in COUNTRIES] + [sum(got.values())] == pytest.approx(list(published), abs=1e-4), effect
    assert linked["interaction"].to_list() == [0.0, 0.0, 0.0]
    summary = link_summary(linked, totals)
    assert summary.schema == pl.Schema(LINK_SUMMARY_SCHEMA)
    row = summary.row(0, named=True)
    assert row["excess_return"] == pytest.approx(0.1327, abs=5e-5)
    assert row["excess_return"] == pytest.approx(1.083 * 0.966 * 0.95 * 1.045 - 0.954 * 0.875 * 1.02 * 1.064, abs=1e-15)
    assert abs(row["residual"]) < 1e-12


def test_frongello_by_hand_matches_table_8_5_and_the_module(bacon_quarters):
    daily, totals = bacon_quarters
    r, b = totals["portfolio_return"].to_list(), totals["benchmark_return"].to_list()

    def frongello(effects):  # G_t = e_t prod_{s<t}(1 + R_s) + B_t sum_{s<t} G_s, per sector
        adjusted = []
        for t, row in enumerate(effects):
            grown = math.prod(1 + x for x in r[:t])
            adjusted.append(tuple(row[i] * grown + b[t] * sum(g[i] for g in adjusted) for i in range(3)))
        return adjusted

    for effect, table, published in (
        ("allocation", Q_ALLOCATION, FRONGELLO_ADJUSTED_ALLOCATION),
        ("selection", Q_SELECTION, FRONGELLO_ADJUSTED_SELECTION),
    ):
        adjusted = frongello(table)
        for q in range(3):
            assert list(adjusted[q + 1]) == pytest.approx(list(published[q]), abs=5e-5)
        got = _by_sector(link(daily, totals, "frongello"), effect)
        assert [got[c] for c in COUNTRIES] == pytest.approx([sum(g[i] for g in adjusted) for i in range(3)], abs=1e-14)


# --- linking against the formulas worked by hand ------------------------------------------------


def _hand_linked(effects, r, b, method):
    """Linked effect per sector from plain-Python formulas. ``effects``: per period a dict
    sector -> effect (a missing sector has no effect that period)."""
    n = len(r)
    big_r, big_b = math.prod(1 + x for x in r) - 1, math.prod(1 + x for x in b) - 1
    sectors = sorted({s for e in effects for s in e})
    if method == "carino":
        def k(x, y):
            return 1 / (1 + x) if x == y else (math.log(1 + x) - math.log(1 + y)) / (x - y)
        factors = [k(r[t], b[t]) / k(big_r, big_b) for t in range(n)]
    elif method == "menchero":
        m = (big_r - big_b) / n / ((1 + big_r) ** (1 / n) - (1 + big_b) ** (1 / n))
        d = [r[t] - b[t] for t in range(n)]
        factors = [m + (big_r - big_b - m * sum(d)) / sum(x * x for x in d) * d[t] for t in range(n)]
    elif method == "grap":
        factors = [math.prod(1 + x for x in r[:t]) * math.prod(1 + x for x in b[t + 1 :]) for t in range(n)]
    else:
        out = {}
        for s in sectors:
            g = []
            for t in range(n):
                g.append(effects[t].get(s, 0.0) * math.prod(1 + x for x in r[:t]) + b[t] * sum(g))
            out[s] = sum(g)
        return out
    return {s: sum(effects[t].get(s, 0.0) * factors[t] for t in range(n)) for s in sectors}


def _daily_rows(portfolio, effects):
    rows = [
        {"portfolio_id": portfolio, "date": D0 + timedelta(days=t), "sector": s, "allocation": e,
         "selection": e / 2, "interaction": -e / 3}
        for t, day in enumerate(effects)
        for s, e in day.items()
    ]
    keys = {c: ATTRIBUTION_SCHEMA[c] for c in ["portfolio_id", "date", "sector"]}
    return pl.DataFrame(rows, schema={**keys, **dict.fromkeys(EFFECTS, pl.Float64)})


def _totals(portfolio, r, b):
    return pl.DataFrame(
        {"portfolio_id": [portfolio] * len(r), "date": [D0 + timedelta(days=t) for t in range(len(r))],
         "portfolio_return": r, "benchmark_return": b}
    )


# Three periods; sector "C" is absent on the second, and the third has R_t = B_t (Carino's limit)
HAND_EFFECTS = [{"A": 0.004, "B": -0.0015, "C": 0.002}, {"A": -0.003, "B": 0.0025}, {"A": 0.001, "B": -0.002, "C": 0.0005}]
HAND_R, HAND_B = [0.021, -0.013, 0.007], [0.012, -0.004, 0.007]


@pytest.mark.parametrize("method", LINK_METHODS)
def test_three_periods_against_hand_computation(method):
    other_effects = [{"A": 0.01}, {"A": -0.02}]  # a second portfolio must not disturb the first
    daily = pl.concat([_daily_rows("P", HAND_EFFECTS), _daily_rows("Q", other_effects)])
    totals = pl.concat([_totals("P", HAND_R, HAND_B), _totals("Q", [0.01, -0.02], [0.0, 0.0])])
    linked = link(daily, totals, method).filter(pl.col("portfolio_id") == "P")
    expected = _hand_linked(HAND_EFFECTS, HAND_R, HAND_B, method)
    assert linked["sector"].to_list() == ["A", "B", "C"]
    assert linked["allocation"].to_list() == pytest.approx([expected[s] for s in "ABC"], abs=1e-14)
    assert linked["selection"].to_list() == pytest.approx([expected[s] / 2 for s in "ABC"], abs=1e-14)
    assert linked["interaction"].to_list() == pytest.approx([-expected[s] / 3 for s in "ABC"], abs=1e-14)
    assert linked["total_effect"].to_list() == pytest.approx([expected[s] * (1 + 1 / 2 - 1 / 3) for s in "ABC"], abs=1e-14)
    assert linked.row(0, named=True)["start_date"] == D0 and linked["end_date"][0] == D0 + timedelta(days=2)


def test_equal_returns_use_the_published_limits():
    # R_t = B_t every period: Carino's k_t = 1 / (1 + R_t) and K = 1 / (1 + R); Menchero's
    # M = (1 + R)^((T - 1) / T), the limit of M as B -> R as documented in
    # braverock/PortfolioAnalytics sandbox/attribution/R/Menchero.R (citing Bacon pp. 194-196),
    # and a_t = 0 (every d_t = 0)
    r = [0.02, -0.01, 0.03]
    effects = [{"A": 0.01, "B": -0.01}, {"A": -0.004, "B": 0.004}, {"A": 0.002, "B": -0.002}]
    daily, totals = _daily_rows("P", effects), _totals("P", r, r)
    growth = math.prod(1 + x for x in r)
    carino = link(daily, totals, "carino")
    expected = sum(effects[t]["A"] * growth / (1 + r[t]) for t in range(3))
    assert carino["allocation"][0] == pytest.approx(expected, abs=1e-15)
    menchero = link(daily, totals, "menchero")
    assert menchero["allocation"][0] == pytest.approx(growth ** (2 / 3) * sum(e["A"] for e in effects), abs=1e-15)
    # nearly equal returns: Carino's factors tend to the limit; Menchero's a_t divides by
    # sum(d_t^2) ~ 1e-26, checked against the formula evaluated with 40 significant digits
    shifted = [x - 1e-13 for x in r]
    near = _totals("P", r, shifted)
    assert link(daily, near, "carino")["allocation"][0] == pytest.approx(carino["allocation"][0], abs=1e-12)
    precise = _menchero_decimal([e["A"] for e in effects], r, shifted)
    assert link(daily, near, "menchero")["allocation"][0] == pytest.approx(precise, abs=1e-12)


def _menchero_decimal(effects, r, b):
    with localcontext() as ctx:
        ctx.prec = 40
        one, n = Decimal(1), Decimal(len(r))
        rs, bs, es = [Decimal(x) for x in r], [Decimal(x) for x in b], [Decimal(x) for x in effects]
        big_r, big_b = math.prod((one + x for x in rs), start=one) - one, math.prod((one + x for x in bs), start=one) - one
        m = (big_r - big_b) / n / ((one + big_r) ** (one / n) - (one + big_b) ** (one / n))
        d = [x - y for x, y in zip(rs, bs, strict=True)]
        c = (big_r - big_b - m * sum(d)) / sum(x * x for x in d)
        return float(sum(e * (m + c * dt) for e, dt in zip(es, d, strict=True)))


# --- invariants on random books ----------------------------------------------------------------


def _random_book(seed, portfolios=3, days=40):
    rng = np.random.default_rng(seed)
    sectors = ["Energy", "Tech", "Health", "Banks", "Utilities"]
    instruments = [f"I{i:02d}" for i in range(16)]
    sector_of = {i: sectors[k % len(sectors)] for k, i in enumerate(instruments)}
    port, bench = [], []
    for p in [f"P{j}" for j in range(portfolios)]:
        for day in range(days):
            returns = dict(zip(instruments, rng.normal(0.0004, 0.015, len(instruments)), strict=True))
            held = rng.choice(instruments, size=8, replace=False)
            weights = rng.uniform(0.02, 0.3, held.size) * rng.choice([1.0, 1.0, 1.0, -0.4], held.size)  # some shorts
            weights /= weights.sum()
            port += [(p, day, i, sector_of[i], w, returns[i]) for i, w in zip(held, weights, strict=True)]
            members = rng.choice(instruments, size=10, replace=False)
            bw = rng.uniform(0.05, 0.2, members.size)
            bw /= bw.sum()
            bench += [(p, day, i, sector_of[i], w, returns[i]) for i, w in zip(members, bw, strict=True)]
    return _holdings(port), _holdings(bench)


@pytest.fixture(scope="module")
def book():
    portfolio, benchmark = _random_book(7)
    return portfolio, benchmark, sector_inputs(portfolio, benchmark), total_returns(portfolio, benchmark)


@pytest.mark.parametrize("method", ["BF", "BHB"])
@pytest.mark.parametrize("interaction", ["separate", "in_selection"])
def test_a_days_effects_sum_to_the_excess_return(book, method, interaction):
    _, _, sectors, totals = book
    assert sectors.filter(pl.col("portfolio_return").is_null() | pl.col("benchmark_return").is_null()).height > 0
    out = brinson(sectors, method, interaction)
    per_day = out.group_by("portfolio_id", "date").agg(pl.col("total_effect").sum()).join(totals, on=["portfolio_id", "date"])
    gap = per_day.select((pl.col("total_effect") - (pl.col("portfolio_return") - pl.col("benchmark_return"))).abs().max()).item()
    assert gap < 1e-15
    effects = out.select(EFFECTS).to_numpy()
    assert np.allclose(effects.sum(axis=1), out["total_effect"].to_numpy(), rtol=0, atol=1e-17)
    assert np.isfinite(effects).all()


@pytest.mark.parametrize("method", LINK_METHODS)
def test_every_method_links_to_the_period_excess_return(book, method):
    _, _, sectors, totals = book
    daily = brinson(sectors, "BF", "separate")
    linked = link(daily, totals, method)
    summary = link_summary(linked, totals)
    growth = totals.group_by("portfolio_id").agg(
        (pl.col("portfolio_return") + 1).product() - 1, (pl.col("benchmark_return") + 1).product() - 1
    )
    check = summary.join(growth, on="portfolio_id", suffix="_check")
    assert check.height == 3 and check["periods"].to_list() == [40, 40, 40]
    assert (check["portfolio_return"] - check["portfolio_return_check"]).abs().max() < 1e-15
    excess = check["portfolio_return_check"] - check["benchmark_return_check"]
    assert (check["total_effect"] - excess).abs().max() < 1e-12
    assert summary["residual"].abs().max() < 1e-12
    assert summary["note"].null_count() == summary.height
    summed = linked.group_by("portfolio_id").agg(pl.col(EFFECTS).sum()).sort("portfolio_id")
    for e in EFFECTS:
        assert (summed[e] - summary[e]).abs().max() < 1e-15


def test_frongello_and_grap_coincide(book):
    # Frongello's running sum solves to GRAP's factor; Bacon's Tables 8.4 and 8.5 show the same totals
    _, _, sectors, totals = book
    daily = brinson(sectors, "BHB", "separate")
    grap, frongello = link(daily, totals, "grap"), link(daily, totals, "frongello")
    assert grap["sector"].to_list() == frongello["sector"].to_list()
    for e in [*EFFECTS, "total_effect"]:
        assert (grap[e] - frongello[e]).abs().max() < 1e-13


def test_row_order_and_other_portfolios_do_not_matter(book):
    portfolio, benchmark, sectors, totals = book
    shuffled = sector_inputs(
        portfolio.sample(fraction=1.0, shuffle=True, seed=3), benchmark.sample(fraction=1.0, shuffle=True, seed=4)
    )
    assert_frame_equal(shuffled, sectors, check_exact=False, rel_tol=1e-12, abs_tol=1e-15)
    daily = brinson(sectors)
    assert_frame_equal(brinson(sectors.reverse()), daily, check_exact=False, rel_tol=1e-12, abs_tol=1e-15)
    for method in LINK_METHODS:
        full = link(daily, totals, method)
        one = pl.col("portfolio_id") == "P1"
        alone = link(daily.filter(one).reverse(), totals.filter(one).reverse(), method)
        assert_frame_equal(alone, full.filter(pl.col("portfolio_id") == "P1"), check_exact=False, rel_tol=1e-12, abs_tol=1e-15)


# --- missing sides, net-zero weights, flags -----------------------------------------------------


def test_sectors_held_on_one_side_only():
    portfolio = _holdings([("P", 0, "a", "Banks", 0.6, 0.02), ("P", 0, "t", "Tech", 0.4, 0.05)])
    benchmark = _holdings([("P", 0, "a", "Banks", 0.7, 0.02), ("P", 0, "e", "Energy", 0.3, -0.01)])
    sectors = sector_inputs(portfolio, benchmark)
    assert sectors["sector"].to_list() == ["Banks", "Energy", "Tech"]
    assert sectors["portfolio_weight"].to_list() == [0.6, 0.0, 0.4]
    assert sectors["portfolio_return"].to_list()[1] is None and sectors["benchmark_return"].to_list()[2] is None
    b = 0.7 * 0.02 + 0.3 * -0.01
    bf = {row["sector"]: row for row in brinson(sectors, "BF").iter_rows(named=True)}
    # Energy (benchmark only): rp taken as rb, so no selection or interaction
    assert (bf["Energy"]["selection"], bf["Energy"]["interaction"]) == (0.0, 0.0)
    assert bf["Energy"]["allocation"] == pytest.approx(-0.3 * (-0.01 - b), abs=1e-16)
    # Tech (portfolio only): rb taken as B, so no BF allocation; the picking is interaction
    assert (bf["Tech"]["allocation"], bf["Tech"]["selection"]) == (0.0, 0.0)
    assert bf["Tech"]["interaction"] == pytest.approx(0.4 * (0.05 - b), abs=1e-16)
    assert sum(r["total_effect"] for r in bf.values()) == pytest.approx(0.6 * 0.02 + 0.4 * 0.05 - b, abs=1e-16)
    bhb = {row["sector"]: row for row in brinson(sectors, "BHB", "in_selection").iter_rows(named=True)}
    assert bhb["Tech"]["allocation"] == pytest.approx(0.4 * b, abs=1e-16)
    assert bhb["Tech"]["selection"] == pytest.approx(0.4 * (0.05 - b), abs=1e-16)


def test_weights_netting_to_zero_give_a_null_return_and_a_note():
    portfolio = _holdings(
        [("P", 0, "l", "Tech", 0.3, 0.04), ("P", 0, "s", "Tech", -0.3, 0.01), ("P", 0, "x", None, 1.0, 0.002)]
    )
    benchmark = _holdings([("P", 0, "x", None, 1.0, 0.002), ("P", 0, "z", "Energy", 0.0, 0.03)])
    sectors = sector_inputs(portfolio, benchmark)
    rows = {r["sector"]: r for r in sectors.iter_rows(named=True)}
    assert rows["Tech"]["portfolio_weight"] == 0.0 and rows["Tech"]["portfolio_return"] is None
    assert rows["Tech"]["note"] == PORTFOLIO_NET_ZERO
    # a zero weight that earned nothing is not worth a note; a holding without a sector is UNCLASSIFIED
    assert rows["Energy"]["benchmark_return"] is None and rows["Energy"]["note"] is None
    assert rows[UNCLASSIFIED]["portfolio_return"] == pytest.approx(0.002)
    out = brinson(sectors)
    assert out.filter(pl.col("sector") == "Tech")["note"].to_list() == [PORTFOLIO_NET_ZERO]
    assert np.isfinite(out.select(EFFECTS).to_numpy()).all()
    # a benchmark long/short pair is flagged the same way
    bench_pair = _holdings([("P", 0, "l", "Tech", 0.2, 0.04), ("P", 0, "s", "Tech", -0.2, 0.01), ("P", 0, "x", None, 1.0, 0.0)])
    both = sector_inputs(portfolio, bench_pair).filter(pl.col("sector") == "Tech")
    assert both["note"].to_list() == [f"{PORTFOLIO_NET_ZERO}; {BENCHMARK_NET_ZERO}"]


def test_a_day_without_benchmark_holdings_is_noted():
    portfolio = _holdings([("P", 0, "a", "Banks", 1.0, 0.01), ("P", 1, "a", "Banks", 1.0, 0.02)])
    benchmark = _holdings([("P", 0, "a", "Banks", 1.0, 0.01)])
    totals = total_returns(portfolio, benchmark)
    assert totals["note"].to_list() == [None, NO_BENCHMARK_HOLDINGS]
    assert totals["benchmark_return"].to_list() == [0.01, 0.0]


def test_unusable_periods_are_flagged_not_nan():
    daily = pl.concat([_daily_rows("P", HAND_EFFECTS), _daily_rows("Q", HAND_EFFECTS)])
    totals = pl.concat([_totals("P", [0.01, -1.2, 0.0], [0.0, 0.01, 0.02]), _totals("Q", HAND_R, HAND_B)])
    for method in LINK_METHODS:
        linked = link(daily, totals, method)
        p = linked.filter(pl.col("portfolio_id") == "P")
        assert p["note"].to_list() == [CANNOT_LINK] * 3
        assert p.select(pl.col([*EFFECTS, "total_effect"]).null_count()).row(0) == (3, 3, 3, 3)
        assert linked.filter(pl.col("portfolio_id") == "Q")["note"].null_count() == 3
        summary = link_summary(linked, totals)
        # (Q's made-up effects do not add up to its excess: only the null matters here)
        assert summary["residual"].to_list()[0] is None and summary["residual"][1] is not None
        assert summary["note"].to_list() == [CANNOT_LINK, None]
    unknown = _totals("P", [0.01, None, 0.0], [0.0, 0.01, 0.02])
    linked = link(_daily_rows("P", HAND_EFFECTS), unknown, "grap")
    assert linked["note"].to_list() == [CANNOT_LINK] * 3
    summary = link_summary(linked, unknown)
    assert summary.row(0, named=True)["portfolio_return"] is None and summary["excess_return"][0] is None


# --- contribution to return ------------------------------------------------------------------


def test_contribution_by_hand():
    # day 1: a earns 0.6 * 10%, b 0.4 * -5% -> R_1 = 4%; day 2: a 0.5 * 2%, b 0.5 * 4% -> R_2 = 3%
    positions = _holdings(
        [
            ("P", 0, "a", None, 0.6, 0.10),
            ("P", 0, "b", None, 0.4, -0.05),
            ("P", 1, "a", None, 0.5, 0.02),
            ("P", 1, "b", None, 0.5, 0.04),
        ]
    ).drop("sector")
    out = contribution(positions)
    assert out.schema == pl.Schema(CONTRIBUTION_SCHEMA)
    assert out["contribution"].to_list() == pytest.approx([0.06 + 0.01 * 1.04, -0.02 + 0.02 * 1.04], abs=1e-16)
    assert out["contribution"].sum() == pytest.approx(1.04 * 1.03 - 1, abs=1e-15)
    assert out["average_weight"].to_list() == pytest.approx([0.55, 0.45])
    assert out["start_date"].to_list() == [D0, D0] and out["end_date"].to_list() == [D0 + timedelta(days=1)] * 2
    carino = contribution(positions, "carino")
    k1, k2, big_k = math.log(1.04) / 0.04, math.log(1.03) / 0.03, math.log(1.04 * 1.03) / (1.04 * 1.03 - 1)
    expected = [(0.06 * k1 + 0.01 * k2) / big_k, (-0.02 * k1 + 0.02 * k2) / big_k]
    assert carino["contribution"].to_list() == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("linking", ["compound", "carino"])
def test_contributions_sum_to_the_cumulative_return(book, linking):
    portfolio = book[0].drop("sector")
    out = contribution(portfolio.sample(fraction=1.0, shuffle=True, seed=1), linking)
    daily = portfolio.group_by("portfolio_id", "date").agg((pl.col("weight") * pl.col("return")).sum().alias("r"))
    cumulative = daily.group_by("portfolio_id").agg(((pl.col("r") + 1).product() - 1).alias("cumulative"))
    check = out.group_by("portfolio_id").agg(pl.col("contribution").sum()).join(cumulative, on="portfolio_id")
    assert check.height == 3
    assert (check["contribution"] - check["cumulative"]).abs().max() < 1e-12
    # a position held some days only: its average weight counts the other days as 0
    weights = portfolio.group_by("portfolio_id", "instrument_id").agg(pl.col("weight").sum() / 40)
    got = out.select("portfolio_id", "instrument_id", pl.col("average_weight").alias("weight"))
    assert_frame_equal(got, weights.sort("portfolio_id", "instrument_id"))


def test_carino_contribution_of_a_wiped_out_day_is_flagged():
    positions = _holdings([("P", 0, "a", None, 1.0, -1.0), ("P", 1, "a", None, 1.0, 0.1)]).drop("sector")
    assert contribution(positions)["contribution"].to_list() == [-1.0]
    out = contribution(positions, "carino")
    assert out["contribution"].to_list() == [None] and out["note"].to_list() == [CANNOT_LINK_CONTRIBUTION]


# --- bad input -------------------------------------------------------------------------------


def _set(frame, column, where, value):
    return frame.with_columns(pl.when(where).then(pl.lit(value, pl.Float64)).otherwise(pl.col(column)).alias(column))


def test_bad_input_is_refused_with_a_clear_error():
    portfolio, benchmark = _holdings(BACON_PORTFOLIO), _holdings(BACON_BENCHMARK)
    with pytest.raises(ValueError, match=r"portfolio: missing column\(s\) \['sector'\]"):
        sector_inputs(portfolio.drop("sector"), benchmark)
    with pytest.raises(ValueError, match="benchmark: 1 duplicate"):
        sector_inputs(portfolio, pl.concat([benchmark, benchmark.head(1)]))
    with pytest.raises(ValueError, match="column 'return' has 1 null"):
        total_returns(_set(portfolio, "return", pl.col("instrument_id") == "jp", None), benchmark)
    with pytest.raises(ValueError, match="column 'weight' has 1 null, NaN or infinite"):
        sector_inputs(portfolio, _set(benchmark, "weight", pl.col("instrument_id") == "jp", float("nan")))
    with pytest.raises(ValueError, match="portfolio: column 'weight' cannot be read as Float64"):
        sector_inputs(portfolio.with_columns(pl.lit("ten").alias("weight")), benchmark)
    sectors = sector_inputs(portfolio, benchmark)
    with pytest.raises(ValueError, match="unknown Brinson method 'bf'"):
        brinson(sectors, "bf")
    with pytest.raises(ValueError, match="unknown interaction"):
        brinson(sectors, "BF", "ignore")
    with pytest.raises(ValueError, match="sectors: 1 duplicate"):
        brinson(pl.concat([sectors, sectors.head(1)]))
    with pytest.raises(ValueError, match="column 'portfolio_return' has 1 NaN or infinite"):
        brinson(_set(sectors, "portfolio_return", pl.col("sector") == "UK", float("inf")))
    with pytest.raises(ValueError, match="1 row.s. with a benchmark_weight but a null benchmark_return"):
        brinson(_set(sectors, "benchmark_return", pl.col("sector") == "US", None))
    daily, totals = _daily_rows("P", HAND_EFFECTS), _totals("P", HAND_R, HAND_B)
    with pytest.raises(ValueError, match="unknown linking method 'geometric'"):
        link(daily, totals, "geometric")
    with pytest.raises(ValueError, match=r"daily: 1 \(portfolio_id, date\) pair\(s\) have no row in totals"):
        link(daily, totals.head(2), "carino")
    with pytest.raises(ValueError, match="totals: 1 duplicate"):
        link(daily, pl.concat([totals, totals.tail(1)]), "carino")
    with pytest.raises(ValueError, match="column 'selection' has 1 null"):
        link(_set(daily, "selection", (pl.col("sector") == "C") & (pl.col("date") == D0), None), totals, "grap")
    linked = link(daily, totals, "carino")
    with pytest.raises(ValueError, match="totals do not cover the periods"):
        link_summary(linked, totals.head(2))
    with pytest.raises(ValueError, match="unknown contribution linking"):
        contribution(portfolio.drop("sector"), "menchero")
