"""Exposures (transforms.exposures): a hand-built book worked by hand, and invariants on the
generated tiny book (exposures equal the daily valuations' market values; every dimension's
buckets sum to the totals)."""

from datetime import date, datetime, timezone

import numpy as np
import polars as pl
import pytest

from transforms.book import BookInputs, build_book
from transforms.contract import EXPOSURE_BREAKDOWN_SCHEMA, EXPOSURES_FIRM_SCHEMA, EXPOSURES_SCHEMA, LANDING_SCHEMAS
from transforms.exposures import DIMENSIONS, UNKNOWN, exposures, exposures_firm, instrument_betas
from transforms.market_returns import benchmark_returns
from transforms.sample_book import generate_book

UTC = timezone.utc
DAYS = [date(2024, 1, d) for d in (2, 3, 4)]


def land(kind, rows):
    schema = LANDING_SCHEMAS[kind]
    return pl.DataFrame([{c: r.get(c) for c in schema} for r in rows], schema=schema)


def trade(tid, pid, inst, side, qty, px):
    return {"trade_id": tid, "portfolio_id": pid, "instrument_id": inst, "trade_ts": datetime(2024, 1, 2, 15, tzinfo=UTC),
            "settle_date": date(2024, 1, 4), "side": side, "quantity": qty, "price": px, "fees": 0.0}


def _hand_book():
    instruments = land("instruments", [
        {"instrument_id": "TECH", "sector": "Technology", "asset_class": "EQUITY", "currency": "USD", "country": "US"},
        {"instrument_id": "BANK", "sector": "Financials", "asset_class": "EQUITY", "currency": "USD", "country": "US"},
        {"instrument_id": "BUND", "sector": None, "asset_class": "FIXED_INCOME", "currency": "EUR", "country": "DE"},
    ])
    closes = {"TECH": [100.0, 110.0, 132.0], "BANK": [50.0, 50.0, 40.0], "BUND": [100.0, 100.0, 100.0]}
    prices = land("prices", [{"instrument_id": i, "date": d, "close": c} for i, cs in closes.items() for d, c in zip(DAYS, cs)])
    fx = land("fx_rates", [{"date": DAYS[0], "currency": "EUR", "usd_per_unit": 1.5}])
    portfolios = land("portfolios", [
        {"portfolio_id": "P", "portfolio_name": "P", "status": "ACTIVE", "base_currency": "USD", "benchmark_id": "BM",
         "tax_status": "EXEMPT", "lot_method": "FIFO", "inception_date": date(2024, 1, 1)},
    ])
    trades = land("trades", [
        trade("t1", "P", "TECH", "BUY", 10, 100.0),
        trade("t2", "P", "BANK", "SELL_SHORT", 20, 50.0),
        trade("t3", "P", "BUND", "BUY", 4, 100.0),
    ])
    flows = land("cash_flows", [{"flow_id": "f1", "portfolio_id": "P", "ts": datetime(2024, 1, 2, 9, tzinfo=UTC),
                                 "type": "DEPOSIT", "amount": 2000.0, "currency": "USD"}])
    # the benchmark is TECH alone (+10%, +20%): betas TECH 1, BANK -2 (0%, -20%), BUND 0
    bm = land("benchmarks", [{"benchmark_id": "BM", "instrument_id": "TECH", "weight": 1.0, "effective_date": DAYS[0]}])
    return BookInputs(trades, portfolios, instruments, prices, fx, flows), bm


def _run(inputs, bm, **kw):
    book = build_book(inputs)
    bench = benchmark_returns(bm, inputs.prices, inputs.fx_rates, inputs.instruments, ["USD", "EUR"])
    ex, bd = exposures(book.trades, book.cash_ledger, inputs.prices, inputs.fx_rates, inputs.instruments,
                       inputs.portfolios, book.daily_valuations, bench, **kw)
    return book, ex, bd


def test_hand_built_book():
    inputs, bm = _hand_book()
    book, ex, bd = _run(inputs, bm, beta_window=3, beta_min_days=2)
    assert ex.schema == pl.Schema(EXPOSURES_SCHEMA) and bd.schema == pl.Schema(EXPOSURE_BREAKDOWN_SCHEMA)
    last = ex.row(-1, named=True)
    # day 3: TECH 10 x 132 = 1,320; BANK -20 x 40 = -800; BUND 4 x 100 x 1.5 = 600 (USD)
    # cash 2,000 - 1,000 + 1,000 - 600 = 1,400 (USD); nav 1,400 + 1,320 - 800 + 600 = 2,520
    assert last["nav"] == pytest.approx(2520.0)
    assert (last["long_exposure"], last["short_exposure"]) == pytest.approx((1920.0, -800.0))
    assert (last["gross_exposure"], last["net_exposure"]) == pytest.approx((2720.0, 1120.0))
    assert last["leverage"] == pytest.approx(2720 / 2520) and last["net_leverage"] == pytest.approx(1120 / 2520)
    assert last["top10_weight"] == pytest.approx(1.0)  # three positions, all in the top ten
    w = np.array([1320.0, 800.0, 600.0]) / 2720
    assert last["herfindahl"] == pytest.approx(float((w**2).sum()))
    assert last["beta_adjusted_net"] == pytest.approx((1320 * 1 - 800 * -2 + 600 * 0) / 2520)
    assert last["positions_without_beta"] == 0
    # with the default minimum of days, two returns give no beta at all
    assert _run(inputs, bm, beta_window=3)[1].row(-1, named=True)["positions_without_beta"] == 3
    sectors = {r["bucket"]: r for r in bd.filter((pl.col("date") == DAYS[2]) & (pl.col("dimension") == "sector")).iter_rows(named=True)}
    assert set(sectors) == {"Technology", "Financials", UNKNOWN}
    assert sectors["Financials"]["short_exposure"] == pytest.approx(-800.0)
    assert sectors["Financials"]["net_weight"] == pytest.approx(-800 / 2520)
    ccy = {r["bucket"]: r["net_exposure"] for r in bd.filter((pl.col("date") == DAYS[2]) & (pl.col("dimension") == "currency")).iter_rows(named=True)}
    assert ccy == pytest.approx({"USD": 520.0, "EUR": 600.0})


