"""Daily valuations: a hand-built book checked to 1e-9, a brute-force oracle on random books,
and the NAV identity."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import polars as pl
from polars.testing import assert_frame_equal
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.cash import cash_ledger
from transforms.contract import DAILY_VALUATIONS_SCHEMA, LANDING_SCHEMAS
from transforms.valuations import daily_valuations

UTC = timezone.utc
SIGN = {"BUY": 1.0, "SELL": -1.0, "SELL_SHORT": -1.0, "BUY_TO_COVER": 1.0}
D = {d: date(2024, 1, d) for d in (2, 3, 4, 5, 8)}  # business days (Tue..Fri, Mon)


def land(kind: str, rows: list[dict]) -> pl.DataFrame:
    schema = LANDING_SCHEMAS[kind]
    return pl.DataFrame([{c: r.get(c) for c in schema} for r in rows], schema=schema)


def at(day: int, hour: int = 15) -> datetime:
    return datetime(2024, 1, day, hour, tzinfo=UTC)


def trade(tid, pid, inst, day, side, qty, px, fees, settle):
    return {"trade_id": tid, "portfolio_id": pid, "instrument_id": inst, "trade_ts": at(day),
            "settle_date": date(2024, 1, settle), "side": side, "quantity": qty, "price": px, "fees": fees}


def flow(fid, pid, day, kind, amount, ccy="USD", hour=9):
    return {"flow_id": fid, "portfolio_id": pid, "ts": at(day, hour), "type": kind, "amount": amount, "currency": ccy}


def portfolio(pid, base="USD", inception=date(2023, 12, 1), status="ACTIVE"):
    return {"portfolio_id": pid, "portfolio_name": pid, "status": status, "base_currency": base,
            "tax_status": "TAXABLE", "lot_method": "FIFO", "inception_date": inception}


INSTRUMENTS = land("instruments", [
    {"instrument_id": i, "currency": c} for i, c in (("AAA", "USD"), ("BBB", "USD"), ("EEE", "EUR"), ("ZZZ", "USD"))
])
CLOSES = {
    "ZZZ": {2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0, 8: 1.0},
    "AAA": {2: 10.0, 4: 11.0, 5: 12.0, 8: 12.0},  # no close on the 3rd: stale, forward filled
    "BBB": {2: 20.0, 3: 20.0, 4: 20.0, 5: 20.0, 8: 18.0},
    "EEE": {2: 100.0, 3: 100.0, 4: 100.0, 5: 100.0, 8: 110.0},
}
PRICES = land("prices", [
    {"instrument_id": i, "date": date(2024, 1, d), "close": c} for i, by_day in CLOSES.items() for d, c in by_day.items()
])
FX = land("fx_rates", [
    {"date": D[2], "currency": "EUR", "usd_per_unit": 1.10},
    {"date": D[5], "currency": "EUR", "usd_per_unit": 1.20},  # forward filled to the 8th
])
PORTFOLIOS = land("portfolios", [
    portfolio("P1"),
    portfolio("P2", inception=D[4]),  # a deposit before inception counts from inception
    portfolio("P3"),  # no activity: no rows
    portfolio("P4", status="CLOSED"),
    portfolio("P5", base="EUR"),
])
TRADES = land("trades", [
    trade("T1", "P1", "AAA", 2, "BUY", 100.0, 10.0, 1.0, 4),
    trade("T2", "P2", "BBB", 4, "SELL_SHORT", 50.0, 20.0, 1.0, 8),
    trade("T3", "P2", "EEE", 5, "BUY", 10.0, 100.0, None, 9),
    trade("T4", "P5", "AAA", 5, "BUY", 10.0, 10.0, 0.0, 9),
])
FLOWS = land("cash_flows", [
    flow("F1", "P1", 1, "DEPOSIT", 10_000.0),  # a holiday: counted on the 2nd
    flow("F2", "P2", 3, "DEPOSIT", 5_000.0),
    flow("F3", "P2", 6, "WITHDRAWAL", 100.0),  # a Saturday: counted on Monday the 8th
    flow("F4", "P2", 8, "DIVIDEND", 10.0, "EUR"),
    flow("F5", "P2", 8, "FEE", 5.0),
    flow("F6", "P4", 2, "DEPOSIT", 100.0),
    flow("F7", "P4", 3, "WITHDRAWAL", 100.0),
])

COLUMNS = ("nav", "cash", "settled_cash", "pending_cash", "long_market_value", "short_market_value", "net_flows",
           "stale_prices")
EXPECTED = {  # (portfolio, day): nav, cash, settled, pending, long, short, net flows, stale
    ("P1", 2): (9999.0, 8999.0, 10_000.0, -1001.0, 1000.0, 0.0, 10_000.0, 0),
    ("P1", 3): (9999.0, 8999.0, 10_000.0, -1001.0, 1000.0, 0.0, 0.0, 1),
    ("P1", 4): (10_099.0, 8999.0, 8999.0, 0.0, 1100.0, 0.0, 0.0, 0),
    ("P1", 5): (10_199.0, 8999.0, 8999.0, 0.0, 1200.0, 0.0, 0.0, 0),
    ("P1", 8): (10_199.0, 8999.0, 8999.0, 0.0, 1200.0, 0.0, 0.0, 0),
    ("P2", 4): (4999.0, 5999.0, 5000.0, 999.0, 0.0, -1000.0, 5000.0, 0),
    ("P2", 5): (4999.0, 4799.0, 5000.0, -201.0, 1200.0, -1000.0, 0.0, 0),
    ("P2", 8): (5126.0, 4706.0, 5906.0, -1200.0, 1320.0, -900.0, -100.0, 0),
    ("P4", 2): (100.0, 100.0, 100.0, 0.0, 0.0, 0.0, 100.0, 0),
    ("P4", 3): (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -100.0, 0),
    ("P4", 8): (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0),
    # EUR base: USD at 1/1.2; 10 AAA bought at 10, closing at 12; settles on the 9th
    ("P5", 5): (120 / 1.2 - 100 / 1.2, -100 / 1.2, 0.0, -100 / 1.2, 120 / 1.2, 0.0, 0.0, 0),
    ("P5", 8): (120 / 1.2 - 100 / 1.2, -100 / 1.2, 0.0, -100 / 1.2, 120 / 1.2, 0.0, 0.0, 0),
}


@pytest.fixture(scope="module")
def daily() -> pl.DataFrame:
    ledger = cash_ledger(TRADES, FLOWS, INSTRUMENTS)
    return daily_valuations(TRADES, ledger, PRICES, FX, INSTRUMENTS, PORTFOLIOS)


def test_schema_rows_and_calendar(daily):
    assert daily.schema == pl.Schema(DAILY_VALUATIONS_SCHEMA)
    days = {p: g["date"].to_list() for (p,), g in daily.group_by("portfolio_id", maintain_order=True)}
    assert days == {
        "P1": [D[k] for k in (2, 3, 4, 5, 8)],
        "P2": [D[k] for k in (4, 5, 8)],  # from inception (later than the first deposit)
        "P4": [D[k] for k in (2, 3, 4, 5, 8)],  # CLOSED but valued
        "P5": [D[k] for k in (5, 8)],  # from its first activity
    }  # P3 (no activity) has no rows
    assert daily.filter(pl.col("portfolio_id") == "P5")["base_currency"].unique().to_list() == ["EUR"]


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_hand_computed_values(daily, key):
    pid, day = key
    (got,) = daily.filter((pl.col("portfolio_id") == pid) & (pl.col("date") == D[day])).select(COLUMNS).rows()
    for name, g, e in zip(COLUMNS, got, EXPECTED[key]):
        assert g == pytest.approx(e, abs=1e-9), (key, name)


def test_no_nan_or_inf(daily):
    for name, dtype in DAILY_VALUATIONS_SCHEMA.items():
        if dtype == pl.Float64:
            assert daily[name].is_finite().all(), name


def test_empty_inputs():
    ledger = cash_ledger(TRADES.clear(), FLOWS.clear(), INSTRUMENTS)
    out = daily_valuations(TRADES.clear(), ledger, PRICES, FX, INSTRUMENTS, PORTFOLIOS)
    assert out.schema == pl.Schema(DAILY_VALUATIONS_SCHEMA) and out.height == 0
    out = daily_valuations(TRADES, cash_ledger(TRADES, FLOWS, INSTRUMENTS), PRICES.clear(), FX, INSTRUMENTS, PORTFOLIOS)
    assert out.height == 0


def test_row_order_of_the_inputs_changes_nothing(daily):
    """Trades and ledger entries in reverse order give the same frame, to the last bit: the
    sums follow the (portfolio, instrument) order, not the input's."""
    ledger = cash_ledger(TRADES, FLOWS, INSTRUMENTS)
    reversed_ = daily_valuations(TRADES.reverse(), ledger.reverse(), PRICES.reverse(), FX, INSTRUMENTS, PORTFOLIOS)
    assert reversed_.equals(daily)


