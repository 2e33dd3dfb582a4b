"""Positions as of a moment: hand-built books checked to 1e-9, plus invariants on random books."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.cash import cash_ledger
from transforms.contract import LANDING_SCHEMAS, LOTS_SCHEMA, POSITIONS_SCHEMA
from transforms.positions import positions
from transforms.valuations import daily_valuations

UTC = timezone.utc
SIGN = {"BUY": 1.0, "SELL": -1.0, "SELL_SHORT": -1.0, "BUY_TO_COVER": 1.0}


def mk(schema: dict, rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame([{c: r.get(c) for c in schema} for r in rows], schema=schema)


def land(kind: str, rows: list[dict]) -> pl.DataFrame:
    return mk(LANDING_SCHEMAS[kind], rows)


def end_of(d: date) -> datetime:
    return datetime.combine(d, time.max, tzinfo=UTC)


def fifo_lots(trades: pl.DataFrame) -> pl.DataFrame:
    """A minimal FIFO ledger (test oracle only): LOTS_SCHEMA rows from valid trades."""
    lots: dict[tuple[str, str], list[dict]] = {}
    for t in trades.sort("trade_ts", "trade_id").iter_rows(named=True):
        book = lots.setdefault((t["portfolio_id"], t["instrument_id"]), [])
        fees = t["fees"] or 0.0
        if t["side"] in ("BUY", "SELL_SHORT"):
            long = t["side"] == "BUY"
            basis = t["quantity"] * t["price"] + (fees if long else -fees)
            book.append({
                "portfolio_id": t["portfolio_id"], "instrument_id": t["instrument_id"], "lot_id": t["trade_id"],
                "position_type": "LONG" if long else "SHORT", "open_trade_id": t["trade_id"],
                "open_ts": t["trade_ts"], "open_price": t["price"], "original_quantity": t["quantity"],
                "quantity": t["quantity"], "cost_basis": basis, "wash_sale_adjustment": 0.0,
                "tax_basis": basis, "holding_start": t["trade_ts"].date(), "status": "OPEN",
            })
            continue
        ptype = "LONG" if t["side"] == "SELL" else "SHORT"
        left = t["quantity"]
        for lot in book:
            if left <= 1e-12 or lot["position_type"] != ptype or lot["status"] != "OPEN":
                continue
            take = min(left, lot["quantity"])
            lot["cost_basis"] -= lot["cost_basis"] * take / lot["quantity"]
            lot["quantity"] -= take
            lot["tax_basis"] = lot["cost_basis"]
            left -= take
            if lot["quantity"] <= 1e-12:
                lot.update(quantity=0.0, cost_basis=0.0, tax_basis=0.0, status="CLOSED", closed_ts=t["trade_ts"])
        assert left <= 1e-9, "test books never oversell"
    return mk(LOTS_SCHEMA, [lot for book in lots.values() for lot in book])


# --- the hand-built book ------------------------------------------------------------------
D2, D3, D4, D5 = (date(2024, 1, d) for d in (2, 3, 4, 5))
INSTRUMENTS = land("instruments", [
    {"instrument_id": "AAA", "currency": "USD"},
    {"instrument_id": "BBB", "currency": "USD"},
    {"instrument_id": "EEE", "currency": "EUR"},
    {"instrument_id": "NOPX", "currency": "USD"},
])
PORTFOLIOS = land("portfolios", [
    {"portfolio_id": "P1", "portfolio_name": "one", "status": "ACTIVE", "base_currency": "USD",
     "tax_status": "TAXABLE", "lot_method": "FIFO", "inception_date": date(2024, 1, 1)},
    {"portfolio_id": "P2", "portfolio_name": "empty", "status": "ACTIVE", "base_currency": "USD",
     "tax_status": "TAXABLE", "lot_method": "FIFO", "inception_date": date(2024, 1, 1)},
])


def trade(tid, inst, d, side, qty, px, fees=0.0, pid="P1", hour=15):
    return {"trade_id": tid, "portfolio_id": pid, "instrument_id": inst,
            "trade_ts": datetime.combine(d, time(hour), tzinfo=UTC), "settle_date": d + timedelta(days=2),
            "side": side, "quantity": qty, "price": px, "fees": fees}


TRADES = land("trades", [
    trade("T1", "AAA", D2, "BUY", 100.0, 10.0, 1.0),
    trade("T2", "BBB", D2, "SELL_SHORT", 50.0, 20.0, 1.0),
    trade("T3", "EEE", D2, "BUY", 10.0, 100.0),
    trade("T4", "NOPX", D3, "BUY", 5.0, 7.0),
    trade("T5", "NOPX", D4, "BUY", 5.0, 8.0),
])
FLOWS = land("cash_flows", [
    {"flow_id": "F1", "portfolio_id": "P1", "ts": datetime(2024, 1, 1, 9, tzinfo=UTC), "type": "DEPOSIT",
     "amount": 10_000.0, "currency": "USD"},
])
PRICES = land("prices", [
    {"instrument_id": "AAA", "date": D2, "close": 10.0},
    {"instrument_id": "AAA", "date": D5, "close": 12.0},
    {"instrument_id": "BBB", "date": D2, "close": 20.0},
    {"instrument_id": "BBB", "date": D4, "close": 18.0},  # stale on D5: forward filled
    {"instrument_id": "EEE", "date": D2, "close": 100.0},
    {"instrument_id": "EEE", "date": D5, "close": 110.0},
])
FX = land("fx_rates", [
    {"date": D2, "currency": "EUR", "usd_per_unit": 1.10},
    {"date": D5, "currency": "EUR", "usd_per_unit": 1.20},
])


@pytest.fixture(scope="module")
def pos() -> pl.DataFrame:
    ledger = cash_ledger(TRADES, FLOWS, INSTRUMENTS)
    return positions(fifo_lots(TRADES), ledger, PRICES, FX, INSTRUMENTS, PORTFOLIOS, end_of(D5))


def row(frame: pl.DataFrame, instrument_id: str) -> dict:
    (r,) = frame.filter(pl.col("instrument_id") == instrument_id).iter_rows(named=True)
    return r


def test_schema_and_order(pos):
    assert pos.schema == pl.Schema(POSITIONS_SCHEMA)
    assert pos["portfolio_id"].to_list() == ["P1"] * 6  # P2 has nothing: no rows
    assert pos["position_type"].to_list() == ["CASH", "CASH", "LONG", "LONG", "LONG", "SHORT"]


def test_long_usd_position(pos):
    r = row(pos, "AAA")
    assert (r["quantity"], r["price"], r["price_date"], r["fx_rate"]) == (100.0, 12.0, D5, 1.0)
    assert r["market_value"] == pytest.approx(1200.0, abs=1e-9)
    assert r["cost_basis"] == pytest.approx(1001.0, abs=1e-9)
    assert r["unrealized_pnl"] == pytest.approx(199.0, abs=1e-9)
    assert r["average_cost"] == pytest.approx(10.01, abs=1e-12)
    assert r["last_updated"] == datetime(2024, 1, 2, 15, tzinfo=UTC)


def test_short_position_is_negative_with_stale_price_forward_filled(pos):
    r = row(pos, "BBB")
    assert (r["position_type"], r["quantity"], r["price"], r["price_date"]) == ("SHORT", -50.0, 18.0, D4)
    assert r["market_value"] == pytest.approx(-900.0, abs=1e-9)
    assert r["cost_basis"] == pytest.approx(-999.0, abs=1e-9)  # proceeds 1000 - 1 fee
    assert r["unrealized_pnl"] == pytest.approx(99.0, abs=1e-9)  # +100 minus the fee
    assert r["average_cost"] == pytest.approx(-19.98, abs=1e-12)  # signed like the quantity


def test_foreign_instrument_cost_at_open_fx_value_at_price_date_fx(pos):
    r = row(pos, "EEE")
    assert (r["currency"], r["fx_rate"]) == ("EUR", 1.20)
    assert r["cost_basis"] == pytest.approx(1000.0 * 1.10, abs=1e-9)
    assert r["market_value"] == pytest.approx(10 * 110.0 * 1.20, abs=1e-9)
    assert r["unrealized_pnl"] == pytest.approx(1320.0 - 1100.0, abs=1e-9)
    assert r["average_cost"] == pytest.approx(100.0)  # local currency


def test_instrument_without_any_price_uses_latest_lot_open_price(pos):
    r = row(pos, "NOPX")
    assert (r["quantity"], r["price"], r["price_date"]) == (10.0, 8.0, D4)
    assert r["market_value"] == pytest.approx(80.0) and r["cost_basis"] == pytest.approx(75.0)


def test_cash_rows_and_weights(pos):
    usd, eur = row(pos, "CASH:USD"), row(pos, "CASH:EUR")
    assert usd["quantity"] == pytest.approx(10_000 - 1001 + 999 - 35 - 40)
    assert (usd["price"], usd["fx_rate"], usd["unrealized_pnl"], usd["position_type"]) == (1.0, 1.0, 0.0, "CASH")
    assert eur["quantity"] == pytest.approx(-1000.0) and eur["market_value"] == pytest.approx(-1200.0)
    assert eur["cost_basis"] == eur["market_value"]
    assert usd["last_updated"] == datetime(2024, 1, 4, 15, tzinfo=UTC)
    nav = 9923.0 - 1200.0 + 1200.0 - 900.0 + 1320.0 + 80.0
    assert pos["market_value"].sum() == pytest.approx(nav)
    assert row(pos, "AAA")["weight"] == pytest.approx(1200.0 / nav)
    assert pos["weight"].sum() == pytest.approx(1.0)


def test_as_of_earlier_uses_earlier_prices_and_cash():
    as_of = end_of(D3)
    trades = TRADES.filter(pl.col("trade_ts") <= as_of)
    p = positions(fifo_lots(trades), cash_ledger(trades, FLOWS, INSTRUMENTS), PRICES, FX, INSTRUMENTS,
                  PORTFOLIOS, as_of)
    assert row(p, "AAA")["price"] == 10.0 and row(p, "BBB")["price"] == 20.0
    assert row(p, "EEE")["fx_rate"] == 1.10 and row(p, "EEE")["unrealized_pnl"] == pytest.approx(0.0, abs=1e-9)
    assert row(p, "NOPX")["price"] == 7.0


def test_zero_nav_gives_null_weight_not_nan():
    trades = land("trades", [trade("X1", "AAA", D2, "BUY", 10.0, 10.0)])
    flows = land("cash_flows", [])
    p = positions(fifo_lots(trades), cash_ledger(trades, flows, INSTRUMENTS), PRICES, FX, INSTRUMENTS,
                  PORTFOLIOS, end_of(D2))
    assert p["market_value"].sum() == pytest.approx(0.0)  # long 100 + cash -100
    assert p["weight"].null_count() == p.height and not p["weight"].is_nan().any()


def test_cash_in_currencies_no_instrument_uses_and_in_unknown_portfolios_and_instruments():
    """Cash in GBP (quoted, held by no instrument or base) converts at its rate, cash in JPY
    (never quoted) has a null rate, a portfolio missing from ``portfolios`` is valued in USD,
    and a lot of an instrument missing from ``instruments`` has no currency and a null rate."""
    fx = pl.concat([FX, land("fx_rates", [{"date": D2, "currency": "GBP", "usd_per_unit": 1.25}])])
    flows = land("cash_flows", [
        {"flow_id": f"G{k}", "portfolio_id": pid, "ts": datetime(2024, 1, 2, 9, tzinfo=UTC), "type": "DEPOSIT",
         "amount": 100.0, "currency": ccy}
        for k, (pid, ccy) in enumerate([("P1", "GBP"), ("P1", "JPY"), ("P9", "EUR")])
    ])
    trades = land("trades", [trade("Z1", "ZZZ", D2, "BUY", 3.0, 5.0)])
    p = positions(fifo_lots(trades), cash_ledger(trades, flows, INSTRUMENTS), PRICES, fx, INSTRUMENTS,
                  PORTFOLIOS, end_of(D5))
    gbp, jpy = row(p, "CASH:GBP"), row(p, "CASH:JPY")
    assert gbp["fx_rate"] == 1.25 and gbp["market_value"] == pytest.approx(125.0)
    assert jpy["fx_rate"] is None and jpy["market_value"] is None
    (p9,) = p.filter(pl.col("portfolio_id") == "P9").iter_rows(named=True)
    assert p9["fx_rate"] == 1.20 and p9["market_value"] == pytest.approx(120.0)
    zzz = row(p, "ZZZ")
    assert zzz["currency"] is None and zzz["fx_rate"] is None and zzz["price"] == 5.0


def test_empty_inputs_give_empty_typed_frame():
    p = positions(mk(LOTS_SCHEMA, []), cash_ledger(TRADES.clear(), FLOWS.clear(), INSTRUMENTS), PRICES, FX,
                  INSTRUMENTS, PORTFOLIOS, end_of(D5))
    assert p.schema == pl.Schema(POSITIONS_SCHEMA) and p.height == 0


# --- random books -------------------------------------------------------------------------
@st.composite
def random_book(draw):
    n_days = draw(st.integers(2, 7))
    days = [date(2024, 3, 1) + timedelta(days=k) for k in range(n_days)]
    ccys = draw(st.lists(st.sampled_from(["USD", "EUR"]), min_size=1, max_size=3))
    insts = [f"I{k}" for k in range(len(ccys))]
    instruments = land("instruments", [{"instrument_id": i, "currency": c} for i, c in zip(insts, ccys)])
    prices = []
    for inst in insts:
        for k, d in enumerate(days):
            if k == 0 or (inst == "I0" and k == n_days - 1) or draw(st.booleans()):
                prices.append({"instrument_id": inst, "date": d, "close": draw(st.floats(1, 100))})
    fx = [{"date": d, "currency": "EUR", "usd_per_unit": draw(st.floats(0.8, 1.5))}
          for k, d in enumerate(days) if k == 0 or draw(st.booleans())]
    ports = [f"P{k}" for k in range(draw(st.integers(1, 3)))]
    portfolios = land("portfolios", [
        {"portfolio_id": p, "portfolio_name": p, "status": "ACTIVE", "base_currency": draw(st.sampled_from(["USD", "EUR"])),
         "tax_status": "TAXABLE", "lot_method": "FIFO", "inception_date": days[0]} for p in ports])
    holdings: dict[tuple[str, str], float] = {}
    trades, flows = [], []
    for n in range(draw(st.integers(0, 14))):
        p, inst = draw(st.sampled_from(ports)), draw(st.sampled_from(insts))
        d = draw(st.sampled_from(days))
        h = holdings.get((p, inst), 0.0)
        side = draw(st.sampled_from(["BUY", "SELL", "SELL_SHORT", "BUY_TO_COVER"]))
        qty = float(draw(st.integers(1, 100)))
        if side == "SELL" or side == "BUY_TO_COVER":
            have = h if side == "SELL" else -h
            if have <= 0:
                continue
            qty = min(qty, have)
        if (side == "BUY" and h < 0) or (side == "SELL_SHORT" and h > 0):
            continue  # keep each key on one side so the FIFO oracle is simple
        holdings[(p, inst)] = h + SIGN[side] * qty
        trades.append(trade(f"T{n:03d}", inst, d, side, qty, draw(st.floats(1, 100)),
                            draw(st.floats(0, 5)), pid=p, hour=0))
    # trades are generated in an arbitrary day order: make time follow generation order so the
    # running holdings above stay valid (ts = first day + n minutes is monotone), then move
    # each trade to a drawn day only if it keeps order — simplest: sort days ascending.
    trades.sort(key=lambda t: t["trade_ts"])
    holdings.clear()
    valid = []
    for n, t in enumerate(trades):
        t["trade_ts"] += timedelta(minutes=n)
        key = (t["portfolio_id"], t["instrument_id"])
        h = holdings.get(key, 0.0)
        if t["side"] in ("SELL", "BUY_TO_COVER") and (h if t["side"] == "SELL" else -h) < t["quantity"] - 1e-9:
            continue
        if (t["side"] == "BUY" and h < 0) or (t["side"] == "SELL_SHORT" and h > 0):
            continue
        holdings[key] = h + SIGN[t["side"]] * t["quantity"]
        valid.append(t)
    for n, p in enumerate(ports):
        if draw(st.booleans()):
            flows.append({"flow_id": f"F{n}", "portfolio_id": p, "ts": datetime.combine(days[0], time(8), tzinfo=UTC),
                          "type": "DEPOSIT", "amount": draw(st.floats(0, 10_000)), "currency": draw(st.sampled_from(["USD", "EUR"]))})
        if draw(st.booleans()):
            flows.append({"flow_id": f"G{n}", "portfolio_id": p, "ts": datetime.combine(days[-1], time(9), tzinfo=UTC),
                          "type": draw(st.sampled_from(["WITHDRAWAL", "DIVIDEND", "FEE", "INTEREST"])),
                          "amount": draw(st.floats(0, 500)), "currency": "USD"})
    return {
        "trades": land("trades", valid), "cash_flows": land("cash_flows", flows), "prices": land("prices", prices),
        "fx_rates": land("fx_rates", fx), "instruments": instruments, "portfolios": portfolios, "last_day": days[-1],
    }


def _build(book):
    ledger = cash_ledger(book["trades"], book["cash_flows"], book["instruments"])
    pos = positions(fifo_lots(book["trades"]), ledger, book["prices"], book["fx_rates"], book["instruments"],
                    book["portfolios"], end_of(book["last_day"]))
    return ledger, pos


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(random_book())
def test_quantity_is_sum_of_signed_trades(book):
    _, pos = _build(book)
    expected = (
        book["trades"].group_by("portfolio_id", "instrument_id")
        .agg((pl.col("side").replace_strict(SIGN, return_dtype=pl.Float64) * pl.col("quantity")).sum().alias("q"))
        .filter(pl.col("q").abs() > 1e-9)
    )
    got = pos.filter(pl.col("position_type") != "CASH").group_by("portfolio_id", "instrument_id").agg(
        pl.col("quantity").sum().alias("got"))
    joined = expected.join(got, on=["portfolio_id", "instrument_id"], how="full", coalesce=True).fill_null(0.0)
    assert ((joined["q"] - joined["got"]).abs() < 1e-6).all()


@SETTINGS
@given(random_book())
def test_weights_sum_to_one_and_no_nan(book):
    _, pos = _build(book)
    for (pid,), g in pos.group_by("portfolio_id"):
        nav = g["market_value"].sum()
        if nav != 0:
            assert g["weight"].sum() == pytest.approx(1.0, rel=1e-9, abs=1e-9)
        else:
            assert g["weight"].null_count() == g.height
    assert ((pos["market_value"] - pos["cost_basis"] - pos["unrealized_pnl"]).abs() < 1e-9).all()
    for name, dtype in POSITIONS_SCHEMA.items():
        if dtype == pl.Float64:
            assert not pos[name].is_nan().any() and not pos[name].is_infinite().any(), name


@SETTINGS
@given(random_book())
def test_last_daily_nav_equals_positions_market_value(book):
    ledger, pos = _build(book)
    daily = daily_valuations(book["trades"], ledger, book["prices"], book["fx_rates"], book["instruments"],
                             book["portfolios"])
    last = daily.filter(pl.col("date") == book["last_day"])
    navs = pos.group_by("portfolio_id").agg(pl.col("market_value").sum().alias("mv"))
    joined = last.join(navs, on="portfolio_id", how="full", coalesce=True)
    # every portfolio with activity has a last-day row, and the NAVs agree
    assert joined["nav"].null_count() == 0 and joined["mv"].null_count() == 0
    assert ((joined["nav"] - joined["mv"]).abs() <= 1e-6 * (1 + joined["mv"].abs())).all()


@SETTINGS
@given(random_book(), st.integers(0, 3))
def test_ledger_lot_codes_give_the_same_positions_as_the_ids(book, back):
    """``lot_codes`` (the ledger's, wash-sale pieces included) change nothing, as of the end or
    an earlier moment (lots opened later drop out); codes that do not line up with the rows
    are ignored."""
    from transforms.lots import build_ledger

    ledger = build_ledger(book["trades"], book["portfolios"])
    cash = cash_ledger(ledger.accepted_trades, book["cash_flows"], book["instruments"])
    moment = end_of(book["last_day"] - timedelta(days=back))
    args = (cash, book["prices"], book["fx_rates"], book["instruments"], book["portfolios"], moment)
    by_ids = positions(ledger.lots, *args)
    assert positions(ledger.lots, *args, lot_codes=ledger.lot_codes).equals(by_ids)
    assert positions(ledger.lots.head(ledger.lots.height // 2), *args, lot_codes=ledger.lot_codes).equals(
        positions(ledger.lots.head(ledger.lots.height // 2), *args)
    )
