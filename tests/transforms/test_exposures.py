"""Exposures (transforms.exposures): a hand-built book worked by hand; invariants on the
generated tiny book (exposures equal the daily valuations' market values; every dimension's
buckets sum to the totals; sorted outputs); rolling betas equal to ``instrument_betas`` (itself
checked against numpy's least-squares fit) on each day's own window; a day's beta-adjusted
exposure that later prices do not change; bad input."""

from datetime import date, datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from transforms.book import BookInputs, build_book
from transforms.contract import EXPOSURE_BREAKDOWN_SCHEMA, EXPOSURES_FIRM_SCHEMA, EXPOSURES_SCHEMA, LANDING_SCHEMAS
from transforms.exposures import DIMENSIONS, UNKNOWN, exposures, exposures_firm, instrument_betas, rolling_betas
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
    assert ex.equals(ex.sort("portfolio_id", "date")) and bd.equals(bd.sort("portfolio_id", "date", "dimension", "bucket"))
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


def _window(d, window):
    """The days of the window ending at day ``d``."""
    return slice(max(d - window + 1, 0), d + 1)


def test_rolling_betas_equal_instrument_betas_on_each_window():
    rng = np.random.default_rng(7)
    n, window, min_days = 400, 120, 40
    b = rng.normal(0.0005, 0.01, n)
    b[[0, 17, 250]] = np.nan  # no benchmark return on some days
    r = np.vstack([
        1.3 * b + rng.normal(0.0002, 0.006, n),
        0.05 + 0.2 * b + rng.normal(0, 0.001, n),  # returns far from zero: cancellation in raw sums
        -0.7 * b + rng.normal(0, 0.02, n),
        np.zeros(n),  # a flat price: beta 0
    ])
    r[:, 0] = np.nan
    r[0, 150:300:3] = np.nan  # gaps
    r[2, :200] = np.nan  # returns from day 200: min_days paired days first on day 239
    beta = rolling_betas(r, b, window, min_days)
    assert beta.shape == r.shape
    for d in (0, 30, 39, 40, 41, 119, 120, 121, 210, 238, 239, 240, 300, n - 1):
        expected = instrument_betas(r[:, _window(d, window)], b[_window(d, window)], min_days)
        np.testing.assert_array_equal(np.isnan(beta[:, d]), np.isnan(expected), err_msg=f"day {d}")
        np.testing.assert_allclose(beta[:, d], expected, rtol=1e-9, atol=1e-13, err_msg=f"day {d}")
    # days 0 .. 40 hold 39 paired days (day 0 has no returns, day 17 no benchmark): no beta yet
    assert np.isnan(beta[:, 40]).all() and np.isfinite(beta[:2, 41]).all()
    assert np.isnan(beta[2, 238]) and np.isfinite(beta[2, 239])
    assert beta[3, n - 1] == pytest.approx(0.0, abs=1e-13)


def test_rolling_betas_without_benchmark_variance_are_unknown():
    rng = np.random.default_rng(8)
    b = np.r_[rng.normal(0, 0.01, 100), np.full(80, 0.002), np.zeros(80)]  # then flat benchmark returns
    r = 0.5 * b[None, :] + rng.normal(0, 0.01, (2, b.size))
    beta = rolling_betas(r, b, window=60, min_days=20)
    assert np.isfinite(beta[:, 99]).all()
    assert np.isnan(beta[:, 170]).all() and np.isnan(beta[:, -1]).all()  # constant, then zero, in the window
    assert np.isnan(instrument_betas(r[:, -60:], b[-60:], 20)).all()


N_DAYS = 40


def _daily_book(shock_after=None):
    """One USD portfolio long X and short Y over ``N_DAYS`` days, benchmarked to B (a basket of
    B alone). ``shock_after``: every close after that day index is redrawn."""
    rng = np.random.default_rng(11)
    days = [date(2024, 1, 1) + timedelta(days=k) for k in range(N_DAYS)]
    rb = rng.normal(0.001, 0.01, N_DAYS)
    moves = {"B": rb, "X": 1.5 * rb + rng.normal(0, 0.004, N_DAYS), "Y": -0.4 * rb + rng.normal(0, 0.006, N_DAYS)}
    if shock_after is not None:
        later = np.arange(N_DAYS) > shock_after
        for name in moves:
            moves[name] = np.where(later, rng.normal(0, 0.03, N_DAYS), moves[name])
    closes = {name: 100 * np.cumprod(1 + m) for name, m in moves.items()}
    instruments = land("instruments", [{"instrument_id": i, "sector": "S", "asset_class": "EQUITY", "currency": "USD",
                                        "country": "US"} for i in closes])
    prices = land("prices", [{"instrument_id": i, "date": d, "close": float(c)} for i, cs in closes.items() for d, c in zip(days, cs)])
    fx = land("fx_rates", [{"date": days[0], "currency": "EUR", "usd_per_unit": 1.1}])
    portfolios = land("portfolios", [
        {"portfolio_id": "P", "portfolio_name": "P", "status": "ACTIVE", "base_currency": "USD", "benchmark_id": "BM",
         "tax_status": "EXEMPT", "lot_method": "FIFO", "inception_date": days[0]},
    ])
    ts = datetime(2024, 1, 1, 15, tzinfo=UTC)
    trades = land("trades", [
        {**trade("t1", "P", "X", "BUY", 30, float(closes["X"][0])), "trade_ts": ts, "settle_date": days[2]},
        {**trade("t2", "P", "Y", "SELL_SHORT", 20, float(closes["Y"][0])), "trade_ts": ts, "settle_date": days[2]},
    ])
    flows = land("cash_flows", [{"flow_id": "f1", "portfolio_id": "P", "ts": datetime(2024, 1, 1, 9, tzinfo=UTC),
                                 "type": "DEPOSIT", "amount": 10_000.0, "currency": "USD"}])
    bm = land("benchmarks", [{"benchmark_id": "BM", "instrument_id": "B", "weight": 1.0, "effective_date": days[0]}])
    return BookInputs(trades, portfolios, instruments, prices, fx, flows), bm, closes