# --- random books against a brute-force oracle ----------------------------------------------
@st.composite
def random_book(draw):
    n_days = draw(st.integers(1, 6))
    days = [date(2024, 3, 1) + timedelta(days=2 * k) for k in range(n_days)]
    ccys = draw(st.lists(st.sampled_from(["USD", "EUR", "GBP"]), min_size=1, max_size=3))
    insts = [f"I{k}" for k in range(len(ccys))]
    prices = [{"instrument_id": i, "date": d, "close": draw(st.floats(1, 100))}
              for i in insts for d in days if draw(st.booleans())]
    prices.append({"instrument_id": "CAL", "date": days[-1], "close": 1.0})
    fx = [{"date": d - timedelta(days=draw(st.integers(0, 1))), "currency": c, "usd_per_unit": draw(st.floats(0.5, 2))}
          for c in ("EUR", "GBP") for k, d in enumerate(days) if k == 0 or draw(st.booleans())]
    fx = list({(r["date"], r["currency"]): r for r in fx}.values())
    ports = [f"P{k}" for k in range(draw(st.integers(1, 3)))]
    portfolios = land("portfolios", [
        portfolio(p, base=draw(st.sampled_from(["USD", "EUR"])), inception=days[0] + timedelta(days=draw(st.integers(-3, 4))))
        for p in ports])
    # any side in any order: valuations do not need a valid ledger
    span = (days[-1] - days[0]).days + 4
    trades = [
        {"trade_id": f"T{n}", "portfolio_id": draw(st.sampled_from(ports)), "instrument_id": draw(st.sampled_from(insts)),
         "trade_ts": datetime.combine(days[0] - timedelta(days=2), time(12), tzinfo=UTC)
         + timedelta(days=draw(st.integers(0, span))),
         "settle_date": None, "side": draw(st.sampled_from(list(SIGN))), "quantity": float(draw(st.integers(1, 50))),
         "price": draw(st.floats(1, 100)), "fees": draw(st.floats(0, 3))}
        for n in range(draw(st.integers(0, 10)))
    ]
    for t in trades:
        t["settle_date"] = t["trade_ts"].date() + timedelta(days=draw(st.integers(0, 3)))
    flows = [
        {"flow_id": f"F{n}", "portfolio_id": draw(st.sampled_from(ports)),
         "ts": datetime.combine(days[0] - timedelta(days=2), time(8), tzinfo=UTC) + timedelta(days=draw(st.integers(0, span))),
         "type": draw(st.sampled_from(["DEPOSIT", "WITHDRAWAL", "DIVIDEND", "INTEREST", "FEE"])),
         "amount": draw(st.floats(0, 1000)), "currency": draw(st.sampled_from(["USD", "EUR", "GBP"]))}
        for n in range(draw(st.integers(0, 5)))
    ]
    instruments = land("instruments", [{"instrument_id": i, "currency": c} for i, c in zip(insts, ccys)]
                       + [{"instrument_id": "CAL", "currency": "USD"}])
    return land("trades", trades), land("cash_flows", flows), land("prices", prices), land("fx_rates", fx), \
        instruments, portfolios


