"""Netting of optimiser trades into crosses and order batches (optimizers.netting): worked examples
computed by hand, conservation invariants over random trades (hypothesis), row-order and run
independence, and bad input."""

from __future__ import annotations

import math

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from optimizers.netting import (
    ALLOCATIONS_SCHEMA,
    CROSSINGS_SCHEMA,
    MAX_BATCHES,
    NETTING_SUMMARY_SCHEMA,
    ORDERS_SCHEMA,
    TRADES_SCHEMA,
    net_orders,
    netting_summary,
)

TOL = 1e-9


def _trades(rows, run="R"):
    """(portfolio, instrument, quantity, price, adv[, currency[, run]]) -> trades."""
    return pl.DataFrame(
        {
            "run_id": [r[6] if len(r) > 6 else run for r in rows],
            "portfolio_id": [r[0] for r in rows],
            "instrument_id": [r[1] for r in rows],
            "quantity": [r[2] for r in rows],
            "price": [r[3] for r in rows],
            "currency": [r[5] if len(r) > 5 else "USD" for r in rows],
            "adv": [r[4] for r in rows],
        },
        schema=TRADES_SCHEMA,
    )


def _check_schemas(netted):
    assert netted.orders.schema == pl.Schema(ORDERS_SCHEMA)
    assert netted.crossings.schema == pl.Schema(CROSSINGS_SCHEMA)
    assert netted.allocations.schema == pl.Schema(ALLOCATIONS_SCHEMA)


# --- the worked example ----------------------------------------------------------------------


def test_two_buyers_one_seller_cross_pro_rata():
    # X at 10: A buys 300, B buys 100, C sells 250. B = 400, S = 250:
    # crossed min(400, 250) = 250, net 400 - 250 = 150 to buy on the market.
    # Buys are the larger side: A crosses 300/400 * 250 = 187.5, B 100/400 * 250 = 62.5;
    # externals A 300 - 187.5 = 112.5, B 100 - 62.5 = 37.5 (sum 150); C fully crossed.
    netted = net_orders(_trades([("A", "X", 300.0, 10.0, None), ("B", "X", 100.0, 10.0, None), ("C", "X", -250.0, 10.0, None)]))
    _check_schemas(netted)
    assert netted.crossings.rows() == [("R", "X", 250.0, 10.0, "USD", 2500.0)]
    assert netted.orders.rows() == [("R", "R-X-BUY-001", "X", "BUY", 150.0, 10.0, "USD", 1500.0, 2, 1, 1)]
    assert netted.allocations.rows() == [
        ("R", "A", "X", "BUY", 300.0, 187.5, 112.5, "R-X-BUY-001"),
        ("R", "B", "X", "BUY", 100.0, 62.5, 37.5, "R-X-BUY-001"),
        ("R", "C", "X", "SELL", 250.0, 250.0, 0.0, None),
    ]
    # gross 650 shares * 10 = 6500 = 2 * 2500 crossed + 1500 external; rate 5000 / 6500
    summary = netting_summary(netted)
    assert summary.schema == pl.Schema(NETTING_SUMMARY_SCHEMA)
    row = summary.row(0, named=True)
    assert (row["trades"], row["portfolios"], row["instruments"], row["crossed_instruments"], row["orders"]) == (3, 3, 1, 1, 1)
    assert (row["gross_quantity"], row["crossed_quantity"], row["external_quantity"]) == (650.0, 250.0, 150.0)
    assert (row["gross_notional"], row["crossed_notional"], row["external_notional"]) == (6500.0, 2500.0, 1500.0)
    assert (row["external_sell_notional"], row["external_buy_notional"]) == (0.0, 1500.0)
    assert row["crossing_rate"] == pytest.approx(5000.0 / 6500.0, abs=1e-15)


