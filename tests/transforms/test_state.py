"""Portfolio state: one row per portfolio, checked against hand computations."""

from __future__ import annotations

from datetime import date, datetime, time, timezone

import polars as pl
import pytest

from transforms.cash import cash_ledger
from transforms.contract import LANDING_SCHEMAS, LOTS_SCHEMA, PORTFOLIO_STATE_SCHEMA, REALIZED_PNL_SCHEMA
from transforms.positions import positions
from transforms.lots import build_ledger
from transforms.state import portfolio_state, realized_by_portfolio

UTC = timezone.utc
D2, D3, D4, D5 = (date(2024, 1, d) for d in (2, 3, 4, 5))
AS_OF = datetime.combine(D4, time(23), tzinfo=UTC)


def mk(schema: dict, rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame([{c: r.get(c) for c in schema} for r in rows], schema=schema)


def at(d: date, hour: int = 15) -> datetime:
    return datetime.combine(d, time(hour), tzinfo=UTC)


INSTRUMENTS = mk(LANDING_SCHEMAS["instruments"], [
    {"instrument_id": "AAA", "currency": "USD"}, {"instrument_id": "BBB", "currency": "USD"},
    {"instrument_id": "EEE", "currency": "EUR"},
])
PORTFOLIOS = mk(LANDING_SCHEMAS["portfolios"], [
    {"portfolio_id": "P1", "portfolio_name": "Alpha", "status": "ACTIVE", "base_currency": "USD",
     "inception_date": date(2024, 1, 1)},
    {"portfolio_id": "P2", "portfolio_name": "Empty", "status": "CLOSED", "base_currency": "USD",
     "inception_date": date(2024, 1, 1)},
])
PRICES = mk(LANDING_SCHEMAS["prices"], [
    {"instrument_id": "AAA", "date": D4, "close": 12.0},
    {"instrument_id": "BBB", "date": D4, "close": 18.0},
    {"instrument_id": "EEE", "date": D4, "close": 100.0},
])
FX = mk(LANDING_SCHEMAS["fx_rates"], [
    {"date": D2, "currency": "EUR", "usd_per_unit": 1.10},
    {"date": D4, "currency": "EUR", "usd_per_unit": 1.20},
])
TRADES = mk(LANDING_SCHEMAS["trades"], [
    {"trade_id": "T1", "portfolio_id": "P1", "instrument_id": "AAA", "trade_ts": at(D2), "settle_date": D4,
     "side": "BUY", "quantity": 100.0, "price": 10.0, "fees": 1.0},
    {"trade_id": "T2", "portfolio_id": "P1", "instrument_id": "BBB", "trade_ts": at(D3), "settle_date": D5,
     "side": "SELL_SHORT", "quantity": 50.0, "price": 20.0, "fees": 1.0},
    {"trade_id": "T3", "portfolio_id": "P1", "instrument_id": "EEE", "trade_ts": at(D2), "settle_date": D4,
     "side": "BUY", "quantity": 20.0, "price": 100.0, "fees": 0.0},
    {"trade_id": "T4", "portfolio_id": "P1", "instrument_id": "EEE", "trade_ts": at(D3), "settle_date": D5,
     "side": "SELL", "quantity": 10.0, "price": 105.0, "fees": 0.0},
])
FLOWS = mk(LANDING_SCHEMAS["cash_flows"], [
    {"flow_id": "F1", "portfolio_id": "P1", "ts": at(D2, 9), "type": "DEPOSIT", "amount": 10_000.0, "currency": "USD"},
    {"flow_id": "F2", "portfolio_id": "P1", "ts": at(D4, 16), "type": "DIVIDEND", "amount": 30.0, "currency": "USD"},
    {"flow_id": "F3", "portfolio_id": "P1", "ts": at(D5, 9), "type": "FEE", "amount": 7.0, "currency": "USD"},  # after
])


def lot(lid, inst, ptype, ts, px, qty, basis):
    return {"portfolio_id": "P1", "instrument_id": inst, "lot_id": lid, "position_type": ptype, "open_trade_id": lid,
            "open_ts": ts, "open_price": px, "original_quantity": qty, "quantity": qty, "cost_basis": basis,
            "wash_sale_adjustment": 0.0, "tax_basis": basis, "holding_start": ts.date(), "status": "OPEN"}


LOTS = mk(LOTS_SCHEMA, [
    lot("T1", "AAA", "LONG", at(D2), 10.0, 100.0, 1001.0),
    lot("T2", "BBB", "SHORT", at(D3), 20.0, 50.0, 999.0),
    {**lot("T3", "EEE", "LONG", at(D2), 100.0, 20.0, 1000.0), "original_quantity": 20.0, "quantity": 10.0},
])
REALIZED = mk(REALIZED_PNL_SCHEMA, [
    {"portfolio_id": "P1", "instrument_id": "EEE", "trade_id": "T4", "lot_id": "T3", "position_type": "LONG",
     "close_ts": at(D3), "quantity": 10.0, "proceeds": 1050.0, "cost_basis": 1000.0, "realized_pnl": 50.0},
    {"portfolio_id": "P1", "instrument_id": "AAA", "trade_id": "TX", "lot_id": "TY", "position_type": "LONG",
     "close_ts": at(D5), "quantity": 1.0, "proceeds": 1.0, "cost_basis": 0.0, "realized_pnl": 1.0},  # after as_of
])


@pytest.fixture(scope="module")
def state() -> pl.DataFrame:
    ledger = cash_ledger(TRADES, FLOWS, INSTRUMENTS)
    pos = positions(LOTS, ledger, PRICES, FX, INSTRUMENTS, PORTFOLIOS, AS_OF)
    return portfolio_state(pos, REALIZED, PORTFOLIOS, AS_OF, FX, instruments=INSTRUMENTS, cash_ledger=ledger)


def test_schema_and_one_row_per_portfolio(state):
    assert state.schema == pl.Schema(PORTFOLIO_STATE_SCHEMA)
    assert state["portfolio_id"].to_list() == ["P1", "P2"]
    assert state["as_of"].to_list() == [AS_OF, AS_OF]


def test_hand_computed_state(state):
    s = state.row(0, named=True)
    usd_cash = 10_000 - 1001 + 999 + 30  # the FEE on the 5th is after as_of
    eur_cash = -2000 + 1050  # in EUR, at 1.20
    settled = 10_000 - 1001 + 30 - 2000 * 1.20  # T2 and T4 settle on the 5th
    long_mv, short_mv = 1200.0 + 10 * 100 * 1.20, -900.0
    cash = usd_cash + eur_cash * 1.20
    assert (s["portfolio_name"], s["status"], s["base_currency"]) == ("Alpha", "ACTIVE", "USD")
    assert s["cash_balance"] == pytest.approx(cash, abs=1e-9)
    assert s["settled_cash"] == pytest.approx(settled, abs=1e-9)
    assert s["pending_cash"] == pytest.approx(cash - settled, abs=1e-9)
    assert s["long_market_value"] == pytest.approx(long_mv, abs=1e-9)
    assert s["short_market_value"] == pytest.approx(short_mv, abs=1e-9)
    assert s["total_value"] == pytest.approx(cash + long_mv + short_mv, abs=1e-9)
    # unrealised: AAA 199, BBB 99, EEE 1200 - 1000 * 1.10 (cost at open fx)
    assert s["unrealized_pnl"] == pytest.approx(199 + 99 + 1200 - 1100, abs=1e-9)
    assert s["realized_pnl"] == pytest.approx(50 * 1.10, abs=1e-9)  # close-date fx; the later close excluded
    assert s["positions_count"] == 3
    assert s["last_updated"] == at(D4, 16)
    nav = s["total_value"]
    assert [w["instrument_id"] for w in s["weights"]] == ["AAA", "EEE", "BBB"]
    assert [w["weight"] for w in s["weights"]] == pytest.approx([1200 / nav, 1200 / nav, -900 / nav])


def test_portfolio_without_activity_has_zeros(state):
    s = state.row(1, named=True)
    assert s["status"] == "CLOSED" and s["positions_count"] == 0 and s["weights"] == [] and s["last_updated"] is None
    for name, dtype in PORTFOLIO_STATE_SCHEMA.items():
        if dtype == pl.Float64:
            assert s[name] == 0.0, name


def test_no_nan_or_inf(state):
    for name, dtype in PORTFOLIO_STATE_SCHEMA.items():
        if dtype == pl.Float64:
            assert state[name].is_finite().all(), name


def test_zero_nav_weights_are_null_and_sort_last():
    trades = TRADES.filter(pl.col("trade_id") == "T1")
    ledger = cash_ledger(trades, FLOWS.clear(), INSTRUMENTS)
    prices = PRICES.with_columns(pl.lit(10.0).alias("close"))
    pos = positions(LOTS.head(1).with_columns(pl.lit(1000.0).alias("cost_basis")), ledger, prices, FX, INSTRUMENTS,
                    PORTFOLIOS, AS_OF)
    pos = pos.with_columns(pl.when(pl.col("position_type") == "CASH").then(-1000.0).otherwise("market_value")
                           .alias("market_value"), pl.lit(None, pl.Float64).alias("weight"))
    s = portfolio_state(pos, REALIZED.clear(), PORTFOLIOS, AS_OF, FX, instruments=INSTRUMENTS,
                        cash_ledger=ledger).row(0, named=True)
    assert s["total_value"] == 0.0 and s["weights"] == [{"instrument_id": "AAA", "weight": None}]


def test_realised_per_portfolio_from_the_ledger_codes_equals_from_the_ids():
    """A third portfolio unknown to ``portfolios`` and an instrument unknown to ``instruments``
    count as the id look-ups say; ``as_of`` inside the history drops the later closes from
    the codes too."""
    extra = mk(LANDING_SCHEMAS["trades"], [
        {"trade_id": f"U{k}", "portfolio_id": pid, "instrument_id": iid, "trade_ts": at(day), "settle_date": day,
         "side": side, "quantity": 5.0, "price": price, "fees": 0.0}
        for k, (pid, iid, day, side, price) in enumerate([
            ("P3", "AAA", D2, "BUY", 10.0), ("P3", "AAA", D3, "SELL", 12.0),
            ("P1", "ZZZ", D2, "BUY", 10.0), ("P1", "ZZZ", D4, "SELL", 9.0),
            ("P1", "EEE", D5, "SELL", 110.0),
        ])
    ])
    book_portfolios = pl.concat(
        [PORTFOLIOS, PORTFOLIOS.head(1).with_columns(pl.lit("P3").alias("portfolio_id"))]
    ).with_columns(pl.lit("EXEMPT").alias("tax_status"), pl.lit("FIFO").alias("lot_method"))
    ledger = build_ledger(pl.concat([TRADES, extra]), book_portfolios)
    assert ledger.realized_pnl.height == 4
    for moment in (AS_OF, datetime.combine(D5, time(23), tzinfo=UTC), datetime.combine(D2, time(23), tzinfo=UTC)):
        by_ids = realized_by_portfolio(ledger.realized_pnl, PORTFOLIOS, INSTRUMENTS, moment, FX)
        by_codes = realized_by_portfolio(
            ledger.realized_pnl, PORTFOLIOS, INSTRUMENTS, moment, FX, codes=ledger.realized_codes
        )
        assert by_codes.equals(by_ids)
    assert by_ids.height == 0  # nothing closed by D2


def test_totals_per_code_equal_numpy_sums_in_row_order():
    """The compiled totals against numpy: products summed per code in row order (bit for bit,
    as ``np.bincount`` adds), NaN products and negative codes left out, latest moment and
    presence counted for every row of a code."""
    import numpy as np

    from transforms.state_kernel import totals_per_code

    rng = np.random.default_rng(5)
    n, n_codes = 5_000, 7  # code 6 never occurs
    code = rng.integers(-1, 6, n)
    value = rng.normal(0, 100, n)
    value[rng.random(n) < 0.05] = np.nan  # null P&L
    rate = rng.uniform(0.5, 2.0, n)
    rate[rng.random(n) < 0.05] = np.nan  # unknown fx
    moment = rng.integers(0, 10**12, n)
    sums, latest, seen = totals_per_code(code, value, rate, moment, n_codes)

    product = value * rate
    counted = (code >= 0) & ~np.isnan(product)
    assert np.array_equal(sums, np.bincount(code[counted], weights=product[counted], minlength=n_codes))
    known = code >= 0
    expected_latest = np.full(n_codes, np.iinfo(np.int64).min)
    np.maximum.at(expected_latest, code[known], moment[known])
    assert np.array_equal(latest, expected_latest)
    assert seen.tolist() == (np.bincount(code[known], minlength=n_codes) > 0).tolist()
    assert not seen[6] and sums[6] == 0.0

    empty = totals_per_code(np.empty(0, np.int64), np.empty(0), np.empty(0), np.empty(0, np.int64), 2)
    assert empty[0].tolist() == [0.0, 0.0] and not empty[2].any()
