"""Stress tests (transforms.stress): scenario YAML and its errors, named scenarios by hand
(sector over asset class, currency compounding, cash, factor shocks) and historical worst days
against a direct numpy computation."""

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from transforms.contract import ASSET_CLASSES
from transforms.covariance import ReturnMatrix, sector_factor_model
from transforms.stress import (
    CASH_ONLY,
    DEFAULT_SCENARIOS_YAML,
    NO_COVERED,
    STRESS_SCHEMA,
    Scenario,
    apply_scenarios,
    historical_scenarios,
    parse_scenarios,
)

SECTORS = (
    "Technology", "Financials", "Health Care", "Industrials", "Consumer Discretionary", "Consumer Staples", "Energy",
    "Utilities", "Materials", "Communication Services", "Government Bonds", "Corporate Bonds", "Municipal Bonds",
    "Energy Commodities", "Precious Metals", "Agriculture", "Real Estate", "Money Market",
)  # fmt: skip

YAML = """
scenarios:
  - name: crash
    description: equities down, tech worse, euro down
    shocks:
      asset_class: {EQUITY: -0.30, FIXED_INCOME: 0.05}
      sector: {Technology: -0.50}
      currency: {EUR: -0.10}
  - name: dollar_down
    shocks:
      currency: {USD: -0.20}
"""


def _holdings(rows):
    """(portfolio, instrument, market_value, sector, asset_class, currency, nav, base)."""
    keys = ("portfolio_id", "instrument_id", "market_value", "sector", "asset_class", "currency", "nav", "base_currency")
    return pl.DataFrame(
        {k: [r[i] for r in rows] for i, k in enumerate(keys)},
        schema={k: pl.Float64 if k in ("market_value", "nav") else pl.String for k in keys},
    )


BOOK = [
    ("US", "TECH1", 400.0, "Technology", "EQUITY", "USD", 1000.0, "USD"),
    ("US", "BANK1", 300.0, "Financials", "EQUITY", "USD", 1000.0, "USD"),
    ("US", "BUND", 200.0, "Government Bonds", "FIXED_INCOME", "EUR", 1000.0, "USD"),
    ("US", "CASH:EUR", 100.0, None, None, "EUR", 1000.0, "USD"),
    ("EU", "TECH1", 500.0, "Technology", "EQUITY", "USD", 800.0, "EUR"),
    ("EU", "SHORT", -100.0, "Energy", "EQUITY", "EUR", 800.0, "EUR"),
    ("EU", "CASH:EUR", 400.0, None, None, "EUR", 800.0, "EUR"),
    ("CASHONLY", "CASH:USD", 50.0, None, None, "USD", 50.0, "USD"),
]


# --- parsing ----------------------------------------------------------------------------------


def test_default_scenarios_parse_and_use_known_names():
    scenarios = parse_scenarios(DEFAULT_SCENARIOS_YAML, sectors=SECTORS)
    assert 4 <= len(scenarios) <= 6
    assert scenarios[0].name == "equity_crash_2008_style" and scenarios[0].description
    for s in scenarios:
        assert set(s.shocks.get("asset_class", {})) <= set(ASSET_CLASSES)
        assert set(s.shocks.get("currency", {})) <= {"USD", "EUR"}
        assert all(-1 < v < 1 for values in s.shocks.values() for v in values.values())


def test_parse_scenarios():
    crash, dollar = parse_scenarios(YAML)
    assert crash == Scenario(
        "crash",
        "equities down, tech worse, euro down",
        {"asset_class": {"EQUITY": -0.30, "FIXED_INCOME": 0.05}, "sector": {"Technology": -0.50}, "currency": {"EUR": -0.10}},
    )
    assert dollar.description == "" and dollar.shocks == {"currency": {"USD": -0.20}}
    # a parsed mapping is accepted as well as text
    assert parse_scenarios({"scenarios": [{"name": "x", "shocks": {"sector": {"Energy": 0.1}}}]})[0].name == "x"