def test_sellers_larger_and_exact_balance():
    # Y: A sells 90, B sells 30, C buys 60: sells larger (120), crossed 60, net SELL 60;
    # A crosses 90/120 * 60 = 45 (external 45), B 30/120 * 60 = 15 (external 15).
    # Z: A buys 50, B sells 50: fully crossed, no order.
    netted = net_orders(
        _trades(
            [
                ("A", "Y", -90.0, 4.0, None), ("B", "Y", -30.0, 4.0, None), ("C", "Y", 60.0, 4.0, None),
                ("A", "Z", 50.0, 7.0, None), ("B", "Z", -50.0, 7.0, None),
            ]
        )
    )
    assert netted.orders.select("order_id", "side", "quantity", "wave").rows() == [("R-Y-SELL-001", "SELL", 60.0, 1)]
    assert netted.crossings.select("instrument_id", "quantity", "notional").rows() == [("Y", 60.0, 240.0), ("Z", 50.0, 350.0)]
    assert netted.allocations.select("portfolio_id", "instrument_id", "crossed_quantity", "external_quantity", "order_id").rows() == [
        ("A", "Y", 45.0, 45.0, "R-Y-SELL-001"),
        ("B", "Y", 15.0, 15.0, "R-Y-SELL-001"),
        ("C", "Y", 60.0, 0.0, None),
        ("A", "Z", 50.0, 0.0, None),
        ("B", "Z", 50.0, 0.0, None),
    ]


def test_one_direction_only_does_not_cross():
    netted = net_orders(_trades([("A", "X", 30.0, 5.0, None), ("B", "X", 20.0, 5.0, None)]))
    assert netted.crossings.height == 0
    assert netted.orders.select("side", "quantity").rows() == [("BUY", 50.0)]
    assert netted.allocations.select("crossed_quantity", "external_quantity").rows() == [(0.0, 30.0), (0.0, 20.0)]
    assert netting_summary(netted)["crossing_rate"].to_list() == [0.0]


def test_decision_price_is_the_quantity_weighted_mean():
    # buy 300 at 10, sell 100 at 11: (300 * 10 + 100 * 11) / 400 = 10.25 for the cross and the order
    netted = net_orders(_trades([("A", "X", 300.0, 10.0, None), ("B", "X", -100.0, 11.0, None)]))
    assert netted.crossings.select("price", "notional").rows() == [(10.25, 1025.0)]
    assert netted.orders.select("price", "notional").rows() == [(10.25, 2050.0)]


# --- batching and sequencing -----------------------------------------------------------------


def test_batches_cut_at_the_adv_share():
    # net buy 400 - 50 = 350 with adv 1000 and share 0.1: cap 100 -> ceil(3.5) = 4 batches
    netted = net_orders(_trades([("A", "X", 400.0, 2.0, 1000.0), ("B", "X", -50.0, 2.0, 1000.0)]), max_order_adv_share=0.1)
    assert netted.orders.select("order_id", "quantity", "batch", "batches").rows() == [
        ("R-X-BUY-001", 100.0, 1, 4),
        ("R-X-BUY-002", 100.0, 2, 4),
        ("R-X-BUY-003", 100.0, 3, 4),
        ("R-X-BUY-004", 50.0, 4, 4),
    ]
    assert netted.orders["notional"].to_list() == [200.0, 200.0, 200.0, 100.0]
    # A is the only buyer: crossed 50 (on the batch-1 row), then the batches themselves
    assert netted.allocations.filter(pl.col("portfolio_id") == "A").select("quantity", "crossed_quantity", "external_quantity").rows() == [
        (150.0, 50.0, 100.0), (100.0, 0.0, 100.0), (100.0, 0.0, 100.0), (50.0, 0.0, 50.0),
    ]


def test_an_exact_multiple_makes_whole_batches_and_the_quantity_cap_applies():
    # 300 with cap 100: 3 batches, not a fourth empty one; then max_batch_quantity 80 < 100
    # cuts 300 into 80, 80, 80, 60
    trades = _trades([("A", "X", -300.0, 2.0, 1000.0)])
    assert net_orders(trades).orders["quantity"].to_list() == [100.0, 100.0, 100.0]
    assert net_orders(trades, max_batch_quantity=80.0).orders["quantity"].to_list() == [80.0, 80.0, 80.0, 60.0]
    # the adv cap when smaller than the quantity cap
    assert net_orders(trades, max_batch_quantity=250.0).orders["quantity"].to_list() == [100.0, 100.0, 100.0]


