"""Cash ledger and cash balances, checked against hand computations."""

from __future__ import annotations

from datetime import date, datetime, timezone

import polars as pl
import pytest

from transforms.cash import CASH_BALANCES_SCHEMA, cash_balances, cash_ledger
from transforms.contract import CASH_LEDGER_SCHEMA, LANDING_SCHEMAS

UTC = timezone.utc


def mk(kind: str, rows: list[dict]) -> pl.DataFrame:
    schema = LANDING_SCHEMAS[kind]
    return pl.DataFrame([{c: r.get(c) for c in schema} for r in rows], schema=schema)


def ts(d: int, h: int = 15) -> datetime:
    return datetime(2024, 1, d, h, tzinfo=UTC)


INSTRUMENTS = mk(
    "instruments",
    [
        {"instrument_id": "AAA", "currency": "USD", "asset_class": "EQUITY", "lot_size": 1},
        {"instrument_id": "EEE", "currency": "EUR", "asset_class": "EQUITY", "lot_size": 1},
    ],
)
TRADES = mk(
    "trades",
    [
        # Tuesday 2 Jan, settles T+2 on Thursday 4 Jan
        {"trade_id": "T1", "portfolio_id": "P1", "instrument_id": "AAA", "trade_ts": ts(2),
         "settle_date": date(2024, 1, 4), "side": "BUY", "quantity": 100.0, "price": 10.0, "fees": 1.0},
        {"trade_id": "T2", "portfolio_id": "P1", "instrument_id": "AAA", "trade_ts": ts(3),
         "settle_date": date(2024, 1, 5), "side": "SELL", "quantity": 40.0, "price": 11.0, "fees": 2.0},
        {"trade_id": "T3", "portfolio_id": "P1", "instrument_id": "EEE", "trade_ts": ts(2),
         "settle_date": date(2024, 1, 4), "side": "SELL_SHORT", "quantity": 5.0, "price": 100.0},
        {"trade_id": "T4", "portfolio_id": "P1", "instrument_id": "EEE", "trade_ts": ts(3),
         "settle_date": date(2024, 1, 5), "side": "BUY_TO_COVER", "quantity": 5.0, "price": 90.0, "fees": 0.5},
    ],
)
FLOWS = mk(
    "cash_flows",
    [
        {"flow_id": "F1", "portfolio_id": "P1", "ts": ts(1, 9), "type": "DEPOSIT", "amount": 10_000.0, "currency": "USD"},
        {"flow_id": "F2", "portfolio_id": "P1", "ts": ts(3), "type": "DIVIDEND", "amount": 25.0, "currency": "USD",
         "instrument_id": "AAA"},
        {"flow_id": "F3", "portfolio_id": "P1", "ts": ts(3), "type": "FEE", "amount": 7.0, "currency": "USD"},
        {"flow_id": "F4", "portfolio_id": "P1", "ts": ts(4), "type": "WITHDRAWAL", "amount": 500.0, "currency": "USD"},
        {"flow_id": "F5", "portfolio_id": "P1", "ts": ts(4), "type": "INTEREST", "amount": 3.0, "currency": "EUR"},
    ],
)


@pytest.fixture(scope="module")
def ledger() -> pl.DataFrame:
    return cash_ledger(TRADES, FLOWS, INSTRUMENTS)


def test_ledger_schema_and_one_entry_per_trade_and_flow(ledger):
    assert ledger.schema == pl.Schema(CASH_LEDGER_SCHEMA)
    assert ledger.height == TRADES.height + FLOWS.height
    assert set(ledger["entry_id"]) == set(TRADES["trade_id"]) | set(FLOWS["flow_id"])


def test_ledger_amounts_signs_currencies_and_settlement(ledger):
    got = {r["entry_id"]: r for r in ledger.iter_rows(named=True)}
    expected = {
        "T1": (-1001.0, "USD", date(2024, 1, 4), "TRADE", False),  # pays qty*price + fees
        "T2": (438.0, "USD", date(2024, 1, 5), "TRADE", False),  # receives qty*price - fees
        "T3": (500.0, "EUR", date(2024, 1, 4), "TRADE", False),  # null fees count as 0
        "T4": (-450.5, "EUR", date(2024, 1, 5), "TRADE", False),
        "F1": (10_000.0, "USD", date(2024, 1, 1), "CASH_FLOW", True),
        "F2": (25.0, "USD", date(2024, 1, 3), "CASH_FLOW", False),
        "F3": (-7.0, "USD", date(2024, 1, 3), "CASH_FLOW", False),
        "F4": (-500.0, "USD", date(2024, 1, 4), "CASH_FLOW", True),
        "F5": (3.0, "EUR", date(2024, 1, 4), "CASH_FLOW", False),
    }
    for entry_id, (amount, ccy, settle, source, external) in expected.items():
        row = got[entry_id]
        assert row["amount"] == pytest.approx(amount, abs=1e-12), entry_id
        assert (row["currency"], row["settle_date"], row["source"], row["is_external"]) == (
            ccy, settle, source, external,
        ), entry_id
    assert got["T1"]["entry_type"] == "BUY" and got["F4"]["entry_type"] == "WITHDRAWAL"
    assert got["F2"]["instrument_id"] == "AAA"
    # sorted by portfolio, ts, entry_id
    assert ledger["ts"].is_sorted()