@pytest.mark.parametrize(
    "scenarios, message",
    [
        ("- name: a", "mapping with a 'scenarios' list"),
        ("scenarios: [ {name: a", "does not parse"),
        ("scenarios:\n  - description: nameless\n    shocks: {sector: {Energy: -0.1}}", "scenario #1 has no name"),
        ("scenarios:\n  - {name: a, shocks: {sector: {Energy: -0.1}}}\n  - {name: a, shocks: {sector: {Energy: -0.2}}}", "duplicate scenario name 'a'"),
        ("scenarios:\n  - {name: a, shocks: {region: {Europe: -0.1}}}", "scenario 'a': unknown shock dimension 'region'"),
        ("scenarios:\n  - {name: a, shocks: {sector: {Energy: -1.0}}}", r"scenario 'a': shock sector.Energy = -1.0 is at or below -100%"),
        ("scenarios:\n  - {name: a, shocks: {sector: {Energy: -1.5}}}", r"scenario 'a': shock sector.Energy = -1.5"),
        ("scenarios:\n  - {name: a, shocks: {sector: {Energy: lots}}}", r"scenario 'a': shock sector.Energy must be a number"),
        ("scenarios:\n  - {name: a, shocks: {sector: {Energy: .nan}}}", r"scenario 'a': shock sector.Energy is not finite"),
        ("scenarios:\n  - {name: a, shocks: {asset_class: {EQUITIES: -0.1}}}", "scenario 'a': unknown asset_class 'EQUITIES'"),
        ("scenarios:\n  - {name: a, shocks: {currency: {euro: -0.1}}}", "scenario 'a': currency 'euro' is not an ISO code"),
        ("scenarios:\n  - {name: a, shocks: {}}", "scenario 'a': shocks must be a non-empty mapping"),
        ("scenarios:\n  - {name: a, shock: {sector: {Energy: -0.1}}}", "scenario 'a': unknown key"),
        ("scenarios: []\nextra: 1", "unknown top-level key"),
    ],
)
def test_bad_yaml_names_the_scenario_and_the_problem(scenarios, message):
    with pytest.raises(ValueError, match=message):
        parse_scenarios(scenarios)


def test_unknown_sector_when_sectors_are_given():
    with pytest.raises(ValueError, match="scenario 'a': unknown sector 'Tech'"):
        parse_scenarios("scenarios:\n  - {name: a, shocks: {sector: {Tech: -0.1}}}", sectors=SECTORS)


# --- named scenarios ----------------------------------------------------------------------------


def test_named_scenarios_by_hand():
    out = apply_scenarios(_holdings(BOOK), YAML)
    assert out.schema == pl.Schema(STRESS_SCHEMA)
    assert out.select("portfolio_id", "scenario").rows() == [
        ("CASHONLY", "crash"), ("CASHONLY", "dollar_down"), ("EU", "crash"), ("EU", "dollar_down"), ("US", "crash"), ("US", "dollar_down"),
    ]  # fmt: skip
    pnl = {(r["portfolio_id"], r["scenario"]): r for r in out.iter_rows(named=True)}
    # US (base USD), crash: TECH1 sector -50% (overrides EQUITY -30%); BANK1 EQUITY -30%;
    # BUND FIXED_INCOME +5% and EUR -10%: 1.05 * 0.9 - 1; euro cash -10% (no price shock)
    us = 400 * -0.5 + 300 * -0.3 + 200 * (1.05 * 0.9 - 1) + 100 * -0.1
    assert pnl[("US", "crash")]["pnl"] == pytest.approx(us, rel=1e-14)
    assert pnl[("US", "crash")]["pnl_pct_nav"] == pytest.approx(us / 1000, rel=1e-14)
    # EU (base EUR), crash: the euro falls 10% so dollar assets gain 1 / 0.9 - 1 in euros
    eu = 500 * (0.5 / 0.9 - 1) + -100 * -0.3 + 400 * 0.0
    assert pnl[("EU", "crash")]["pnl"] == pytest.approx(eu, rel=1e-14)
    # dollar_down: USD -20% against the unshocked EUR: euro holdings of a USD portfolio gain
    # 1 / 0.8 - 1 = 25%; dollar holdings of a EUR portfolio lose 20%
    assert pnl[("US", "dollar_down")]["pnl"] == pytest.approx(300 * 0.25, rel=1e-14)
    assert pnl[("EU", "dollar_down")]["pnl"] == pytest.approx(500 * -0.2, rel=1e-14)
    assert pnl[("CASHONLY", "crash")]["pnl"] == 0.0 and pnl[("CASHONLY", "dollar_down")]["pnl"] == pytest.approx(0.0)
    assert out["note"].null_count() == out.height and out["kind"].unique().to_list() == ["named"]
    assert out["scenario_date"].null_count() == out.height