def _usd(fx: pl.DataFrame, ccy: str, d: date) -> float | None:
    if ccy == "USD" and not (fx["currency"] == "USD").any():
        return 1.0
    rates = fx.filter(pl.col("currency") == ccy).sort("date")
    if rates.height == 0:
        return None
    before = rates.filter(pl.col("date") <= d)
    return (before if before.height else rates.head(1))["usd_per_unit"][-1]


def oracle(trades, flows, prices, fx, instruments, portfolios) -> dict:
    """Day-by-day, row-by-row recomputation of the documented rules."""
    ledger = cash_ledger(trades, flows, instruments)
    ccy = dict(instruments.select("instrument_id", "currency").iter_rows())
    days = sorted(prices["date"].unique())
    out = {}
    for p in portfolios.iter_rows(named=True):
        pid, base = p["portfolio_id"], p["base_currency"]
        mine_t, mine_l = trades.filter(pl.col("portfolio_id") == pid), ledger.filter(pl.col("portfolio_id") == pid)
        if mine_l.height == 0:
            continue
        start = max(p["inception_date"], mine_l["ts"].min().date())
        valued = [d for d in days if d >= start]
        for k, d in enumerate(valued):
            rate = lambda c, on: 1.0 if c == base else _usd(fx, c, on) / _usd(fx, base, on)  # noqa: E731
            long = short = 0.0
            stale = 0
            held = mine_t.filter(pl.col("trade_ts").dt.date() <= d).group_by("instrument_id").agg(
                (pl.col("side").replace_strict(SIGN, return_dtype=pl.Float64) * pl.col("quantity")).sum().alias("q"),
                pl.col("price").sort_by("trade_ts", "trade_id").last())
            for inst, q, last_trade_px in held.iter_rows():
                if abs(q) <= 1e-9:
                    continue
                px = prices.filter((pl.col("instrument_id") == inst) & (pl.col("date") <= d)).sort("date")
                if px.height:
                    value = q * px["close"][-1] * rate(ccy[inst], px["date"][-1])
                    stale += px["date"][-1] < d
                else:
                    value, stale = q * last_trade_px * rate(ccy[inst], d), stale + 1
                long, short = (long + value, short) if q > 0 else (long, short + value)
            cash = settled = flows_today = 0.0
            prev = valued[k - 1] if k else date.min
            for e in mine_l.iter_rows(named=True):
                tday = e["ts"].date()
                if tday > d:
                    continue
                r = rate(e["currency"], d)
                cash += e["amount"] * r
                settled += e["amount"] * r if e["settle_date"] <= d else 0.0
                if e["is_external"] and (tday > prev or k == 0):
                    flows_today += e["amount"] * r
            out[(pid, d)] = (cash + long + short, cash, settled, cash - settled, long, short, flows_today, stale)
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_book())
def test_matches_brute_force_oracle_and_nav_identity(book):
    trades, flows, prices, fx, instruments, portfolios = book
    got = daily_valuations(trades, cash_ledger(trades, flows, instruments), prices, fx, instruments, portfolios)
    expected = oracle(*book)
    assert {(p, d) for p, d in got.select("portfolio_id", "date").iter_rows()} == set(expected)
    for r in got.iter_rows(named=True):
        want = expected[(r["portfolio_id"], r["date"])]
        for name, e in zip(COLUMNS, want):
            assert r[name] == pytest.approx(e, rel=1e-9, abs=1e-6), (r["portfolio_id"], r["date"], name)
        assert r["nav"] == pytest.approx(r["cash"] + r["long_market_value"] + r["short_market_value"], abs=1e-9)
        assert r["long_market_value"] >= 0 and r["short_market_value"] <= 0
    for name, dtype in DAILY_VALUATIONS_SCHEMA.items():
        if dtype == pl.Float64:
            assert got[name].is_finite().all(), name


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_book(), st.randoms(use_true_random=False))
def test_shuffled_inputs_give_the_same_sums(book, rnd):
    trades, flows, prices, fx, instruments, portfolios = book
    ledger = cash_ledger(trades, flows, instruments)
    whole = daily_valuations(trades, ledger, prices, fx, instruments, portfolios)

    def shuffled(frame: pl.DataFrame) -> pl.DataFrame:
        rows = list(range(frame.height))
        rnd.shuffle(rows)
        return frame[rows]

    got = daily_valuations(shuffled(trades), shuffled(ledger), shuffled(prices), fx, instruments, portfolios)
    assert_frame_equal(got, whole)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_book())