def test_betas_are_ols_slopes():
    rng = np.random.default_rng(3)
    b = rng.normal(0, 0.01, 300)
    r = np.vstack([2 * b + rng.normal(0, 0.002, 300), -0.5 * b, np.full(300, np.nan)])
    r[0, :10] = np.nan  # a late listing: fewer days, still enough
    beta = instrument_betas(r, b)
    assert beta[0] == pytest.approx(np.polyfit(b[10:], r[0, 10:], 1)[0], rel=1e-10)
    assert beta[1] == pytest.approx(-0.5, rel=1e-12)
    assert np.isnan(beta[2])


@pytest.fixture(scope="module")
def tiny():
    book = generate_book("tiny", 11)
    frame = {k: pl.concat([f for _, f in parts], how="diagonal_relaxed") for k, parts in book.items()}
    inputs = BookInputs(*(frame[k] for k in ("trades", "portfolios", "instruments", "prices", "fx_rates", "cash_flows")))
    return inputs, frame["benchmarks"]


def test_exposures_equal_the_valuations_and_buckets_sum_to_totals(tiny):
    inputs, bm = tiny
    book, ex, bd = _run(inputs, bm)
    daily = book.daily_valuations
    assert ex.height == daily.height
    joined = ex.join(daily, on=["portfolio_id", "date"])
    scale = 1e-9 * (1 + joined["gross_exposure"].abs().max())
    assert (joined["long_exposure"] - joined["long_market_value"]).abs().max() < scale
    assert (joined["short_exposure"] - joined["short_market_value"]).abs().max() < scale
    assert set(bd["dimension"]) <= set(DIMENSIONS)
    for dim in DIMENSIONS:
        sums = bd.filter(pl.col("dimension") == dim).group_by("portfolio_id", "date").agg(pl.col("net_exposure").sum())
        check = ex.join(sums, on=["portfolio_id", "date"], how="left").with_columns(pl.col("net_exposure_right").fill_null(0.0))
        assert (check["net_exposure"] - check["net_exposure_right"]).abs().max() < scale, dim
    assert ex.select(pl.col(pl.Float64).is_nan().any()).row(0) == (False,) * len([t for t in EXPOSURES_SCHEMA.values() if t == pl.Float64])
    held = ex.filter(pl.col("gross_exposure") > 0)
    assert held["top10_weight"].is_between(0.0, 1.0 + 1e-12).all() and held["herfindahl"].is_between(0.0, 1.0 + 1e-12).all()


def test_firm_exposure_converts_to_usd_and_sums_across_portfolios(tiny):
    inputs, bm = tiny
    book, _, _ = _run(inputs, bm)
    firm = exposures_firm(book.positions, inputs.portfolios, inputs.instruments, inputs.fx_rates)
    assert firm.schema == pl.Schema(EXPOSURES_FIRM_SCHEMA)
    by_level = firm.group_by("level").agg(pl.col("net_exposure").sum(), pl.col("share_of_gross").sum())
    assert by_level["share_of_gross"].to_list() == pytest.approx([1.0, 1.0])
    totals = by_level["net_exposure"].to_list()
    assert totals[0] == pytest.approx(totals[1])
    # independent: each position's value times the USD rate of its base currency on its date
    rates = inputs.fx_rates.sort("date")
    rows = (
        book.positions.filter(pl.col("position_type") != "CASH")
        .join(inputs.portfolios.select("portfolio_id", "base_currency"), on="portfolio_id")
        .sort("price_date")
        .join_asof(rates, left_on="price_date", right_on="date", by_left="base_currency", by_right="currency")
        .with_columns(pl.when(pl.col("base_currency") == "USD").then(1.0).otherwise(pl.col("usd_per_unit")).alias("rate"))
    )
    assert rows["rate"].null_count() == 0
    assert totals[0] == pytest.approx((rows["market_value"] * rows["rate"]).sum(), rel=1e-12)
    assert firm["unconverted_positions"].sum() == 0