def test_row_order_and_portfolio_independence():
    scenarios = parse_scenarios(YAML)
    out = apply_scenarios(_holdings(BOOK), scenarios)
    assert out.equals(apply_scenarios(_holdings(BOOK[::-1]), scenarios))
    eu = apply_scenarios(_holdings([r for r in BOOK if r[0] == "EU"]), scenarios)
    assert eu.equals(out.filter(pl.col("portfolio_id") == "EU"))


def test_factor_shocks_use_the_model_exposures():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 0.01, (100, 3))
    model = sector_factor_model(x, ["Technology", "Financials", "Technology"], ["TECH1", "BANK1", "TECH2"])
    scenarios = parse_scenarios("scenarios:\n  - {name: f, shocks: {factor: {Technology: -0.2}, sector: {Financials: 0.1}}}")
    out = apply_scenarios(_holdings(BOOK), scenarios, factor_model=model)
    us = out.filter(pl.col("portfolio_id") == "US").row(0, named=True)
    # TECH1: its factor exposure times -20%; BANK1: its sector shock; BUND: in no sector
    # shock and not in the model, so not shocked, and the note says so
    assert us["pnl"] == pytest.approx(400 * -0.2 + 300 * 0.1, rel=1e-14)
    assert us["note"] == "1 position(s) without factor exposures not shocked"
    with pytest.raises(ValueError, match="scenario 'f' shocks factors: apply_scenarios needs a factor_model"):
        apply_scenarios(_holdings(BOOK), scenarios)
    bad = parse_scenarios("scenarios:\n  - {name: g, shocks: {factor: {Momentum: -0.2}}}")
    with pytest.raises(ValueError, match="scenario 'g': unknown factor 'Momentum'"):
        apply_scenarios(_holdings(BOOK), bad, factor_model=model)


def test_cash_takes_no_price_shock():
    rows = [("C", "CASH:USD", 100.0, None, "CASH_EQUIVALENT", "USD", 200.0, "USD"),
            ("C", "MMF", 100.0, "Money Market", "CASH_EQUIVALENT", "USD", 200.0, "USD")]  # fmt: skip
    out = apply_scenarios(_holdings(rows), "scenarios:\n  - {name: a, shocks: {asset_class: {CASH_EQUIVALENT: -0.5}}}")
    assert out["pnl"].to_list() == [-50.0]  # the money market fund only


def test_named_bad_input():
    with pytest.raises(ValueError, match="scenario 'hand': shock sector.Energy = -2.0 is at or below -100%"):
        apply_scenarios(_holdings(BOOK), [Scenario("hand", "", {"sector": {"Energy": -2.0}})])
    with pytest.raises(ValueError, match="base_currency"):
        apply_scenarios(_holdings(BOOK).drop("base_currency"), YAML)
    # without currency shocks base_currency is not needed
    assert apply_scenarios(_holdings(BOOK).drop("base_currency"), "scenarios:\n  - {name: a, shocks: {sector: {Energy: -0.1}}}").height == 3
    with pytest.raises(ValueError, match="missing column"):
        apply_scenarios(_holdings(BOOK).drop("market_value"), YAML)
    with pytest.raises(ValueError, match="duplicate key"):
        apply_scenarios(_holdings(BOOK + BOOK[:1]), YAML)
    with pytest.raises(ValueError, match="more than one nav"):
        apply_scenarios(_holdings(BOOK + [("US", "X", 1.0, "Energy", "EQUITY", "USD", 999.0, "USD")]), YAML)
    zero_nav = apply_scenarios(_holdings([("Z", "TECH1", 10.0, "Technology", "EQUITY", "USD", 0.0, "USD")]), YAML)
    assert zero_nav["pnl_pct_nav"].null_count() == 2 and set(zero_nav["note"]) == {"nav is zero or negative"}