@pytest.mark.parametrize("adv", [None, 0.0])
def test_unknown_or_zero_adv_is_one_batch(adv):
    netted = net_orders(_trades([("A", "X", 5000.0, 2.0, adv)]))
    assert netted.orders.select("quantity", "batch", "batches").rows() == [(5000.0, 1, 1)]
    # a quantity cap still applies without adv: 5000 / 2000 -> 2000, 2000, 1000
    assert net_orders(_trades([("A", "X", 5000.0, 2.0, adv)]), max_batch_quantity=2000.0).orders["quantity"].to_list() == [
        2000.0, 2000.0, 1000.0,
    ]


def test_batches_are_shared_pro_rata():
    # the worked example with adv 1000 and share 0.05: cap 50, remainder 150 -> 3 batches;
    # A's external 112.5 is 37.5 per batch, B's 37.5 is 12.5 per batch (150 * 3/4, 1/4)
    trades = _trades([("A", "X", 300.0, 10.0, 1000.0), ("B", "X", 100.0, 10.0, 1000.0), ("C", "X", -250.0, 10.0, 1000.0)])
    netted = net_orders(trades, max_order_adv_share=0.05)
    assert netted.orders["quantity"].to_list() == [50.0, 50.0, 50.0]
    assert netted.allocations.select("portfolio_id", "quantity", "crossed_quantity", "external_quantity", "order_id").rows() == [
        ("A", 225.0, 187.5, 37.5, "R-X-BUY-001"),
        ("A", 37.5, 0.0, 37.5, "R-X-BUY-002"),
        ("A", 37.5, 0.0, 37.5, "R-X-BUY-003"),
        ("B", 75.0, 62.5, 12.5, "R-X-BUY-001"),
        ("B", 12.5, 0.0, 12.5, "R-X-BUY-002"),
        ("B", 12.5, 0.0, 12.5, "R-X-BUY-003"),
        ("C", 250.0, 250.0, 0.0, None),
    ]


def test_sells_come_before_buys():
    # "AAA" (a buy) sorts before "ZZZ" (a sell) by name, but sells are wave 1
    netted = net_orders(
        _trades([("A", "AAA", 10.0, 1.0, None), ("A", "ZZZ", -10.0, 1.0, None), ("B", "MMM", -4.0, 1.0, None)])
    )
    assert netted.orders.select("instrument_id", "side", "wave").rows() == [
        ("MMM", "SELL", 1), ("ZZZ", "SELL", 1), ("AAA", "BUY", 2),
    ]
    row = netting_summary(netted).row(0, named=True)
    assert (row["external_sell_notional"], row["external_buy_notional"]) == (14.0, 10.0)


def test_runs_never_cross_each_other():
    # R1 buys X, R2 sells X: two orders, no cross, one summary row per run
    trades = _trades([("A", "X", 10.0, 3.0, None, "USD", "R1"), ("A", "X", -10.0, 3.0, None, "USD", "R2")])
    netted = net_orders(trades)
    assert netted.crossings.height == 0
    assert netted.orders.select("run_id", "order_id", "side", "quantity").rows() == [
        ("R1", "R1-X-BUY-001", "BUY", 10.0), ("R2", "R2-X-SELL-001", "SELL", 10.0),
    ]
    assert netting_summary(netted).select("run_id", "crossing_rate").rows() == [("R1", 0.0), ("R2", 0.0)]


def test_summary_keeps_currencies_apart():
    netted = net_orders(_trades([("A", "X", 10.0, 3.0, None, "USD"), ("A", "Y", -10.0, 300.0, None, "JPY")]))
    summary = netting_summary(netted)
    assert summary.select("currency", "gross_notional", "external_notional").rows() == [("JPY", 3000.0, 3000.0), ("USD", 30.0, 30.0)]