def test_each_day_uses_the_beta_of_its_own_window():
    window, min_days = 15, 8
    inputs, bm, closes = _daily_book()
    book, ex, _ = _run(inputs, bm, beta_window=window, beta_min_days=min_days)
    assert ex.height == N_DAYS
    returns = {name: np.r_[np.nan, c[1:] / c[:-1] - 1] for name, c in closes.items()}
    r, b = np.vstack([returns["X"], returns["Y"]]), returns["B"]
    for d in (3, min_days - 1, min_days, window, 25, N_DAYS - 1):
        row = ex.row(d, named=True)
        beta = instrument_betas(r[:, _window(d, window)], b[_window(d, window)], min_days)
        if d < min_days:  # days 1 .. d: fewer than min_days returns, no beta for either position
            assert np.isnan(beta).all() and row["positions_without_beta"] == 2 and row["beta_adjusted_net"] == 0.0
            continue
        value = np.array([30 * closes["X"][d], -20 * closes["Y"][d]])
        assert row["positions_without_beta"] == 0
        assert row["beta_adjusted_net"] == pytest.approx(float(value @ beta) / row["nav"], rel=1e-9), d


def test_no_look_ahead_later_prices_do_not_change_earlier_betas():
    window, min_days, cut = 15, 8, 24
    _, before, _ = _run(*_daily_book()[:2], beta_window=window, beta_min_days=min_days)
    _, after, _ = _run(*_daily_book(shock_after=cut)[:2], beta_window=window, beta_min_days=min_days)
    columns = ["date", "beta_adjusted_net", "positions_without_beta"]
    assert before.select(columns).head(cut + 1).equals(after.select(columns).head(cut + 1))
    # the later days did change: the comparison can fail
    assert (before["beta_adjusted_net"].tail(N_DAYS - cut - 1) - after["beta_adjusted_net"].tail(N_DAYS - cut - 1)).abs().min() > 1e-6


def test_long_and_non_ascii_labels_and_sort_order():
    inputs, bm = _hand_book()
    pid = "PORTFOLIO-WITH-A-LONG-ID-É"  # past the 12 bytes a string view holds inline
    rename = lambda f: f.with_columns(pl.lit(pid).alias("portfolio_id"))  # noqa: E731
    instruments = inputs.instruments.with_columns(
        pl.col("sector").replace({"Technology": "Information Technology — Software"}),
        pl.col("country").replace({"DE": "Österreich"}),
    )
    inputs = BookInputs(rename(inputs.trades), rename(inputs.portfolios), instruments, inputs.prices, inputs.fx_rates,
                        rename(inputs.cash_flows))
    _, ex, bd = _run(inputs, bm, beta_window=3, beta_min_days=2)
    assert set(ex["portfolio_id"]) == set(bd["portfolio_id"]) == {pid}
    last = bd.filter(pl.col("date") == DAYS[2])
    assert last.select("dimension", "bucket").rows() == [
        ("asset_class", "EQUITY"), ("asset_class", "FIXED_INCOME"), ("country", "US"), ("country", "Österreich"),
        ("currency", "EUR"), ("currency", "USD"),
        ("sector", "Financials"), ("sector", "Information Technology — Software"), ("sector", UNKNOWN),
    ]
    assert last.filter(pl.col("bucket") == "Information Technology — Software")["net_exposure"].item() == pytest.approx(1320.0)
    assert bd.equals(bd.sort("portfolio_id", "date", "dimension", "bucket"))


def test_duplicate_nav_or_benchmark_rows_are_rejected():
    inputs, bm = _hand_book()
    book = build_book(inputs)
    bench = benchmark_returns(bm, inputs.prices, inputs.fx_rates, inputs.instruments, ["USD"])
    args = (book.trades, book.cash_ledger, inputs.prices, inputs.fx_rates, inputs.instruments, inputs.portfolios)
    with pytest.raises(ValueError, match="daily_valuations has more than one row"):
        exposures(*args, pl.concat([book.daily_valuations, book.daily_valuations.tail(1)]), bench)
    with pytest.raises(ValueError, match="benchmark_returns has more than one row"):
        exposures(*args, book.daily_valuations, pl.concat([bench, bench.tail(1)]))


def test_a_portfolio_with_cash_only_has_zero_exposure():
    inputs, bm = _hand_book()
    inputs = BookInputs(inputs.trades.clear(), inputs.portfolios, inputs.instruments, inputs.prices, inputs.fx_rates,
                        inputs.cash_flows)
    _, ex, bd = _run(inputs, bm)
    assert ex.height == len(DAYS) and bd.height == 0
    assert ex["gross_exposure"].to_list() == [0.0] * 3 and ex["nav"].to_list() == [2000.0] * 3
    assert ex["beta_adjusted_net"].to_list() == [0.0] * 3 and ex["positions_without_beta"].to_list() == [0] * 3
    assert ex["top10_weight"].is_null().all() and ex["leverage"].to_list() == [0.0] * 3
