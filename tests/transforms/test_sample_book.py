"""Tests of the deterministic sample-book generator (tiny scale, plus one demo-scale book)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from transforms.contract import (
    ASSET_CLASSES,
    CASH_FLOW_TYPES,
    CLOSING_SIDES,
    LANDING_KINDS,
    LANDING_SCHEMAS,
    PORTFOLIO_STATUSES,
    TRADE_SIDES,
    UNIQUE_KEYS,
)
from transforms.sample_book import SCALES, BookScale, generate_book

CORRECTIONS = "trades_corrections"


@pytest.fixture(scope="module")
def tiny():
    return generate_book("tiny", seed=7)


@pytest.fixture(scope="module")
def tiny_seed_3():
    return generate_book("tiny", seed=3)


@pytest.fixture(scope="module")
def small_seed_99():
    return generate_book(BookScale(portfolios=12, instruments=60, years=0.6, trades=8_000), seed=99)


@pytest.fixture(scope="module")
def demo():
    return generate_book("demo", seed=7)


def _all(book, kind: str) -> pl.DataFrame:
    """Every file of ``kind`` concatenated, without the deliberate bad rows."""
    return pl.concat([f for stem, f in book[kind] if stem != CORRECTIONS])


def _replayed(trades: pl.DataFrame) -> pl.DataFrame:
    """Trades in replay order with running long / short position per (portfolio, instrument)."""
    key = ["portfolio_id", "instrument_id"]
    q = pl.col("quantity")
    return (
        trades.with_columns(closing=pl.col("side").is_in(CLOSING_SIDES))
        .sort("trade_ts", "closing", "trade_id")
        .with_columns(
            rank=pl.int_range(pl.len()),
            long_delta=pl.when(pl.col("side") == "BUY").then(q)
            .when(pl.col("side") == "SELL").then(-q).otherwise(0.0),
            short_delta=pl.when(pl.col("side") == "SELL_SHORT").then(q)
            .when(pl.col("side") == "BUY_TO_COVER").then(-q).otherwise(0.0),
        )
        .with_columns(
            long_pos=pl.col("long_delta").cum_sum().over(key),
            short_pos=pl.col("short_delta").cum_sum().over(key),
        )
    )


books = pytest.mark.parametrize("book_name", ["tiny", "tiny_seed_3", "small_seed_99", "demo"])


@pytest.fixture
def book(request, book_name):
    return request.getfixturevalue(book_name)


# --- determinism and shape ------------------------------------------------------------------
def test_same_seed_gives_identical_book(tiny):
    again = generate_book("tiny", seed=7)
    assert list(again) == list(tiny)
    for kind in LANDING_KINDS:
        assert [s for s, _ in again[kind]] == [s for s, _ in tiny[kind]]
        for (_, a), (_, b) in zip(again[kind], tiny[kind], strict=True):
            assert a.equals(b), kind


def test_other_seed_gives_another_book(tiny):
    other = generate_book("tiny", seed=8)
    assert not _all(other, "trades").equals(_all(tiny, "trades"))
    assert not _all(other, "prices").equals(_all(tiny, "prices"))


@books
def test_every_kind_has_exact_contract_columns_and_dtypes(book, book_name):
    assert set(book) == set(LANDING_KINDS)
    for kind in LANDING_KINDS:
        assert book[kind], kind
        for stem, frame in book[kind]:
            assert frame.schema == pl.Schema(LANDING_SCHEMAS[kind]), (kind, stem)
            assert frame.height > 0, (kind, stem)


@books
def test_ids_and_unique_keys_are_unique_across_files(book, book_name):
    for kind, cols in UNIQUE_KEYS.items():
        frame = _all(book, kind)
        assert frame.select(cols).is_duplicated().sum() == 0, kind
        assert frame.select(pl.any_horizontal(pl.col(cols).is_null())).to_series().sum() == 0, kind


def test_file_split_is_by_month_and_year(demo):
    for stem, frame in demo["trades"]:
        if stem == CORRECTIONS:
            continue
        months = frame.select(pl.col("trade_ts").dt.strftime("trades_%Y_%m").unique()).to_series()
        assert months.to_list() == [stem]
    for stem, frame in demo["cash_flows"]:
        months = frame.select(pl.col("ts").dt.strftime("cash_flows_%Y_%m").unique()).to_series()
        assert months.to_list() == [stem]
    for stem, frame in demo["prices"]:
        years = frame.select(pl.col("date").dt.strftime("prices_%Y").unique()).to_series()
        assert years.to_list() == [stem]
    assert [s for s, _ in demo["instruments"]] == ["instruments"]


def test_progress_callback_gets_messages():
    messages: list[str] = []
    generate_book("tiny", progress=messages.append)
    assert any(m.startswith("prices: 20 instruments × 60 days") for m in messages)
    assert any(m.startswith("trades:") for m in messages)


# --- trades ---------------------------------------------------------------------------------
@books
def test_positions_never_cross_zero_in_replay_order(book, book_name):
    r = _replayed(_all(book, "trades"))
    assert r["long_pos"].min() >= -1e-9
    assert r["short_pos"].min() >= -1e-9
    sides = r.group_by("portfolio_id", "instrument_id").agg(
        long=pl.col("side").is_in(["BUY", "SELL"]).any(),
        short=pl.col("side").is_in(["SELL_SHORT", "BUY_TO_COVER"]).any(),
    )
    assert sides.filter(pl.col("long") & pl.col("short")).height == 0
    # trade ids are issued in replay order
    assert r["trade_id"].is_sorted()


@books
def test_trade_values_are_valid(book, book_name):
    t = _all(book, "trades")
    inst = _all(book, "instruments")
    assert set(t["side"].unique()) <= set(TRADE_SIDES)
    assert t["quantity"].min() > 0
    assert t["price"].min() > 0
    assert t["fees"].min() >= 0
    assert (t["fees"] == 0).any()
    assert t.select(pl.col("strategy_id").is_null().any()).item() is False
    joined = t.join(inst.select("instrument_id", "lot_size", "currency"), on="instrument_id")
    assert joined.height == t.height
    lots = joined["quantity"] / joined["lot_size"]
    assert (lots == lots.round(0)).all()
    # market hours (UTC): US 14:30-20:00, EU 08:00-15:30
    minute = joined["trade_ts"].dt.hour().cast(pl.Int64) * 60 + joined["trade_ts"].dt.minute()
    us = joined["currency"] == "USD"
    assert ((minute >= 870) & (minute < 1200)).filter(us).all()
    assert ((minute >= 480) & (minute < 930)).filter(~us).all()
    # some distinct trades share one timestamp
    assert t["trade_ts"].is_duplicated().any()


@books
def test_trades_only_on_price_days_after_inception(book, book_name):
    t = _all(book, "trades").with_columns(date=pl.col("trade_ts").dt.date())
    price_days = _all(book, "prices")["date"].unique()
    assert t["date"].is_in(price_days.implode()).all()
    assert (t["date"].dt.weekday() <= 5).all()
    ports = _all(book, "portfolios")
    joined = t.join(ports.select("portfolio_id", "inception_date", "status"), on="portfolio_id")
    assert joined.height == t.height
    assert (joined["date"] > joined["inception_date"]).all()
    # settlement: two business days later
    trade_days = joined["date"].to_numpy().astype("datetime64[D]")
    expected = np.busday_offset(trade_days, 2, roll="forward")
    assert (joined["settle_date"].to_numpy().astype("datetime64[D]") == expected).all()
    assert (joined["settle_date"] >= joined["date"]).all()


@books
def test_closed_portfolios_end_flat_and_liquidating_only_reduce(book, book_name):
    r = _replayed(_all(book, "trades")).join(
        _all(book, "portfolios").select("portfolio_id", "status"), on="portfolio_id")
    final = r.group_by("portfolio_id", "instrument_id", "status").agg(
        pl.col("long_pos").last(), pl.col("short_pos").last())
    closed = final.filter(pl.col("status") == "CLOSED")
    assert closed.height > 0
    assert (closed["long_pos"].abs().max() < 1e-9) and (closed["short_pos"].abs().max() < 1e-9)
    last_day = _all(book, "prices")["date"].max()
    tail = r.filter((pl.col("status") == "LIQUIDATING")
                    & (pl.col("trade_ts").dt.date() > last_day - dt.timedelta(days=5)))
    assert set(tail["side"].unique()) <= set(CLOSING_SIDES)


@books
def test_named_lots_are_open_earlier_buys_of_the_same_key(book, book_name):
    r = _replayed(_all(book, "trades"))
    named = r.filter(pl.col("lot_id").is_not_null())
    if book_name == "demo":
        assert named.height > 0
        assert named.height < 0.05 * r.filter(pl.col("side") == "SELL").height
    assert (named["side"] == "SELL").all()
    lots = r.select("trade_id", "portfolio_id", "instrument_id", "side", "quantity", "rank",
                    "long_pos")
    j = named.join(lots, left_on="lot_id", right_on="trade_id", suffix="_lot")
    assert j.height == named.height
    assert (j["side_lot"] == "BUY").all()
    assert (j["portfolio_id"] == j["portfolio_id_lot"]).all()
    assert (j["instrument_id"] == j["instrument_id_lot"]).all()
    assert (j["rank_lot"] < j["rank"]).all()
    assert (j["quantity"] <= j["quantity_lot"]).all()
    # wholly open: the lot opened the position from flat and nothing was sold in between
    between = (
        j.select("trade_id", "portfolio_id", "instrument_id", "rank", "rank_lot")
        .join(r.select("portfolio_id", "instrument_id", pl.col("rank").alias("r"), "side"),
              on=["portfolio_id", "instrument_id"])
        .filter((pl.col("r") > pl.col("rank_lot")) & (pl.col("r") < pl.col("rank"))
                & (pl.col("side") == "SELL"))
    )
    assert between.height == 0
    opened_from_flat = j.select((pl.col("long_pos_lot") - pl.col("quantity_lot")).abs() < 1e-9)
    assert opened_from_flat.to_series().all()


def test_demo_has_wash_sale_situations(demo):
    """A TAXABLE portfolio sells below its last purchase price and buys again within 30 days."""
    t = _all(demo, "trades").join(
        _all(demo, "portfolios").select("portfolio_id", "tax_status"), on="portfolio_id")
    t = t.filter((pl.col("tax_status") == "TAXABLE") & pl.col("side").is_in(["BUY", "SELL"]))
    t = t.sort("trade_ts").with_columns(
        last_buy=pl.when(pl.col("side") == "BUY").then(pl.col("price")).forward_fill()
        .shift(1).over("portfolio_id", "instrument_id"),
        next_buy_ts=pl.when(pl.col("side") == "BUY").then(pl.col("trade_ts")).backward_fill()
        .shift(-1).over("portfolio_id", "instrument_id"),
    )
    wash = t.filter((pl.col("side") == "SELL") & (pl.col("price") < pl.col("last_buy"))
                    & (pl.col("next_buy_ts") - pl.col("trade_ts") <= dt.timedelta(days=30)))
    assert wash.height > 100


# --- the other kinds ------------------------------------------------------------------------
@books
def test_cash_flows(book, book_name):
    cf = _all(book, "cash_flows")
    ports = _all(book, "portfolios")
    assert cf["amount"].min() > 0
    assert set(cf["type"].unique()) <= set(CASH_FLOW_TYPES)
    div = cf.filter(pl.col("type") == "DIVIDEND")
    assert div["instrument_id"].null_count() == 0
    assert cf.filter(pl.col("type") != "DIVIDEND")["instrument_id"].null_count() == \
        cf.filter(pl.col("type") != "DIVIDEND").height
    # non-dividend flows are in the portfolio's base currency, dividends in the instrument's
    j = cf.join(ports.select("portfolio_id", "base_currency", "inception_date"), on="portfolio_id")
    j = j.join(_all(book, "instruments").select("instrument_id", pl.col("currency").alias("ic")),
               on="instrument_id", how="left")
    expected_ccy = (pl.when(pl.col("type") == "DIVIDEND").then(pl.col("ic"))
                    .otherwise(pl.col("base_currency")))
    assert j.select((pl.col("currency") == expected_ccy).all()).item()
    # the first flow of every portfolio is its inception deposit
    first = j.sort("ts").group_by("portfolio_id").first()
    assert first.height == ports.height
    assert (first["type"] == "DEPOSIT").all()
    assert (first["ts"].dt.date() == first["inception_date"]).all()


@books
def test_dividends_only_on_held_long_positions(book, book_name):
    t = _all(book, "trades")
    key = ["portfolio_id", "instrument_id"]
    signed = (
        t.filter(pl.col("side").is_in(["BUY", "SELL"]))
        .sort("trade_ts")
        .with_columns(pos=pl.when(pl.col("side") == "BUY").then(pl.col("quantity"))
                      .otherwise(-pl.col("quantity")).cum_sum().over(key))
        .select(*key, "trade_ts", "pos")
    )
    div = _all(book, "cash_flows").filter(pl.col("type") == "DIVIDEND").sort("ts")
    held = div.join_asof(signed, left_on="ts", right_on="trade_ts", by=key, check_sortedness=False)
    assert div.height > 0
    assert (held["pos"].fill_null(0) > 0).all()


@books
def test_cash_never_goes_negative_by_day(book, book_name):
    """In the base currency, trades (at trade date) plus flows never leave a portfolio short of
    cash at the end of any day (the inception deposit is sized for it)."""
    ports = _all(book, "portfolios").select("portfolio_id", "base_currency")
    inst = _all(book, "instruments").select("instrument_id", pl.col("currency").alias("ccy"))
    fx = _all(book, "fx_rates").select("date", "usd_per_unit")
    t = _all(book, "trades").with_columns(
        date=pl.col("trade_ts").dt.date(),
        amount=pl.when(pl.col("side").is_in(["BUY", "BUY_TO_COVER"]))
        .then(-pl.col("quantity") * pl.col("price")).otherwise(pl.col("quantity") * pl.col("price"))
        - pl.col("fees"),
    ).join(inst, on="instrument_id")
    cf = _all(book, "cash_flows").with_columns(
        date=pl.col("ts").dt.date(),
        amount=pl.when(pl.col("type").is_in(["WITHDRAWAL", "FEE"])).then(-pl.col("amount"))
        .otherwise(pl.col("amount")),
        ccy=pl.col("currency"),
    )
    cols = ["portfolio_id", "date", "ccy", "amount"]
    both = pl.concat([t.select(cols), cf.select(cols)])
    both = both.join(ports, on="portfolio_id").join(fx, on="date")
    both = both.with_columns(
        base=pl.when(pl.col("ccy") == pl.col("base_currency")).then(pl.col("amount"))
        .when(pl.col("ccy") == "EUR").then(pl.col("amount") * pl.col("usd_per_unit"))
        .otherwise(pl.col("amount") / pl.col("usd_per_unit"))
    )
    daily = both.group_by("portfolio_id", "date").agg(pl.col("base").sum()).sort("date")
    running = daily.with_columns(cash=pl.col("base").cum_sum().over("portfolio_id"))
    assert running["cash"].min() >= -1e-6


@books
def test_target_and_benchmark_weights_sum_to_one(book, book_name):
    targets = _all(book, "targets")
    sums = targets.group_by("portfolio_id", "strategy_id", "effective_date").agg(
        pl.col("target_weight").sum())
    assert (sums["target_weight"] - 1.0).abs().max() < 1e-9
    assert targets["target_weight"].min() > 0
    assert targets["effective_date"].n_unique() == 2
    bm = _all(book, "benchmarks")
    sums = bm.group_by("benchmark_id", "effective_date").agg(pl.col("weight").sum())
    assert (sums["weight"] - 1.0).abs().max() < 1e-9
    assert bm["weight"].min() > 0
    assert bm["effective_date"].n_unique() == 2
    # every portfolio sleeve that trades has targets; portfolios name existing benchmarks
    sleeves = _all(book, "trades").select("portfolio_id", "strategy_id").unique()
    assert sleeves.join(targets, on=["portfolio_id", "strategy_id"], how="anti").height == 0
    named = _all(book, "portfolios")["benchmark_id"].drop_nulls().unique()
    assert named.is_in(bm["benchmark_id"].unique().implode()).all()


@books
def test_references_resolve(book, book_name):
    instruments = _all(book, "instruments")["instrument_id"].implode()
    portfolios = _all(book, "portfolios")["portfolio_id"].implode()
    for kind in ("prices", "trades", "cash_flows", "targets", "benchmarks", "signals"):
        frame = _all(book, kind)
        assert frame["instrument_id"].drop_nulls().is_in(instruments).all(), kind
        if "portfolio_id" in frame.columns:
            assert frame["portfolio_id"].drop_nulls().is_in(portfolios).all(), kind


@books
def test_prices_and_fx(book, book_name):
    prices = _all(book, "prices")
    n_inst = _all(book, "instruments").height
    n_days = prices["date"].n_unique()
    assert prices.height == n_inst * n_days
    assert prices["close"].min() >= 0.01
    assert (prices["close"] == prices["close"].round(2)).all()
    assert prices["volume"].min() >= 0
    fx = _all(book, "fx_rates")
    assert fx.height == n_days and (fx["currency"] == "EUR").all()
    assert fx["usd_per_unit"].is_between(0.8, 1.4).all()
    # returns are correlated through the market factor
    wide = prices.pivot(on="instrument_id", index="date", values="close").sort("date").drop("date")
    rets = np.diff(np.log(wide.to_numpy()), axis=0)
    corr = np.corrcoef(rets.T)
    assert np.nanmean(corr[np.triu_indices_from(corr, 1)]) > 0.05


def test_signals_have_all_columns_populated(demo):
    s = _all(demo, "signals")
    assert 2_000 <= s.height <= 10_000
    for col in s.columns:
        assert s[col].null_count() < s.height, col
    assert s["score"].null_count() == 0
    assert s["ts"].is_sorted()


# --- demo scale -----------------------------------------------------------------------------
def test_demo_scale_sizes_and_coverage(demo):
    def near(value, target):
        return 0.8 * target <= value <= 1.2 * target

    inst = _all(demo, "instruments")
    ports = _all(demo, "portfolios")
    assert near(ports.height, 25) and near(inst.height, 300)
    assert near(_all(demo, "trades").height, 100_000)
    assert near(_all(demo, "prices")["date"].n_unique(), 2 * 261)
    assert _all(demo, "prices")["date"].max() == dt.date(2026, 10, 30)
    assert inst["sector"].n_unique() >= 8
    assert inst["asset_class"].n_unique() >= 3 and set(inst["asset_class"]) <= set(ASSET_CLASSES)
    assert set(inst["currency"]) == {"USD", "EUR"}
    assert set(inst["lot_size"]) >= {1, 100}
    assert set(ports["status"]) == set(PORTFOLIO_STATUSES)
    assert ports.filter(pl.col("status") == "ACTIVE").height > ports.height / 2
    assert set(ports["base_currency"]) == {"USD", "EUR"}
    assert set(ports["tax_status"]) == {"TAXABLE", "EXEMPT"}
    assert set(ports["lot_method"]) == {"FIFO", "LIFO", "HIFO"}
    assert set(_all(demo, "trades")["side"]) == set(TRADE_SIDES)
    assert set(_all(demo, "cash_flows")["type"]) == set(CASH_FLOW_TYPES)
    assert _all(demo, "trades")["strategy_id"].n_unique() >= 2


def test_demo_bad_rows_are_in_their_own_file(demo, tiny):
    assert CORRECTIONS not in [s for s, _ in tiny["trades"]]
    bad = dict(demo["trades"])[CORRECTIONS]
    assert 8 <= bad.height <= 15
    good = _all(demo, "trades")
    # one row reuses an existing trade id, one names an unknown instrument, one oversells
    assert bad["trade_id"].drop_nulls().is_in(good["trade_id"].implode()).sum() == 1
    assert (~bad["instrument_id"].is_in(_all(demo, "instruments")["instrument_id"].implode())).any()
    assert (~bad["side"].is_in(list(TRADE_SIDES))).sum() >= 1
    assert (bad["quantity"] <= 0).sum() >= 1
    assert bad["quantity"].max() > 100 * good["quantity"].max() or bad["quantity"].max() > 1e5
    with_bad = generate_book("tiny", include_bad_rows=True)
    assert CORRECTIONS in [s for s, _ in with_bad["trades"]]


def test_custom_scale():
    scale = BookScale(portfolios=6, instruments=30, years=0.5, trades=3_000, signals=50)
    book = generate_book(scale, seed=1)
    assert _all(book, "portfolios").height == 6
    assert 0.8 * 3_000 <= _all(book, "trades").height <= 1.2 * 3_000
    assert SCALES["standard"].trades == 10_000_000
    with pytest.raises(ValueError):
        generate_book("huge")