def test_no_trades_gives_empty_frames():
    netted = net_orders(pl.DataFrame(schema=TRADES_SCHEMA))
    _check_schemas(netted)
    assert (netted.orders.height, netted.crossings.height, netted.allocations.height) == (0, 0, 0)
    summary = netting_summary(netted)
    assert summary.schema == pl.Schema(NETTING_SUMMARY_SCHEMA) and summary.height == 0


# --- invariants over random trades -----------------------------------------------------------

RUNS, PORTFOLIOS, INSTRUMENTS = ["R1", "R2"], [f"P{i}" for i in range(6)], ["X0", "X1", "X2", "X3"]


@st.composite
def random_trades(draw):
    advs = {
        (r, i): draw(st.sampled_from([None, 0.0, 1500.0, 8000.0, 50000.0])) for r in RUNS for i in INSTRUMENTS
    }
    keys = draw(
        st.lists(st.tuples(st.sampled_from(RUNS), st.sampled_from(PORTFOLIOS), st.sampled_from(INSTRUMENTS)), min_size=1, max_size=30, unique=True)
    )
    rows = []
    for run, portfolio, instrument in keys:
        size = draw(st.one_of(st.integers(1, 3000).map(float), st.floats(0.001, 3000.0, allow_nan=False)))
        sign = draw(st.sampled_from([1.0, -1.0]))
        price = draw(st.floats(0.5, 900.0, allow_nan=False))
        currency = "USD" if instrument != "X3" else "EUR"
        rows.append((portfolio, instrument, sign * size, price, advs[(run, instrument)], currency, run))
    share = draw(st.sampled_from([0.05, 0.1, 0.25]))
    max_batch = draw(st.one_of(st.none(), st.floats(100.0, 5000.0)))
    return _trades(rows), share, max_batch


def _close(a, b, scale=1.0):
    return abs(a - b) <= TOL * max(1.0, abs(scale))