def _balances(ledger: pl.DataFrame, as_of: datetime) -> dict[str, tuple[float, float, float]]:
    b = cash_balances(ledger, as_of)
    assert b.schema == pl.Schema(CASH_BALANCES_SCHEMA)
    return {r["currency"]: (r["settled_cash"], r["pending_cash"], r["total_cash"]) for r in b.iter_rows(named=True)}


def test_balances_settled_vs_pending_around_t_plus_2(ledger):
    # 2 Jan evening: deposit settled; T1 and T3 traded but settle on the 4th -> pending
    b = _balances(ledger, ts(2, 23))
    assert b["USD"] == pytest.approx((10_000.0, -1001.0, 8999.0))
    assert b["EUR"] == pytest.approx((0.0, 500.0, 500.0))
    # 3 Jan: + T2 (pending to the 5th), dividend and fee settle the same day
    b = _balances(ledger, ts(3, 23))
    assert b["USD"] == pytest.approx((10_000.0 + 25 - 7, -1001.0 + 438.0, 10_000 - 1001 + 438 + 25 - 7))
    # 4 Jan: T1/T3 settled; the withdrawal and interest settle that day; T2 and T4 still pending
    b = _balances(ledger, ts(4, 23))
    assert b["USD"] == pytest.approx((10_000 + 25 - 7 - 1001 - 500, 438.0, 10_000 + 25 - 7 - 1001 - 500 + 438))
    assert b["EUR"] == pytest.approx((503.0, -450.5, 52.5))
    # 5 Jan: everything settled
    b = _balances(ledger, ts(5, 23))
    assert b["USD"][1] == 0.0 and b["EUR"] == pytest.approx((52.5, 0.0, 52.5))


def test_balances_exclude_entries_after_as_of_and_accept_naive_as_of(ledger):
    # 2 Jan 14:00 UTC: only the deposit (trades are at 15:00)
    b = _balances(ledger, datetime(2024, 1, 2, 14))
    assert b == {"USD": (10_000.0, 0.0, 10_000.0)}
    assert _balances(ledger, datetime(2023, 12, 31)) == {}


def test_empty_inputs_give_empty_typed_frames():
    led = cash_ledger(TRADES.clear(), FLOWS.clear(), INSTRUMENTS)
    assert led.schema == pl.Schema(CASH_LEDGER_SCHEMA) and led.height == 0
    assert cash_balances(led, ts(5)).schema == pl.Schema(CASH_BALANCES_SCHEMA)


def test_no_nan_or_inf_in_float_columns(ledger):
    for frame in (ledger, cash_balances(ledger, ts(5))):
        for name, dtype in frame.schema.items():
            if dtype == pl.Float64:
                assert frame[name].is_finite().all(), name


def test_ledger_sort_breaks_ties_by_entry_id_with_nulls_first():
    # same (portfolio, ts) across trades and flows, a null ts and a null portfolio: the order is
    # exactly polars' sort by (portfolio_id, ts, entry_id), nulls first
    trades = mk("trades", [
        {"trade_id": t, "portfolio_id": p, "instrument_id": "AAA", "trade_ts": ts(2), "settle_date": date(2024, 1, 4),
         "side": "BUY", "quantity": 1.0, "price": 1.0}
        for t, p in (("T9", "P2"), ("T10", "P1"), ("T2", "P1"), ("A1", "P1"))
    ])
    flows = mk("cash_flows", [
        {"flow_id": "F1", "portfolio_id": "P1", "ts": ts(2), "type": "DEPOSIT", "amount": 5.0, "currency": "USD"},
        {"flow_id": "F0", "portfolio_id": "P1", "ts": None, "type": "FEE", "amount": 1.0, "currency": "USD"},
        {"flow_id": "F3", "portfolio_id": None, "ts": ts(1), "type": "FEE", "amount": 1.0, "currency": "USD"},
        {"flow_id": "F2", "portfolio_id": "P2", "ts": ts(1), "type": "DEPOSIT", "amount": 5.0, "currency": "USD"},
    ])
    led = cash_ledger(trades, flows, INSTRUMENTS)
    assert led.equals(led.sort("portfolio_id", "ts", "entry_id"))
    assert led["entry_id"].to_list() == ["F3", "F0", "A1", "F1", "T10", "T2", "F2", "T9"]


def test_ledger_sort_with_a_ts_span_too_wide_to_pack():
    flows = mk("cash_flows", [
        {"flow_id": f, "portfolio_id": "P1", "ts": datetime(y, 1, 1, tzinfo=UTC), "type": "DEPOSIT", "amount": 1.0,
         "currency": "USD"}
        for f, y in (("F2", 2190), ("F1", 1900), ("F3", 1900))
    ])
    led = cash_ledger(TRADES.clear(), flows, INSTRUMENTS)
    assert led["entry_id"].to_list() == ["F1", "F3", "F2"]