def test_negative_closes_match_the_oracle(book):
    # values per unit of either sign: long / short still follow the holding's sign
    trades, flows, prices, fx, instruments, portfolios = book
    prices = prices.with_columns(-pl.col("close"))
    got = daily_valuations(trades, cash_ledger(trades, flows, instruments), prices, fx, instruments, portfolios)
    expected = oracle(trades, flows, prices, fx, instruments, portfolios)
    assert {(p, d) for p, d in got.select("portfolio_id", "date").iter_rows()} == set(expected)
    for r in got.iter_rows(named=True):
        for name, e in zip(COLUMNS, expected[(r["portfolio_id"], r["date"])]):
            assert r[name] == pytest.approx(e, rel=1e-9, abs=1e-6), (r["portfolio_id"], r["date"], name)


def test_unquoted_currency_is_null_not_nan():
    # a holding in a currency fx_rates never quotes: its market values are null, never NaN
    instruments = land("instruments", [{"instrument_id": "XXX", "currency": "ZZZ"}, {"instrument_id": "CAL", "currency": "USD"}])
    trades = land("trades", [
        {"trade_id": "T1", "portfolio_id": "P0", "instrument_id": "XXX", "trade_ts": datetime(2024, 3, 1, 12, tzinfo=UTC),
         "settle_date": date(2024, 3, 1), "side": "BUY", "quantity": 2.0, "price": 5.0, "fees": 0.0},
    ])
    prices = land("prices", [{"instrument_id": "XXX", "date": date(2024, 3, 1), "close": 6.0},
                             {"instrument_id": "CAL", "date": date(2024, 3, 4), "close": 1.0}])
    portfolios = land("portfolios", [portfolio("P0", base="USD", inception=date(2024, 3, 1))])
    fx = land("fx_rates", [{"date": date(2024, 3, 1), "currency": "EUR", "usd_per_unit": 1.1}])
    got = daily_valuations(trades, cash_ledger(trades, land("cash_flows", []), instruments), prices, fx, instruments,
                           portfolios)
    assert got.height == 2
    assert got["long_market_value"].null_count() == 2 and got["nav"].null_count() == 2
    assert got["stale_prices"].to_list() == [0, 1]
    for name, dtype in DAILY_VALUATIONS_SCHEMA.items():
        if dtype == pl.Float64:
            assert not got[name].is_nan().any(), name


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_book(), st.sampled_from(["EXEMPT", "TAXABLE"]))
def test_ledger_codes_give_the_same_valuations_as_the_ids(book, tax_status):
    """``trade_codes`` (the ledger's accepted trades, with its rejections, unvalued portfolios
    and instruments held only in them) change nothing; codes that no longer line up with the
    rows (a trade without a timestamp is dropped) are ignored."""
    from transforms.lots import build_ledger

    trades, flows, prices, fx, instruments, portfolios = book
    portfolios = portfolios.with_columns(pl.lit(tax_status).alias("tax_status"), pl.lit("FIFO").alias("lot_method"))
    ledger = build_ledger(trades, portfolios)
    accepted = ledger.accepted_trades
    cash = cash_ledger(accepted, flows, instruments)
    by_ids = daily_valuations(accepted, cash, prices, fx, instruments, portfolios)
    by_codes = daily_valuations(accepted, cash, prices, fx, instruments, portfolios, trade_codes=ledger.accepted_codes)
    assert_frame_equal(by_codes, by_ids)
    if accepted.height:
        gap = accepted.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("trade_ts")).alias("trade_ts"))
        assert_frame_equal(
            daily_valuations(gap, cash, prices, fx, instruments, portfolios, trade_codes=ledger.accepted_codes),
            daily_valuations(gap, cash, prices, fx, instruments, portfolios),
        )