def _check_invariants(trades, netted, share, max_batch):
    orders, crossings, alloc = netted
    _check_schemas(netted)
    inst = ["run_id", "instrument_id"]
    # every row: quantity = crossed + external, all non-negative; orders strictly positive
    assert (alloc["quantity"] - alloc["crossed_quantity"] - alloc["external_quantity"]).abs().max() <= TOL
    assert alloc.select(pl.min_horizontal(pl.col("crossed_quantity", "external_quantity").min())).item() >= 0
    assert orders.height == 0 or orders["quantity"].min() > 0
    assert alloc.filter(pl.col("order_id").is_null())["external_quantity"].abs().max() in (None, 0.0)
    # per trade: the rows sum to |quantity|, and crossed + external too
    per_trade = alloc.group_by("run_id", "portfolio_id", "instrument_id").agg(
        pl.col("quantity", "crossed_quantity", "external_quantity").sum()
    )
    joined = trades.join(per_trade, on=["run_id", "portfolio_id", "instrument_id"], how="full", suffix="_a")
    assert joined.height == trades.height
    for q, q_sum, c, e in joined.select(pl.col("quantity").abs(), "quantity_a", "crossed_quantity", "external_quantity").rows():
        assert _close(q_sum, q, q) and _close(c + e, q, q)
    # per instrument: external allocations = orders; signed orders = net of the trades;
    # crossed equal on both sides and equal to the crossing
    t = trades.group_by(inst).agg(
        pl.col("quantity").sum().alias("net"),
        pl.col("quantity").abs().sum().alias("gross"),
        pl.col("quantity").filter(pl.col("quantity") > 0).sum().alias("buy"),
        (-pl.col("quantity").filter(pl.col("quantity") < 0)).sum().alias("sell"),
    )
    o = orders.group_by(inst).agg(
        pl.col("quantity").sum().alias("ordered"),
        pl.when(pl.col("side") == "BUY").then(pl.col("quantity")).otherwise(-pl.col("quantity")).sum().alias("signed"),
    )
    a = alloc.group_by(inst).agg(
        pl.col("external_quantity").sum().alias("external"),
        pl.col("crossed_quantity").filter(pl.col("side") == "BUY").sum().alias("crossed_buy"),
        pl.col("crossed_quantity").filter(pl.col("side") == "SELL").sum().alias("crossed_sell"),
    )
    c = crossings.select(*inst, pl.col("quantity").alias("crossed"))
    table = t.join(a, on=inst, how="left").join(o, on=inst, how="left").join(c, on=inst, how="left").fill_null(0.0)
    for r in table.iter_rows(named=True):
        g = r["gross"]
        assert _close(r["external"], r["ordered"], g)
        assert _close(r["signed"], r["net"], g)
        assert _close(r["crossed_buy"], r["crossed_sell"], g)
        assert _close(r["crossed_buy"], r["crossed"], g)
        assert _close(r["crossed"], min(r["buy"], r["sell"]), g)
    # per order: its allocations sum to it
    per_order = alloc.filter(pl.col("order_id").is_not_null()).group_by("order_id").agg(pl.col("external_quantity").sum())
    check = orders.join(per_order, on="order_id", how="full")
    assert check.height == orders.height
    for q, e in check.select("quantity", "external_quantity").rows():
        assert _close(q, e, q)
    # pro rata: on a side with an external remainder every trade crosses the same share
    shares = (
        alloc.group_by("run_id", "portfolio_id", "instrument_id", "side")
        .agg(pl.col("crossed_quantity").sum() / pl.col("quantity").sum())
        .group_by("run_id", "instrument_id", "side")
        .agg(pl.col("crossed_quantity").min().alias("lo"), pl.col("crossed_quantity").max().alias("hi"))
    )
    assert (shares["hi"] - shares["lo"]).max() <= 1e-9
    # batches respect the cap, all but the last are full, ids are unique, sells precede buys
    caps = trades.group_by(inst).agg(pl.col("adv").first())
    for r in orders.join(caps, on=inst).iter_rows(named=True):
        limits = [x for x in ((share * r["adv"]) if r["adv"] else None, max_batch) if x is not None]
        cap = min(limits) if limits else math.inf
        assert r["quantity"] <= cap * (1 + 1e-9)
        if r["batch"] < r["batches"]:
            assert r["quantity"] == cap
    assert orders["order_id"].n_unique() == orders.height
    for run in orders["run_id"].unique():
        waves = orders.filter(pl.col("run_id") == run)["wave"]
        assert waves.is_sorted() and set(waves) <= {1, 2}
    assert orders.filter((pl.col("wave") == 1) != (pl.col("side") == "SELL")).height == 0
    # the summary's identity: gross = 2 crossed + external, in shares and money
    for r in netting_summary(netted).iter_rows(named=True):
        assert _close(r["gross_quantity"], 2 * r["crossed_quantity"] + r["external_quantity"], r["gross_quantity"])
        assert _close(r["gross_notional"], 2 * r["crossed_notional"] + r["external_notional"], r["gross_notional"])
        assert 0.0 <= r["crossing_rate"] <= 1.0 + 1e-12


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(random_trades(), st.randoms(use_true_random=False))
def test_conservation_order_and_run_independence(case, rnd):
    trades, share, max_batch = case
    netted = net_orders(trades, max_order_adv_share=share, max_batch_quantity=max_batch)
    _check_invariants(trades, netted, share, max_batch)
    # the same output, to the last bit, for any order of the input rows
    order = list(range(trades.height))
    rnd.shuffle(order)
    shuffled = net_orders(trades[order], max_order_adv_share=share, max_batch_quantity=max_batch)
    for a, b in zip(netted, shuffled):
        assert_frame_equal(a, b, check_exact=True)
    # each run netted alone gives that run's rows: runs never net against each other
    for run in trades["run_id"].unique():
        alone = net_orders(trades.filter(pl.col("run_id") == run), max_order_adv_share=share, max_batch_quantity=max_batch)
        for a, b in zip(netted, alone):
            assert_frame_equal(a.filter(pl.col("run_id") == run), b, check_exact=True)


