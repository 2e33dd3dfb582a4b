"""Execution quality (transforms.execution_quality): fills matched FIFO within the horizon,
checked by hand and against a plain Python FIFO written here (one loop over trades, one over
the open allocations), with hypothesis drawing random books; quality and summary figures by
hand."""

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import transforms  # noqa: F401 (engine affinity)
from transforms.contract import LANDING_SCHEMAS
from transforms.execution_quality import (
    EXECUTION_QUALITY_SCHEMA,
    EXECUTION_SUMMARY_SCHEMA,
    FILLS_SCHEMA,
    NO_ALLOCATIONS_NOTE,
    NO_DRIFT_AFTER_NOTE,
    NO_DRIFT_BEFORE_NOTE,
    NO_ESTIMATE_NOTE,
    UNFILLED_NOTE,
    execution_fills,
    execution_quality,
    execution_summary,
)

T0 = datetime(2025, 3, 3, 14, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
D = timedelta(days=1)


def _allocations(rows):
    """(order_id, portfolio, instrument, side, quantity, decision_price, created_at, est) rows;
    run "R"."""
    return pl.DataFrame(
        {
            "order_id": [r[0] for r in rows],
            "run_id": ["R"] * len(rows),
            "portfolio_id": [r[1] for r in rows],
            "instrument_id": [r[2] for r in rows],
            "side": [r[3] for r in rows],
            "quantity": [float(r[4]) for r in rows],
            "decision_price": [float(r[5]) for r in rows],
            "created_at": [r[6] for r in rows],
            "estimated_cost": [float(r[7]) for r in rows],
        },
        schema={
            "order_id": pl.String,
            "run_id": pl.String,
            "portfolio_id": pl.String,
            "instrument_id": pl.String,
            "side": pl.String,
            "quantity": pl.Float64,
            "decision_price": pl.Float64,
            "created_at": pl.Datetime("us", "UTC"),
            "estimated_cost": pl.Float64,
        },
    )


def _trades(rows):
    """(trade_id, portfolio, instrument, side, quantity, price, trade_ts, fees) rows, as the
    landing contract types them."""
    n = len(rows)
    return pl.DataFrame(
        {
            "trade_id": [r[0] for r in rows],
            "portfolio_id": [r[1] for r in rows],
            "instrument_id": [r[2] for r in rows],
            "trade_ts": [r[6] for r in rows],
            "settle_date": [r[6].date() + timedelta(days=2) for r in rows],
            "side": [r[3] for r in rows],
            "quantity": [float(r[4]) for r in rows],
            "price": [float(r[5]) for r in rows],
            "fees": [None if r[7] is None else float(r[7]) for r in rows],
            "strategy_id": [None] * n,
            "lot_id": [None] * n,
        },
        schema=LANDING_SCHEMAS["trades"],
    )


def _matched(fills):
    return {(r["order_id"], r["trade_id"]): r["quantity"] for r in fills.iter_rows(named=True)}


def _row(quality, order_id, portfolio_id="P"):
    return quality.filter((pl.col("order_id") == order_id) & (pl.col("portfolio_id") == portfolio_id)).row(0, named=True)


# --- by hand ----------------------------------------------------------------------------------


def test_one_buy_filled_by_two_trades_average_price_slippage_fees_and_cost():
    alloc = _allocations([("O1", "P", "X", "BUY", 100, 50.00, T0, 10.0)])
    # T2 buys 90 but only 40 are wanted: the other 50 are not matched, and T2's fees are
    # shared pro rata, 4.50 * 40 / 90 = 2.00
    trades = _trades(
        [
            ("T1", "P", "X", "BUY", 60, 50.10, T0 + H, 3.00),
            ("T2", "P", "X", "BUY", 90, 50.35, T0 + 2 * H, 4.50),
        ]
    )
    fills = execution_fills(alloc, trades)
    assert fills.schema == pl.Schema(FILLS_SCHEMA)
    assert fills["trade_id"].to_list() == ["T1", "T2"]
    assert fills["quantity"].to_list() == [60.0, 40.0]
    assert fills["fees"].to_list() == pytest.approx([3.00, 2.00], abs=1e-12)
    q = execution_quality(alloc, fills)
    assert q.schema == pl.Schema(EXECUTION_QUALITY_SCHEMA)
    r = q.row(0, named=True)
    # average (60 * 50.10 + 40 * 50.35) / 100 = (3006 + 2014) / 100 = 50.20
    assert r["average_price"] == pytest.approx(50.20, abs=1e-12)
    # buy: (50.20 - 50.00) / 50.00 * 1e4 = 40 bps worse than the decision price
    assert r["slippage_bps"] == pytest.approx(40.0, abs=1e-9)
    # realized (50.20 - 50.00) * 100 + (3.00 + 2.00) = 20 + 5 = 25; estimated 10 -> ratio 2.5
    assert r["fees"] == pytest.approx(5.0, abs=1e-12)
    assert r["realized_cost"] == pytest.approx(25.0, abs=1e-9)
    assert r["estimated_cost_filled"] == 10.0 and r["cost_ratio"] == pytest.approx(2.5, abs=1e-12)
    assert (r["filled_quantity"], r["fill_ratio"], r["status"], r["note"]) == (100.0, 1.0, "FILLED", None)


def test_one_sell_filled_by_two_trades_slippage_is_side_signed():
    alloc = _allocations([("O1", "P", "X", "SELL", 100, 50.00, T0, 10.0)])
    trades = _trades(
        [
            ("T1", "P", "X", "SELL", 60, 49.90, T0 + H, 3.00),
            ("T2", "P", "X", "SELL_SHORT", 40, 49.65, T0 + 2 * H, 2.00),  # a sell too
        ]
    )
    r = execution_quality(alloc, execution_fills(alloc, trades)).row(0, named=True)
    # average (60 * 49.90 + 40 * 49.65) / 100 = (2994 + 1986) / 100 = 49.80
    assert r["average_price"] == pytest.approx(49.80, abs=1e-12)
    # sell: (50.00 - 49.80) / 50.00 * 1e4 = +40 bps (sold below the decision price: worse)
    assert r["slippage_bps"] == pytest.approx(40.0, abs=1e-9)
    # realized -(49.80 - 50.00) * 100 + 5 = 20 + 5 = 25
    assert r["realized_cost"] == pytest.approx(25.0, abs=1e-9)
    # a sell above the decision price is a gain: (50 - 50.5) / 50 * 1e4 = -100 bps, cost -50
    better = _trades([("T1", "P", "X", "SELL", 100, 50.50, T0 + H, 0.0)])
    r = execution_quality(alloc, execution_fills(alloc, better)).row(0, named=True)
    assert r["slippage_bps"] == pytest.approx(-100.0, abs=1e-9)
    assert r["realized_cost"] == pytest.approx(-50.0, abs=1e-9)
    assert r["cost_ratio"] == pytest.approx(-5.0, abs=1e-12)


def test_fifo_fills_the_oldest_order_first_across_two_orders():
    # "B" is created before "A": creation time, not the id, sets the order
    alloc = _allocations(
        [
            ("A", "P", "X", "BUY", 50, 10.0, T0 + H, 1.0),
            ("B", "P", "X", "BUY", 100, 10.0, T0, 2.0),
        ]
    )
    trades = _trades(
        [
            ("T2", "P", "X", "BUY", 20, 11.0, T0 + 3 * H, 0.0),
            ("T1", "P", "X", "BUY", 120, 10.0, T0 + 2 * H, 0.0),
        ]
    )
    fills = execution_fills(alloc, trades)
    # T1 (first in time): 100 to B, 20 to A; T2: 20 more to A -> A has 40 of 50
    assert _matched(fills) == {("B", "T1"): 100.0, ("A", "T1"): 20.0, ("A", "T2"): 20.0}
    q = execution_quality(alloc, fills)
    a, b = _row(q, "A"), _row(q, "B")
    assert (b["status"], a["status"]) == ("FILLED", "PARTIAL")
    assert a["fill_ratio"] == pytest.approx(0.8)
    # A: (20 * 10 + 20 * 11) / 40 = 10.5; slippage 0.5 / 10 * 1e4 = 500 bps; cost 0.5 * 40 = 20;
    # estimated 1.0 * 0.8 = 0.8 -> ratio 25
    assert a["average_price"] == pytest.approx(10.5) and a["slippage_bps"] == pytest.approx(500.0)
    assert a["realized_cost"] == pytest.approx(20.0) and a["estimated_cost_filled"] == pytest.approx(0.8)
    assert a["cost_ratio"] == pytest.approx(25.0)
    # B filled at the decision price: exactly no slippage and no cost, the ratio 0 / 2 = 0
    assert (b["slippage_bps"], b["realized_cost"], b["cost_ratio"]) == (0.0, 0.0, 0.0)


def test_trades_outside_the_horizon_do_not_fill_and_the_horizon_end_is_included():
    alloc = _allocations([("O1", "P", "X", "BUY", 100, 10.0, T0, 1.0)])
    trades = _trades(
        [
            ("T0", "P", "X", "BUY", 10, 10.0, T0 - timedelta(microseconds=1), 0.0),  # before the order
            ("T1", "P", "X", "BUY", 10, 10.0, T0, 0.0),  # at created_at: in
            ("T2", "P", "X", "BUY", 10, 10.0, T0 + 5 * D, 0.0),  # at the horizon's end: in
            ("T3", "P", "X", "BUY", 10, 10.0, T0 + 5 * D + timedelta(microseconds=1), 0.0),  # out
        ]
    )
    assert _matched(execution_fills(alloc, trades)) == {("O1", "T1"): 10.0, ("O1", "T2"): 10.0}
    assert _matched(execution_fills(alloc, trades, horizon_days=2)) == {("O1", "T1"): 10.0}
    assert _matched(execution_fills(alloc, trades, horizon_days=0)) == {("O1", "T1"): 10.0}


def test_an_expired_order_leaves_the_trade_to_the_next_open_one():
    # O1 (T0, window to T0+5d) gets 30 on day 1; on day 6 it has expired, so the 100 bought
    # then all go to O2 (created day 3): the FIFO skips an expired order instead of giving
    # it the trade and discarding the match
    alloc = _allocations(
        [
            ("O1", "P", "X", "BUY", 100, 10.0, T0, 1.0),
            ("O2", "P", "X", "BUY", 100, 10.0, T0 + 3 * D, 1.0),
        ]
    )
    trades = _trades(
        [
            ("T1", "P", "X", "BUY", 30, 10.0, T0 + D, 0.0),
            ("T2", "P", "X", "BUY", 100, 10.0, T0 + 6 * D, 0.0),
        ]
    )
    assert _matched(execution_fills(alloc, trades)) == {("O1", "T1"): 30.0, ("O2", "T2"): 100.0}


def test_trades_of_the_other_direction_portfolio_or_instrument_do_not_fill():
    alloc = _allocations([("O1", "P", "X", "BUY", 100, 10.0, T0, 1.0)])
    trades = _trades(
        [
            ("T1", "P", "X", "SELL", 10, 10.0, T0 + H, 0.0),
            ("T2", "P", "X", "SELL_SHORT", 10, 10.0, T0 + H, 0.0),
            ("T3", "Q", "X", "BUY", 10, 10.0, T0 + H, 0.0),
            ("T4", "P", "Y", "BUY", 10, 10.0, T0 + H, 0.0),
        ]
    )
    fills = execution_fills(alloc, trades)
    assert fills.height == 0 and fills.schema == pl.Schema(FILLS_SCHEMA)
    r = execution_quality(alloc, fills).row(0, named=True)
    assert (r["status"], r["filled_quantity"], r["fill_ratio"], r["note"]) == ("UNFILLED", 0.0, 0.0, UNFILLED_NOTE)
    assert (r["average_price"], r["slippage_bps"], r["cost_ratio"]) == (None, None, None)
    assert (r["realized_cost"], r["estimated_cost_filled"]) == (0.0, 0.0)


def test_buy_to_cover_counts_as_a_buy_and_sell_short_as_a_sell():
    alloc = _allocations(
        [
            ("OB", "P", "X", "BUY", 10, 10.0, T0, 1.0),
            ("OS", "P", "Y", "SELL", 10, 10.0, T0, 1.0),
        ]
    )
    trades = _trades(
        [
            ("T1", "P", "X", "BUY_TO_COVER", 10, 10.0, T0 + H, 0.0),
            ("T2", "P", "Y", "SELL_SHORT", 10, 10.0, T0 + H, 0.0),
        ]
    )
    assert _matched(execution_fills(alloc, trades)) == {("OB", "T1"): 10.0, ("OS", "T2"): 10.0}


def test_an_over_fill_leaves_the_excess_unmatched_even_for_a_later_order():
    # O1 wants 50; T1 buys 80 before O2 exists: 30 are unmatched (not carried to O2); T2 then
    # fills 20 of O2
    alloc = _allocations(
        [
            ("O1", "P", "X", "BUY", 50, 10.0, T0, 1.0),
            ("O2", "P", "X", "BUY", 50, 10.0, T0 + 2 * H, 1.0),
        ]
    )
    trades = _trades(
        [
            ("T1", "P", "X", "BUY", 80, 10.0, T0 + H, 8.0),
            ("T2", "P", "X", "BUY", 20, 10.0, T0 + 3 * H, None),  # null fees count 0
        ]
    )
    fills = execution_fills(alloc, trades)
    assert _matched(fills) == {("O1", "T1"): 50.0, ("O2", "T2"): 20.0}
    # T1's fees 8.00 * 50 / 80 = 5.00 go with the matched 50
    assert fills["fees"].to_list() == pytest.approx([5.0, 0.0], abs=1e-12)
    q = execution_quality(alloc, fills)
    assert q["status"].to_list() == ["FILLED", "PARTIAL"]


def test_fractional_quantities_fill_without_rounding_slivers():
    # 0.1 + 0.2 is 0.30000000000000004 in binary: matched in micro-shares, a trade of 0.3
    # fills both exactly and leaves no sliver for the next trade
    alloc = _allocations(
        [
            ("O1", "P", "X", "BUY", 0.1, 10.0, T0, 1.0),
            ("O2", "P", "X", "BUY", 0.2, 10.0, T0 + H, 1.0),
        ]
    )
    trades = _trades(
        [
            ("T1", "P", "X", "BUY", 0.3, 10.0, T0 + 2 * H, 0.0),
            ("T2", "P", "X", "BUY", 1.0, 10.0, T0 + 3 * H, 0.0),
        ]
    )
    fills = execution_fills(alloc, trades)
    assert _matched(fills) == {("O1", "T1"): 0.1, ("O2", "T1"): 0.2}
    q = execution_quality(alloc, fills)
    assert q["fill_ratio"].to_list() == [1.0, 1.0] and q["status"].to_list() == ["FILLED", "FILLED"]


def test_a_zero_estimated_cost_gives_no_cost_ratio_and_says_why():
    alloc = _allocations([("O1", "P", "X", "BUY", 10, 10.0, T0, 0.0)])
    trades = _trades([("T1", "P", "X", "BUY", 10, 10.2, T0 + H, 0.0)])
    r = execution_quality(alloc, execution_fills(alloc, trades)).row(0, named=True)
    assert r["cost_ratio"] is None and r["note"] == NO_ESTIMATE_NOTE
    assert r["realized_cost"] == pytest.approx(2.0)  # 0.2 * 10


# --- against a reference FIFO -----------------------------------------------------------------

BUYS = {"BUY", "BUY_TO_COVER"}


def reference_fills(allocs, trades, horizon_days):
    """The FIFO by its definition: trades one by one in (ts, id) order, each filling the open
    allocations of its key oldest first (created_at, order_id) up to what they still need."""
    horizon = timedelta(days=horizon_days)
    remaining = {(a["order_id"], a["portfolio_id"]): a["quantity"] for a in allocs}
    ordered = sorted(allocs, key=lambda a: (a["created_at"], a["order_id"]))
    out = {}
    for t in sorted(trades, key=lambda t: (t["trade_ts"], t["trade_id"])):
        direction = "BUY" if t["side"] in BUYS else "SELL"
        left = t["quantity"]
        for a in ordered:
            if left <= 0:
                break
            key = (a["order_id"], a["portfolio_id"])
            same = (a["portfolio_id"], a["instrument_id"], a["side"]) == (t["portfolio_id"], t["instrument_id"], direction)
            if same and a["created_at"] <= t["trade_ts"] <= a["created_at"] + horizon and remaining[key] > 0:
                take = min(left, remaining[key])
                remaining[key] -= take
                left -= take
                out[(a["order_id"], a["portfolio_id"], t["trade_id"])] = (take, t["fees"] * take / t["quantity"])
    return out


allocation_rows = st.lists(
    st.tuples(
        st.sampled_from(["P1", "P2"]),
        st.sampled_from(["X", "Y"]),
        st.sampled_from(["BUY", "SELL"]),
        st.integers(0, 200),  # created, hours after T0 (repeats are likely: ties by order_id)
        st.integers(1, 60),  # quantity in half shares: sums are exact in floats
    ),
    max_size=12,
)
trade_rows = st.lists(
    st.tuples(
        st.sampled_from(["P1", "P2"]),
        st.sampled_from(["X", "Y"]),
        st.sampled_from(["BUY", "SELL", "SELL_SHORT", "BUY_TO_COVER"]),
        st.integers(0, 320),  # hours after T0: hits window ends exactly
        st.integers(1, 80),
        st.integers(0, 9),  # fees
    ),
    max_size=25,
)


def _book(allocs, trades, order_ids):
    a = _allocations([(order_ids[i], p, x, s, q / 2, 10.0, T0 + h * H, 1.0) for i, (p, x, s, h, q) in enumerate(allocs)])
    t = _trades([(f"T{i:02d}", p, x, s, q / 2, 10.0 + i, T0 + h * H, float(f)) for i, (p, x, s, h, q, f) in enumerate(trades)])
    return a, t


@settings(max_examples=100, deadline=None)
@given(allocation_rows, trade_rows, st.integers(0, 6), st.randoms(use_true_random=False))
def test_matching_equals_the_reference_fifo_and_never_over_fills(allocs, trades, horizon_days, rnd):
    order_ids = [f"O{i:02d}" for i in range(len(allocs))]
    rnd.shuffle(order_ids)  # ids in no relation to creation order
    a, t = _book(allocs, trades, order_ids)
    fills = execution_fills(a, t, horizon_days)
    expected = reference_fills(a.to_dicts(), t.to_dicts(), horizon_days)
    got = {(r["order_id"], r["portfolio_id"], r["trade_id"]): (r["quantity"], r["fees"]) for r in fills.iter_rows(named=True)}
    assert got.keys() == expected.keys()
    for k, (qty, fees) in expected.items():
        assert got[k][0] == qty  # halves of shares: exact
        assert got[k][1] == pytest.approx(fees, abs=1e-12)
    per_alloc = fills.group_by("order_id", "portfolio_id").agg(pl.col("quantity").sum()).join(
        a, on=["order_id", "portfolio_id"], suffix="_alloc"
    )
    assert (per_alloc["quantity"] <= per_alloc["quantity_alloc"]).all()
    per_trade = fills.group_by("trade_id").agg(pl.col("quantity").sum()).join(t, on="trade_id", suffix="_trade")
    assert (per_trade["quantity"] <= per_trade["quantity_trade"]).all()
    # every fill is of its allocation's key and inside its window
    joined = fills.join(a, on=["order_id", "portfolio_id"]).join(t, on="trade_id", suffix="_t")
    assert (joined["instrument_id"] == joined["instrument_id_t"]).all()
    assert ((joined["trade_ts"] >= joined["created_at"]) & (joined["trade_ts"] <= joined["created_at"] + timedelta(days=horizon_days))).all()
    q = execution_quality(a, fills)
    assert q.height == a.height and (q["fill_ratio"] <= 1.0).all()


def test_a_larger_random_book_equals_the_reference_and_row_order_does_not_matter():
    # long runs of trades per key exercise several doubling steps of the scan (up to 64)
    rng = np.random.default_rng(7)
    n_a, n_t = 60, 400
    portfolio, instrument = rng.choice(["P1", "P2"], n_a + n_t), rng.choice(["X", "Y"], n_a + n_t)
    sides = rng.choice(["BUY", "SELL", "SELL_SHORT", "BUY_TO_COVER"], n_t)
    allocs = [
        (str(portfolio[i]), str(instrument[i]), str(rng.choice(["BUY", "SELL"])), int(rng.integers(0, 400)), int(rng.integers(1, 400)))
        for i in range(n_a)
    ]
    trades = [
        (str(portfolio[n_a + i]), str(instrument[n_a + i]), str(sides[i]), int(rng.integers(0, 500)), int(rng.integers(1, 60)), int(rng.integers(0, 5)))
        for i in range(n_t)
    ]
    a, t = _book(allocs, trades, [f"O{i:03d}" for i in rng.permutation(n_a)])
    fills = execution_fills(a, t, 3)
    expected = reference_fills(a.to_dicts(), t.to_dicts(), 3)
    got = {(r["order_id"], r["portfolio_id"], r["trade_id"]): r["quantity"] for r in fills.iter_rows(named=True)}
    assert got == {k: v[0] for k, v in expected.items()}
    assert fills.height > 50
    # the same input in another row order: the same frames, bit for bit
    a2, t2 = a.sample(fraction=1.0, shuffle=True, seed=1), t.sample(fraction=1.0, shuffle=True, seed=2)
    fills2 = execution_fills(a2, t2, 3)
    assert_frame_equal(fills, fills2, check_exact=True)
    assert_frame_equal(execution_quality(a, fills), execution_quality(a2, fills2.reverse()), check_exact=True)


# --- summary ----------------------------------------------------------------------------------


def _quality(rows):
    """(run, order, portfolio, side, quantity, decision, filled, status, slippage, realized,
    estimated, estimated_filled) -> quality rows."""
    return pl.DataFrame(
        {
            "order_id": [r[1] for r in rows],
            "run_id": [r[0] for r in rows],
            "portfolio_id": [r[2] for r in rows],
            "instrument_id": ["X"] * len(rows),
            "side": [r[3] for r in rows],
            "quantity": [float(r[4]) for r in rows],
            "decision_price": [float(r[5]) for r in rows],
            "filled_quantity": [float(r[6]) for r in rows],
            "fill_ratio": [r[6] / r[4] for r in rows],
            "status": [r[7] for r in rows],
            "average_price": [None] * len(rows),
            "slippage_bps": [r[8] for r in rows],
            "fees": [0.0] * len(rows),
            "realized_cost": [float(r[9]) for r in rows],
            "estimated_cost": [float(r[10]) for r in rows],
            "estimated_cost_filled": [float(r[11]) for r in rows],
            "cost_ratio": [None] * len(rows),
            "note": [None] * len(rows),
        },
        schema=EXECUTION_QUALITY_SCHEMA,
    )


def _drift(rows):
    return pl.DataFrame({"run_id": [r[0] for r in rows], "portfolio_id": [r[1] for r in rows], "drift": [r[2] for r in rows]})


def test_summary_shares_slippage_costs_and_drift_by_hand():
    q = _quality(
        [
            ("R1", "O1", "P1", "BUY", 100, 10, 100, "FILLED", 20.0, 3.0, 2.0, 2.0),
            ("R1", "O1", "P2", "BUY", 50, 10, 50, "FILLED", -10.0, -0.5, 1.0, 1.0),
            ("R1", "O2", "P1", "SELL", 200, 20, 100, "PARTIAL", 5.0, 1.0, 4.0, 2.0),
            ("R1", "O3", "P2", "BUY", 10, 30, 0, "UNFILLED", None, 0.0, 1.0, 0.0),
        ]
        # R2: 20 allocations, 19 FILLED: 19 / 20 = 0.95, exactly the goal (met)
        + [("R2", f"Q{i:02d}", "P1", "BUY", 10, 5, 10 if i < 19 else 5, "FILLED" if i < 19 else "PARTIAL", 0.0, 0.0, 0.0, 0.0) for i in range(20)]
    )
    before = _drift([("R1", "P1", 0.08), ("R1", "P2", 0.04), ("R3", "P1", 0.1)])
    after = _drift([("R1", "P1", 0.01), ("R1", "P2", 0.02), ("R2", "P1", 0.03)])
    s = execution_summary(q, before, after)
    assert s.schema == pl.Schema(EXECUTION_SUMMARY_SCHEMA)
    assert s["run_id"].to_list() == ["R1", "R2", "R3"]
    r1, r2, r3 = s.rows(named=True)
    # R1: 3 orders, 4 allocations, 2 FILLED -> 0.5 < 0.95; mean fill ratio (1 + 1 + 0.5 + 0) / 4
    assert (r1["orders"], r1["allocations"], r1["filled_allocations"]) == (3, 4, 2)
    assert r1["fully_executed_share"] == 0.5 and r1["fully_executed_goal_met"] is False
    assert r1["goal_fully_executed"] == 0.95 and r1["average_fill_ratio"] == pytest.approx(0.625)
    # weights filled x decision: 100 * 10 = 1000, 50 * 10 = 500, 100 * 20 = 2000 (O3 unfilled)
    # (20 * 1000 - 10 * 500 + 5 * 2000) / 3500 = 25000 / 3500
    assert r1["slippage_bps"] == pytest.approx(25000 / 3500, rel=1e-12)
    # costs 3 - 0.5 + 1 + 0 = 3.5; estimated 2 + 1 + 4 + 1 = 8, for the filled part 5; 3.5 / 5
    assert (r1["realized_cost"], r1["estimated_cost"], r1["estimated_cost_filled"]) == pytest.approx((3.5, 8.0, 5.0))
    assert r1["cost_ratio"] == pytest.approx(0.7)
    # drift (0.08 + 0.04) / 2 = 0.06 before, (0.01 + 0.02) / 2 = 0.015 after <= 0.02
    assert r1["average_drift_before"] == pytest.approx(0.06) and r1["average_drift_after"] == pytest.approx(0.015)
    assert r1["goal_drift_after"] == 0.02 and r1["drift_goal_met"] is True and r1["note"] is None
    assert r2["orders"] == 20 and r2["fully_executed_share"] == 0.95 and r2["fully_executed_goal_met"] is True
    assert r2["average_fill_ratio"] == pytest.approx((19 + 0.5) / 20)
    assert r2["drift_goal_met"] is False and r2["average_drift_before"] is None  # 0.03 > 0.02
    assert r2["cost_ratio"] is None and r2["note"] == NO_DRIFT_BEFORE_NOTE
    # R3: a run with drift but no orders
    assert (r3["orders"], r3["allocations"], r3["fully_executed_share"], r3["fully_executed_goal_met"]) == (0, 0, None, None)
    assert r3["drift_goal_met"] is None and r3["note"] == f"{NO_ALLOCATIONS_NOTE}; {NO_DRIFT_AFTER_NOTE}"
    # no drift frames at all: the drift figures are null, the rest the same
    bare = execution_summary(q, None, None)
    assert bare["run_id"].to_list() == ["R1", "R2"] and bare["drift_goal_met"].null_count() == 2
    assert bare["slippage_bps"][0] == r1["slippage_bps"]


def test_summary_of_the_pipeline_end_to_end():
    alloc = pl.concat(
        [
            _allocations([("O1", "P", "X", "BUY", 100, 50.0, T0, 10.0), ("O2", "P", "Y", "SELL", 10, 20.0, T0, 1.0)]),
        ]
    )
    trades = _trades([("T1", "P", "X", "BUY", 100, 50.1, T0 + H, 0.0), ("T2", "P", "Y", "SELL", 5, 19.9, T0 + H, 0.0)])
    q = execution_quality(alloc, execution_fills(alloc, trades))
    s = execution_summary(q, _drift([("R", "P", 0.04)]), _drift([("R", "P", 0.01)])).row(0, named=True)
    # O1 20 bps on 5000 notional, O2 50 bps on 5 * 20 = 100: (20 * 5000 + 50 * 100) / 5100
    assert s["slippage_bps"] == pytest.approx((20 * 5000 + 50 * 100) / 5100, rel=1e-9)
    assert s["fully_executed_share"] == 0.5 and s["average_fill_ratio"] == pytest.approx(0.75)
    # realized 0.1 * 100 + 0.1 * 5 = 10.5; estimated filled 10 + 0.5
    assert s["realized_cost"] == pytest.approx(10.5) and s["estimated_cost_filled"] == pytest.approx(10.5)


# --- empty and bad input ----------------------------------------------------------------------


def test_empty_inputs_give_empty_frames_with_their_schemas():
    alloc = _allocations([])
    trades = _trades([])
    fills = execution_fills(alloc, trades)
    assert fills.height == 0 and fills.schema == pl.Schema(FILLS_SCHEMA)
    q = execution_quality(alloc, fills)
    assert q.height == 0 and q.schema == pl.Schema(EXECUTION_QUALITY_SCHEMA)
    s = execution_summary(q, None, None)
    assert s.height == 0 and s.schema == pl.Schema(EXECUTION_SUMMARY_SCHEMA)
    # allocations without trades: every allocation is UNFILLED
    one = _allocations([("O1", "P", "X", "BUY", 10, 10.0, T0, 1.0)])
    assert execution_quality(one, execution_fills(one, trades))["status"].to_list() == ["UNFILLED"]


def test_bad_input_is_refused_with_a_clear_error():
    alloc = _allocations([("O1", "P", "X", "BUY", 10, 10.0, T0, 1.0)])
    trades = _trades([("T1", "P", "X", "BUY", 10, 10.0, T0 + H, 0.0)])
    with pytest.raises(ValueError, match="quantity that is not positive"):
        execution_fills(alloc.with_columns(pl.lit(0.0).alias("quantity")), trades)
    with pytest.raises(ValueError, match="trades has 1 row.* quantity that is not positive"):
        execution_fills(alloc, trades.with_columns(pl.lit(-5.0).alias("quantity")))
    with pytest.raises(ValueError, match="missing column.*decision_price"):
        execution_fills(alloc.drop("decision_price"), trades)
    with pytest.raises(ValueError, match="missing column.*trade_ts"):
        execution_fills(alloc, trades.drop("trade_ts"))
    with pytest.raises(ValueError, match=r"duplicate key \(order_id, portfolio_id\)"):
        execution_fills(pl.concat([alloc, alloc.with_columns(pl.lit("Y").alias("instrument_id"))]), trades)
    with pytest.raises(ValueError, match="duplicate key \\(trade_id\\)"):
        execution_fills(alloc, pl.concat([trades, trades]))
    with pytest.raises(ValueError, match="BUY or a SELL"):
        execution_fills(alloc.with_columns(pl.lit("SELL_SHORT").alias("side")), trades)
    with pytest.raises(ValueError, match="not one of"):
        execution_fills(alloc, trades.with_columns(pl.lit("COVER").alias("side")))
    with pytest.raises(ValueError, match="decision_price that is not positive"):
        execution_fills(alloc.with_columns(pl.lit(0.0).alias("decision_price")), trades)
    with pytest.raises(ValueError, match="negative estimated_cost"):
        execution_fills(alloc.with_columns(pl.lit(-1.0).alias("estimated_cost")), trades)
    with pytest.raises(ValueError, match="null created_at"):
        execution_fills(alloc.with_columns(pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("created_at")), trades)
    with pytest.raises(ValueError, match="non-finite price"):
        execution_fills(alloc, trades.with_columns(pl.lit(float("nan")).alias("price")))
    with pytest.raises(ValueError, match="below the matching unit"):
        execution_fills(alloc.with_columns(pl.lit(1e-7).alias("quantity")), trades)
    with pytest.raises(ValueError, match="horizon_days"):
        execution_fills(alloc, trades, horizon_days=-1)
    with pytest.raises(ValueError, match="horizon_days"):
        execution_fills(alloc, trades, horizon_days=2.5)
    fills = execution_fills(alloc, trades)
    with pytest.raises(ValueError, match="not in allocations"):
        execution_quality(alloc, fills.with_columns(pl.lit("O9").alias("order_id")))
    with pytest.raises(ValueError, match="exceed the allocation"):
        execution_quality(alloc, fills.with_columns(pl.lit(11.0).alias("quantity")))
    with pytest.raises(ValueError, match="duplicate key \\(run_id, portfolio_id\\)"):
        execution_summary(execution_quality(alloc, fills), _drift([("R", "P", 0.1), ("R", "P", 0.2)]), None)


def test_timestamps_in_another_zone_are_compared_in_utc():
    # 15:00 in Paris (CET, UTC+1) is 14:00 UTC = T0: the trade at T0 + 1 hour is in the window
    alloc = _allocations([("O1", "P", "X", "BUY", 10, 10.0, T0, 1.0)]).with_columns(
        pl.col("created_at").dt.convert_time_zone("Europe/Paris")
    )
    trades = _trades([("T1", "P", "X", "BUY", 10, 10.0, T0 + H, 0.0)])
    fills = execution_fills(alloc, trades)
    assert _matched(fills) == {("O1", "T1"): 10.0}
    assert execution_fills(alloc, trades.with_columns(pl.lit(T0 - H).alias("trade_ts").cast(pl.Datetime("us", "UTC")))).height == 0