def test_trade_amounts_round_to_each_currency_minor_unit():
    instruments = mk("instruments", [
        {"instrument_id": "JJJ", "currency": "JPY", "asset_class": "EQUITY", "lot_size": 1},
        {"instrument_id": "KKK", "currency": "KWD", "asset_class": "EQUITY", "lot_size": 1},
        {"instrument_id": "AAA", "currency": "USD", "asset_class": "EQUITY", "lot_size": 1},
    ])
    trades = mk("trades", [
        {"trade_id": t, "portfolio_id": "P1", "instrument_id": i, "trade_ts": ts(2), "settle_date": None,
         "side": "SELL", "quantity": 1.0, "price": 10.12345}
        for t, i in (("T1", "JJJ"), ("T2", "KKK"), ("T3", "AAA"), ("T4", "ZZZ"))  # ZZZ: unknown, cents
    ])
    got = dict(cash_ledger(trades, FLOWS.clear(), instruments).select("entry_id", "amount").iter_rows())
    assert got == {"T1": 10.0, "T2": 10.123, "T3": 10.12, "T4": 10.12}


def test_entries_of_rejected_trades_dropped_equal_the_ledger_of_accepted_trades():
    """``build_book`` writes the cash entries of every trade beside the ledger and drops the
    rejected ones after it: the result must be the cash ledger of the accepted trades."""
    from transforms.cash import without_trades
    from transforms.lots import build_ledger

    bad = mk(
        "trades",
        [
            # an oversell, a duplicated id (both copies rejected) and a null id
            {"trade_id": "T5", "portfolio_id": "P1", "instrument_id": "AAA", "trade_ts": ts(4),
             "settle_date": date(2024, 1, 8), "side": "SELL", "quantity": 1_000.0, "price": 10.0},
            {"trade_id": "T6", "portfolio_id": "P1", "instrument_id": "AAA", "trade_ts": ts(4),
             "settle_date": date(2024, 1, 8), "side": "BUY", "quantity": 1.0, "price": 10.0},
            {"trade_id": "T6", "portfolio_id": "P1", "instrument_id": "AAA", "trade_ts": ts(5),
             "settle_date": date(2024, 1, 9), "side": "BUY", "quantity": 2.0, "price": 10.0},
            {"trade_id": None, "portfolio_id": "P1", "instrument_id": "AAA", "trade_ts": ts(5),
             "settle_date": date(2024, 1, 9), "side": "BUY", "quantity": 3.0, "price": 10.0},
        ],
    )
    trades = pl.concat([TRADES, bad])
    portfolios = pl.DataFrame({"portfolio_id": ["P1"], "tax_status": ["EXEMPT"], "lot_method": ["FIFO"]})
    result = build_ledger(trades, portfolios)
    assert result.rejected_trades.height == 4
    dropped = without_trades(cash_ledger(trades, FLOWS, INSTRUMENTS), result.rejected_trades["trade_id"])
    assert dropped.equals(cash_ledger(result.accepted_trades, FLOWS, INSTRUMENTS))
    assert dropped.filter(pl.col("source") == "CASH_FLOW").height == FLOWS.height
    everything = cash_ledger(TRADES, FLOWS, INSTRUMENTS)
    assert without_trades(everything, pl.Series([], dtype=pl.String)) is everything


@pytest.mark.parametrize("duplicated", [False, True])
def test_trade_currency_is_the_left_join_on_instrument(duplicated):
    """Unknown and null instrument ids get a null currency; a null id in the instruments matches
    nothing; duplicated instrument ids repeat the trade as the join does."""
    rows = [
        {"instrument_id": "EEE", "currency": "EUR", "asset_class": "EQUITY", "lot_size": 1},
        {"instrument_id": None, "currency": "GBP", "asset_class": "EQUITY", "lot_size": 1},
        {"instrument_id": "AAA", "currency": "USD", "asset_class": "EQUITY", "lot_size": 1},
    ]
    if duplicated:
        rows.append({"instrument_id": "AAA", "currency": "CHF", "asset_class": "EQUITY", "lot_size": 1})
    instruments = mk("instruments", rows)
    trades = mk("trades", [
        {"trade_id": f"T{k}", "portfolio_id": "P1", "instrument_id": i, "trade_ts": ts(2 + k), "settle_date": None,
         "side": "BUY", "quantity": 1.0, "price": 10.0}
        for k, i in enumerate(["AAA", "ZZZ", None, "EEE", "AAA"])
    ])
    got = cash_ledger(trades, FLOWS.clear(), instruments).select("entry_id", "currency").sort("entry_id", "currency")
    expected = (
        trades.join(instruments.select("instrument_id", "currency"), on="instrument_id", how="left")
        .select(pl.col("trade_id").alias("entry_id"), "currency")
        .sort("entry_id", "currency")
    )
    assert got.equals(expected)
    assert got.filter(pl.col("entry_id") == "T2")["currency"].to_list() == [None]