# --- historical scenarios -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def history():
    rng = np.random.default_rng(8)
    days = [date(2023, 1, 2) + timedelta(days=i) for i in range(60)]
    ids = ["BANK1", "BUND", "SHORT", "TECH1"]
    x = rng.normal(0, 0.015, (60, 4))
    frame = pl.DataFrame({"instrument_id": np.repeat(ids, 60), "date": days * 4, "return": x.T.ravel()})
    return frame, x, ids, days


def test_historical_worst_days_against_numpy(history):
    frame, x, ids, days = history
    out = historical_scenarios(_holdings(BOOK), frame, worst=3)
    assert out.schema == pl.Schema(STRESS_SCHEMA)
    us = out.filter(pl.col("portfolio_id") == "US")
    mv = np.array([300.0, 200.0, 0.0, 400.0])  # BANK1, BUND, SHORT, TECH1; cash not replayed
    pnl = x @ mv
    worst = np.argsort(pnl, kind="stable")[:3]
    assert us["scenario"].to_list() == ["worst_day_1", "worst_day_2", "worst_day_3"]
    assert us["scenario_date"].to_list() == [days[i] for i in worst]
    assert us["pnl"].to_list() == pytest.approx(pnl[worst].tolist(), rel=1e-13)
    assert us["pnl_pct_nav"].to_list() == pytest.approx((pnl[worst] / 1000).tolist(), rel=1e-13)
    assert us["kind"].unique().to_list() == ["historical"] and us["note"].null_count() == 3
    eu = out.filter(pl.col("portfolio_id") == "EU")
    pnl_eu = x @ np.array([0.0, 0.0, -100.0, 500.0])
    assert eu["pnl"].to_list() == pytest.approx(np.sort(pnl_eu)[:3].tolist(), rel=1e-13)
    cash = out.filter(pl.col("portfolio_id") == "CASHONLY").row(0, named=True)
    assert (cash["scenario"], cash["scenario_date"], cash["pnl"], cash["note"]) == ("worst_day_1", None, 0.0, CASH_ONLY)
    # row order does not matter; a ReturnMatrix gives the same as the long frame
    assert out.equals(historical_scenarios(_holdings(BOOK[::-1]), frame.reverse(), worst=3))
    matrix = ReturnMatrix(tuple(ids), pl.Series("date", days), x)
    assert out.equals(historical_scenarios(_holdings(BOOK), matrix, worst=3))


def test_historical_holdings_without_history_are_flagged(history):
    frame, x, _, _ = history
    rows = BOOK + [
        ("US", "NEWIPO", 100.0, "Technology", "EQUITY", "USD", 1000.0, "USD"),
        ("GHOST", "NEWIPO", 10.0, "Technology", "EQUITY", "USD", 10.0, "USD"),
    ]
    out = historical_scenarios(_holdings(rows), frame, worst=2)
    us = out.filter(pl.col("portfolio_id") == "US")
    assert us["pnl"].to_list() == pytest.approx(np.sort(x @ np.array([300.0, 200.0, 0.0, 400.0]))[:2].tolist(), rel=1e-13)
    assert set(us["note"]) == {"1 position(s) without return history not replayed"}
    ghost = out.filter(pl.col("portfolio_id") == "GHOST").row(0, named=True)
    assert ghost["pnl"] is None and ghost["pnl_pct_nav"] is None and ghost["note"] == NO_COVERED
    # more worst days than days of history: every day, ranks zero-padded so they sort
    many = historical_scenarios(_holdings(BOOK[:1]), frame, worst=100)
    assert many.height == 60 and many["scenario"][0] == "worst_day_01" and many["scenario"].is_sorted()
    assert many["pnl"].is_sorted()
    with pytest.raises(ValueError, match="worst must be"):
        historical_scenarios(_holdings(BOOK), frame, worst=0)