def test_float_noise_does_not_make_an_order():
    # 0.1 + 0.2 bought against 0.3 sold: B - S = 5.6e-17, float noise, so both sides cross
    netted = net_orders(_trades([("A", "X", 0.1, 1.0, None), ("B", "X", 0.2, 1.0, None), ("C", "X", -0.3, 1.0, None)]))
    assert netted.orders.height == 0
    assert netted.allocations["external_quantity"].to_list() == [0.0, 0.0, 0.0]


def test_pro_rata_sums_are_exact_with_awkward_fractions():
    # three equal buyers of 1 against a sale of 2: each crosses 2/3 (not representable); the
    # residual lands on one trade so the crossed buys sum to 2 to the last float
    netted = net_orders(_trades([("A", "X", 1.0, 1.0, None), ("B", "X", 1.0, 1.0, None), ("C", "X", 1.0, 1.0, None), ("D", "X", -2.0, 1.0, None)]))
    buys = netted.allocations.filter(pl.col("side") == "BUY")
    assert buys["crossed_quantity"].sum() == pytest.approx(2.0, abs=1e-15)
    assert buys["crossed_quantity"].to_list() == pytest.approx([2 / 3] * 3, abs=1e-15)
    assert buys["external_quantity"].sum() == pytest.approx(1.0, abs=1e-15)


# --- bad input -------------------------------------------------------------------------------

GOOD = [("A", "X", 10.0, 1.0, None), ("B", "X", -5.0, 1.0, None)]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("A", "X", 0.0, 1.0, None)], "zero quantity"),
        ([("A", "X", 10.0, 0.0, None)], "non-positive price"),
        ([("A", "X", 10.0, -2.0, None)], "non-positive price"),
        ([("A", "X", 10.0, float("nan"), None)], "non-finite price"),
        ([("A", "X", float("inf"), 1.0, None)], "non-finite quantity"),
        ([("A", "X", 10.0, 1.0, -1.0)], "negative adv"),
        ([("A", "X", 10.0, 1.0, None), ("A", "X", -3.0, 1.0, None)], "duplicate key"),
        ([("A", "X", 10.0, 1.0, None, "USD"), ("B", "X", -3.0, 1.0, None, "EUR")], "several currencies"),
        ([("A", "X", 10.0, 1.0, 100.0), ("B", "X", -3.0, 1.0, None)], "several adv"),
    ],
)
def test_bad_rows_raise(rows, message):
    with pytest.raises(ValueError, match=message):
        net_orders(_trades(rows))


def test_missing_column_null_and_wrong_type_raise():
    with pytest.raises(ValueError, match="missing column.*adv"):
        net_orders(_trades(GOOD).drop("adv"))
    with pytest.raises(ValueError, match="null quantity"):
        net_orders(_trades(GOOD).with_columns(pl.lit(None, dtype=pl.Float64).alias("quantity")))
    with pytest.raises(ValueError, match="null portfolio_id"):
        net_orders(_trades(GOOD).with_columns(pl.lit(None, dtype=pl.String).alias("portfolio_id")))
    with pytest.raises(ValueError, match="wrong type"):
        net_orders(_trades(GOOD).with_columns(pl.lit("ten").alias("quantity")))


def test_bad_parameters_and_too_many_batches_raise():
    with pytest.raises(ValueError, match="max_order_adv_share"):
        net_orders(_trades(GOOD), max_order_adv_share=0.0)
    with pytest.raises(ValueError, match="max_batch_quantity"):
        net_orders(_trades(GOOD), max_batch_quantity=-1.0)
    # 10,000 shares against a cap of 0.1 * 10 = 1 share: 10,000 batches > MAX_BATCHES
    with pytest.raises(ValueError, match=f"more than {MAX_BATCHES}"):
        net_orders(_trades([("A", "X", 10_000.0, 1.0, 10.0)]))
