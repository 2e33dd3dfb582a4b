"""Cash balances in the base currency and margin (transforms.margin), worked by hand."""

from datetime import datetime, timezone

import polars as pl
import pytest

from transforms.contract import CASH_BALANCES_BASE_SCHEMA, MARGIN_SCHEMA
from transforms.margin import MarginRules, account_types, cash_balances_base, margin

AS_OF = datetime(2026, 10, 30, 21, tzinfo=timezone.utc)


def _state(rows):
    """(portfolio, settled cash, pending cash, long mv, short mv) -> portfolio_state rows."""
    return pl.DataFrame(
        {
            "portfolio_id": [r[0] for r in rows],
            "base_currency": ["USD"] * len(rows),
            "as_of": [AS_OF] * len(rows),
            "settled_cash": [r[1] for r in rows],
            "pending_cash": [r[2] for r in rows],
            "long_market_value": [r[3] for r in rows],
            "short_market_value": [r[4] for r in rows],
            "total_value": [r[1] + r[2] + r[3] + r[4] for r in rows],
        }
    )


def _positions(rows):
    return pl.DataFrame(rows, schema=["portfolio_id", "instrument_id", "position_type", "fx_rate"], orient="row")


def test_requirements_excess_and_buying_power_by_hand():
    state = _state([
        ("HEALTHY", 60_000.0, 0.0, 100_000.0, -40_000.0),
        ("CALLED", -50_000.0, 0.0, 100_000.0, -40_000.0),
        ("CASHACC", -1_000.0, 5_000.0, 20_000.0, 0.0),
    ])
    positions = _positions([("HEALTHY", "X", "SHORT", 1.0), ("CALLED", "X", "SHORT", 1.0), ("CASHACC", "Y", "LONG", 1.0)])
    accounts = account_types(positions, state)
    out = margin(state, accounts)
    assert out.schema == pl.Schema(MARGIN_SCHEMA)
    rows = {r["portfolio_id"]: r for r in out.iter_rows(named=True)}
    h = rows["HEALTHY"]
    # equity 120,000; initial 50% x 100,000 + 50% x 40,000 = 70,000; maintenance 25,000 + 12,000
    assert h["account_type"] == "MARGIN" and h["equity"] == 120_000.0
    assert (h["initial_requirement"], h["maintenance_requirement"]) == pytest.approx((70_000.0, 37_000.0))
    assert (h["excess"], h["initial_excess"], h["buying_power"]) == pytest.approx((83_000.0, 50_000.0, 100_000.0))
    assert not h["margin_call"]
    c = rows["CALLED"]  # equity 10,000 under the 37,000 maintenance: a 27,000 deficit
    assert c["excess"] == pytest.approx(-27_000.0) and c["margin_call"] and c["buying_power"] == 0.0
    k = rows["CASHACC"]  # a cash account with negative settled cash: flagged, no margin call
    assert k["account_type"] == "CASH" and k["negative_settled_cash"] and not k["margin_call"]
    assert k["buying_power"] == 0.0
    listed = margin(state, account_types(positions, state, ["CASHACC"]))
    assert listed.filter(pl.col("portfolio_id") == "CASHACC")["account_type"].item() == "MARGIN"
    stricter = margin(state, accounts, MarginRules(long_maintenance=0.5))
    assert stricter.filter(pl.col("portfolio_id") == "HEALTHY")["maintenance_requirement"].item() == pytest.approx(62_000.0)


def test_rule_sets_that_make_no_sense_are_refused():
    with pytest.raises(ValueError, match="maintenance <= initial"):
        MarginRules(long_initial=0.25, long_maintenance=0.5)
    with pytest.raises(ValueError, match="100% is the proceeds"):
        MarginRules(short_initial=0.5)


def test_cash_balances_in_the_base_currency():
    balances = pl.DataFrame(
        {
            "portfolio_id": ["P", "P", "Q"],
            "currency": ["EUR", "USD", "USD"],
            "settled_cash": [-100.0, 500.0, -5.0],
            "pending_cash": [40.0, 0.0, 0.0],
            "total_cash": [-60.0, 500.0, -5.0],
            "last_ts": [AS_OF] * 3,
        }
    )
    positions = _positions([("P", "CASH:EUR", "CASH", 1.2), ("P", "CASH:USD", "CASH", 1.0), ("Q", "CASH:USD", "CASH", 1.0)])
    accounts = pl.DataFrame({"portfolio_id": ["P", "Q"], "account_type": ["CASH", "MARGIN"]})
    out = cash_balances_base(balances, positions, accounts)
    assert out.schema == pl.Schema(CASH_BALANCES_BASE_SCHEMA)
    eur = out.row(0, named=True)
    assert (eur["settled_cash_base"], eur["pending_cash_base"], eur["total_cash_base"]) == pytest.approx((-120.0, 48.0, -72.0))
    # a cash account's negative settled euros are flagged; a margin account's negative cash is a loan
    assert out["negative_settled_cash"].to_list() == [True, False, False]
    unknown = cash_balances_base(balances, positions.filter(pl.col("instrument_id") != "CASH:EUR"), accounts)
    assert unknown.row(0, named=True)["total_cash_base"] is None
