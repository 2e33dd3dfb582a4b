"""Tests of the optimiser's tax inputs (optimizers.tax): per-lot tax, sale order, wash-sale
windows, the convex tax segments, harvest candidates and lot selection.

Every figure is computed by hand in the comment next to it; the term rule is checked against the
ledger's (transforms.lots); the segments are checked against the lot-by-lot tax function on
random lots with hypothesis.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from optimizers.tax import (
    HARVEST_CANDIDATES_SCHEMA,
    LOT_SALES_SCHEMA,
    LOT_TAX_COSTS_SCHEMA,
    NO_PRICE,
    PRICE_NOT_POSITIVE,
    RECENT_PURCHASES_SCHEMA,
    TAX_SEGMENTS_SCHEMA,
    WASH_SALE_BLOCKS_SCHEMA,
    WASH_SALE_DAYS,
    TaxRates,
    harvest_candidates,
    lot_tax_costs,
    recent_purchases,
    select_lots,
    tax_segments,
    wash_sale_blocks,
)
from transforms.contract import LANDING_SCHEMAS, LOTS_SCHEMA, REALIZED_PNL_SCHEMA

AS_OF = date(2025, 6, 30)
NAV = pl.DataFrame({"portfolio_id": ["P"], "nav": [10_000.0]})
ALL_X = pl.DataFrame({"portfolio_id": ["P"], "instrument_id": ["X"]})
NONE = ALL_X.clear()


def ts(d: date, hour: int = 15) -> datetime:
    return datetime(d.year, d.month, d.day, hour, tzinfo=UTC)


def lots_frame(rows) -> pl.DataFrame:
    """rows: (portfolio, instrument, lot_id, quantity, tax_basis, holding_start[, position_type
    [, status[, open date]]]); cost_basis = tax_basis (no wash-sale adjustment) unless told."""
    out = []
    for r in rows:
        pid, iid, lot, qty, basis, hstart = r[:6]
        side = r[6] if len(r) > 6 else "LONG"
        status = r[7] if len(r) > 7 else "OPEN"
        opened = r[8] if len(r) > 8 else hstart
        out.append(
            {
                "portfolio_id": pid, "instrument_id": iid, "lot_id": lot, "position_type": side,
                "strategy_id": None, "open_trade_id": lot, "open_ts": ts(opened), "open_price": 1.0,
                "original_quantity": max(qty, 1.0), "quantity": qty, "cost_basis": basis,
                "wash_sale_adjustment": 0.0, "tax_basis": basis, "holding_start": hstart,
                "status": status, "closed_ts": ts(AS_OF) if status == "CLOSED" else None,
            }
        )
    return pl.DataFrame(out, schema=LOTS_SCHEMA)


def three_lots() -> pl.DataFrame:
    """The hand-built instrument X of portfolio P, price 100 on 2025-06-30:
    A: 10 sh, tax basis 1,200 (economic 1,100 + a 100 wash-sale adjustment), since 2025-01-15:
       basis 120, gain -20, SHORT (0.37): tax/share -7.40 (a saving)
    B: 20 sh, tax basis 1,600, since 2025-03-01: basis 80, gain +20, SHORT: tax/share +7.40
    C: 30 sh, tax basis 2,100, since 2022-05-01: basis 70, gain +30, LONG (0.20): tax/share +6.00
    plus a CLOSED lot and a SHORT lot that must be ignored."""
    df = lots_frame(
        [
            ("P", "X", "A", 10.0, 1200.0, date(2025, 1, 15)),
            ("P", "X", "B", 20.0, 1600.0, date(2025, 3, 1)),
            ("P", "X", "C", 30.0, 2100.0, date(2022, 5, 1)),
            ("P", "X", "D", 0.0, 0.0, date(2021, 1, 4), "LONG", "CLOSED"),
            ("P", "X", "S", 5.0, 600.0, date(2025, 2, 3), "SHORT"),
        ]
    )
    return df.with_columns(
        pl.when(pl.col("lot_id") == "A").then(1100.0).otherwise(pl.col("cost_basis")).alias("cost_basis"),
        pl.when(pl.col("lot_id") == "A").then(100.0).otherwise(pl.col("wash_sale_adjustment")).alias("wash_sale_adjustment"),
    )


PRICES = pl.DataFrame({"instrument_id": ["X"], "price": [100.0], "fx_rate": [1.25]})


def sells(*rows) -> pl.DataFrame:
    return pl.DataFrame(
        {"portfolio_id": [r[0] for r in rows], "instrument_id": [r[1] for r in rows], "quantity": [float(r[2]) for r in rows]}
    )


def shuffled(df: pl.DataFrame, seed: int) -> pl.DataFrame:
    return df.sample(fraction=1.0, shuffle=True, seed=seed)


def tax_function(lengths, slopes, w: float) -> float:
    """Tax of selling weight w along pieces taken in order: sum_i s_i * clip(w - L_i, 0, l_i)."""
    start = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    return float(np.sum(np.asarray(slopes) * np.clip(w - start, 0.0, np.asarray(lengths))))


# --- per-lot tax and the sale order ---------------------------------------------------------------


def test_three_lots_by_hand():
    costs = lot_tax_costs(three_lots(), PRICES, AS_OF, TaxRates(0.37, 0.20))
    assert costs.schema == pl.Schema(LOT_TAX_COSTS_SCHEMA)
    # sale order: ascending tax/share: A (-7.40), C (+6.00), B (+7.40); D (closed), S (short) gone
    assert costs["lot_id"].to_list() == ["A", "C", "B"]
    assert costs["basis_per_share"].to_list() == pytest.approx([120.0, 70.0, 80.0])  # TAX basis, not 1,100 / 10
    assert costs["gain_per_share"].to_list() == pytest.approx([-20.0, 30.0, 20.0])
    assert costs["term"].to_list() == ["SHORT", "LONG", "SHORT"]
    assert costs["rate"].to_list() == [0.37, 0.20, 0.37]
    assert costs["tax_per_share"].to_list() == pytest.approx([-7.4, 6.0, 7.4], abs=1e-12)
    # per unit of value: / price 100
    assert costs["tax_per_value"].to_list() == pytest.approx([-0.074, 0.06, 0.074], abs=1e-14)
    assert costs["fx_rate"].to_list() == [1.25] * 3
    assert costs["note"].null_count() == 3

    # sell 25 shares: all of A (10), then 15 of C's 30 (the sale ends inside the second lot)
    sold = select_lots(costs, sells(("P", "X", 25)))
    assert sold.schema == pl.Schema(LOT_SALES_SCHEMA)
    assert sold["lot_id"].to_list() == ["A", "C"]
    assert sold["quantity"].to_list() == [10.0, 15.0]
    assert sold["gain"].to_list() == pytest.approx([-200.0, 450.0])  # 10 x -20, 15 x 30
    assert sold["tax"].to_list() == pytest.approx([-74.0, 90.0])  # 10 x -7.40, 15 x 6.00
    assert sold["term"].to_list() == ["SHORT", "LONG"]
    assert not sold["wash_sale"].any()
    # total tax: -74 + 90 = 16 (local); FIFO would have sold C first... by holding start: C (2022)
    # 25 sh x 6.00 = 150, so the tax-optimal order saves 134
    assert sold["tax"].sum() == pytest.approx(16.0)


def test_sale_order_ties_go_fifo_then_by_lot_id():
    # three lots with the same basis and term: same tax/share, so by holding_start, then lot_id
    lots = lots_frame(
        [
            ("P", "X", "L3", 1.0, 50.0, date(2025, 2, 1)),
            ("P", "X", "L2", 1.0, 50.0, date(2025, 1, 2)),
            ("P", "X", "L1", 1.0, 50.0, date(2025, 2, 1)),
        ]
    )
    costs = lot_tax_costs(lots, PRICES, AS_OF)
    assert costs["lot_id"].to_list() == ["L2", "L1", "L3"]


def test_unpriced_lots_are_flagged_and_skipped():
    lots = lots_frame([("P", "X", "A", 10.0, 1000.0, date(2025, 1, 2)), ("P", "Y", "B", 5.0, 500.0, date(2025, 1, 2)),
                       ("P", "Z", "C", 5.0, 500.0, date(2025, 1, 2))])
    prices = pl.DataFrame({"instrument_id": ["X", "Z"], "price": [110.0, 0.0], "fx_rate": [1.0, 1.0]})
    costs = lot_tax_costs(lots, prices, AS_OF)
    by = {r["lot_id"]: r for r in costs.to_dicts()}
    assert by["A"]["note"] is None and by["A"]["tax_per_share"] == pytest.approx(0.37 * 10.0)
    assert by["B"]["note"] == NO_PRICE and by["C"]["note"] == PRICE_NOT_POSITIVE
    for lot in ("B", "C"):
        assert [by[lot][c] for c in ("price", "gain_per_share", "tax_per_share", "tax_per_value")] == [None] * 4
        assert by[lot]["basis_per_share"] == 100.0 and by[lot]["term"] == "SHORT"
    nav = pl.DataFrame({"portfolio_id": ["P"], "nav": [1000.0]})
    seg = tax_segments(costs, nav, None, 3, NONE)
    assert seg["instrument_id"].to_list() == ["X"]
    with pytest.raises(ValueError, match="no price for the lots of P/Y"):
        select_lots(costs, sells(("P", "Y", 1)))


# --- term -----------------------------------------------------------------------------------------


def test_term_boundary_matches_the_ledger():
    from transforms.lots import _long_term, build_ledger

    one = lots_frame([("P", "X", "A", 1.0, 50.0, date(2023, 1, 10))])
    term = lambda lots, d: lot_tax_costs(lots, PRICES, d)["term"].item()  # noqa: E731
    assert term(one, date(2024, 1, 10)) == "SHORT"  # 365 days
    assert term(one, date(2024, 1, 11)) == "LONG"  # 366 days
    # the ledger's year is a calendar year: across Feb 29 it is 366 days, so 366 days is SHORT
    leap = lots_frame([("P", "X", "A", 1.0, 50.0, date(2023, 3, 1))])
    assert (date(2024, 3, 1) - date(2023, 3, 1)).days == 366 and term(leap, date(2024, 3, 1)) == "SHORT"
    assert term(leap, date(2024, 3, 2)) == "LONG"
    # bought on Feb 29: + 1y = Feb 28
    feb29 = lots_frame([("P", "X", "A", 1.0, 50.0, date(2024, 2, 29))])
    assert [term(feb29, d) for d in (date(2025, 2, 28), date(2025, 3, 1))] == ["SHORT", "LONG"]

    # every holding start over three years, against the ledger's own rule, at several sale days
    starts = [date(2022, 1, 1) + timedelta(days=k) for k in range(0, 1100, 3)]
    lots = lots_frame([("P", "X", f"L{k:04d}", 1.0, 50.0, d) for k, d in enumerate(starts)])
    epoch = date(1970, 1, 1)
    for sale in (date(2024, 2, 28), date(2024, 2, 29), date(2024, 3, 1), date(2025, 3, 1)):
        costs = lot_tax_costs(lots, PRICES, sale).sort("holding_start")
        h = np.array([(d - epoch).days for d in costs["holding_start"]])
        expected = _long_term(h, np.full(h.size, (sale - epoch).days))
        assert (costs["term"] == "LONG").to_list() == expected.tolist()

    # end to end: the ledger's realised term at a sale date = lot_tax_costs' term on that date
    trades = pl.DataFrame(
        [
            {"trade_id": t, "portfolio_id": "P", "instrument_id": "X", "trade_ts": ts(d), "settle_date": d,
             "side": side, "quantity": q, "price": 50.0, "fees": 0.0, "strategy_id": None, "lot_id": None}
            for t, d, side, q in [("B1", date(2023, 1, 10), "BUY", 100.0), ("S1", date(2024, 1, 10), "SELL", 10.0),
                                  ("S2", date(2024, 1, 11), "SELL", 10.0)]
        ],
        schema=LANDING_SCHEMAS["trades"],
    )
    ledger = build_ledger(trades, pl.DataFrame({"portfolio_id": ["P"], "tax_status": ["TAXABLE"], "lot_method": ["FIFO"]}))
    realized = dict(zip(ledger.realized_pnl["trade_id"], ledger.realized_pnl["term"]))
    assert realized == {"S1": "SHORT", "S2": "LONG"}
    assert term(ledger.lots, date(2024, 1, 10)) == "SHORT" and term(ledger.lots, date(2024, 1, 11)) == "LONG"


# --- wash-sale windows ------------------------------------------------------------------------------


def realized_frame(rows) -> pl.DataFrame:
    """rows: (portfolio, instrument, lot, position_type, close date, realized_pnl, disallowed_loss)."""
    out = []
    for k, (pid, iid, lot, side, d, pnl, dis) in enumerate(rows):
        out.append(
            {
                "portfolio_id": pid, "instrument_id": iid, "trade_id": f"T{k}", "lot_id": lot, "position_type": side,
                "close_ts": ts(d), "quantity": 1.0, "proceeds": 100.0 + pnl, "cost_basis": 100.0, "realized_pnl": pnl,
                "wash_sale_adjustment": 0.0, "disallowed_loss": dis, "taxable_pnl": pnl + dis,
                "holding_start": date(2025, 1, 2), "holding_days": (d - date(2025, 1, 2)).days, "term": "SHORT",
            }
        )
    return pl.DataFrame(out, schema=REALIZED_PNL_SCHEMA)


def test_wash_sale_blocks_by_hand():
    d30, d31 = AS_OF - timedelta(days=30), AS_OF - timedelta(days=31)
    realized = realized_frame(
        [
            ("P", "A", "a", "LONG", d30, -50.0, 0.0),  # 30 days before: blocks until 30 + 30 days = as_of
            ("P", "B", "b", "LONG", d31, -50.0, 0.0),  # 31 days before: outside the window
            ("P", "C", "c", "LONG", AS_OF, 80.0, 0.0),  # a gain never blocks
            ("P", "D", "d", "SHORT", AS_OF, -60.0, 0.0),  # a short cover at a loss never blocks
            ("P", "E", "e", "LONG", AS_OF, -70.0, 70.0),  # loss fully disallowed (taxable 0): no block
            ("P", "F", "f", "LONG", AS_OF - timedelta(days=5), -100.0, 60.0),  # partly: taxable -40 blocks
            # two loss sales of G: both in the window; the later one sets the date, losses add up
            ("P", "G", "g1", "LONG", AS_OF - timedelta(days=20), -10.0, 0.0),
            ("P", "G", "g2", "LONG", AS_OF - timedelta(days=2), -15.0, 0.0),
            ("P", "H", "h", "LONG", AS_OF + timedelta(days=1), -15.0, 0.0),  # after as_of: not yet
            ("Q", "A", "qa", "LONG", d31, -5.0, 0.0),  # portfolios are independent
            ("Q", "A", "qb", "LONG", AS_OF - timedelta(days=29), -7.0, 0.0),
        ]
    )
    out = wash_sale_blocks(realized, AS_OF)
    assert out.schema == pl.Schema(WASH_SALE_BLOCKS_SCHEMA)
    assert out.rows() == [
        ("P", "A", d30, AS_OF, 50.0),
        ("P", "F", AS_OF - timedelta(days=5), AS_OF + timedelta(days=25), 40.0),
        ("P", "G", AS_OF - timedelta(days=2), AS_OF + timedelta(days=28), 25.0),
        ("Q", "A", AS_OF - timedelta(days=29), AS_OF + timedelta(days=1), 7.0),
    ]
    assert_frame_equal(wash_sale_blocks(shuffled(realized, 3), AS_OF), out)
    # a shorter window: the 20-day-old sale of G drops out, and so does A
    out7 = wash_sale_blocks(realized, AS_OF, days=7)
    assert out7.select("instrument_id", "loss").rows() == [("F", 40.0), ("G", 15.0)]
    assert WASH_SALE_DAYS == 30


def test_recent_purchases_inside_and_outside_the_window():
    lots = lots_frame(
        [
            ("P", "A", "a1", 5.0, 500.0, date(2025, 1, 2), "LONG", "OPEN", AS_OF - timedelta(days=30)),  # in (edge)
            ("P", "A", "a2", 5.0, 500.0, date(2025, 1, 2), "LONG", "OPEN", AS_OF - timedelta(days=10)),  # in, later
            ("P", "B", "b", 5.0, 500.0, date(2025, 1, 2), "LONG", "OPEN", AS_OF - timedelta(days=31)),  # out
            ("P", "C", "c", 0.0, 0.0, date(2025, 1, 2), "LONG", "CLOSED", AS_OF),  # closed still counts
            ("P", "D", "d", 5.0, 500.0, date(2025, 1, 2), "SHORT", "OPEN", AS_OF),  # a short sale: not a purchase
            ("P", "E", "e", 5.0, 500.0, date(2025, 1, 2), "LONG", "OPEN", AS_OF + timedelta(days=1)),  # after as_of
            # a wash-sale piece: holding_start moved back a year, but it was bought 3 days ago
            ("P", "F", "f~W1", 5.0, 500.0, date(2024, 5, 1), "LONG", "OPEN", AS_OF - timedelta(days=3)),
        ]
    )
    out = recent_purchases(lots, AS_OF)
    assert out.schema == pl.Schema(RECENT_PURCHASES_SCHEMA)
    assert out.rows() == [
        ("P", "A", AS_OF - timedelta(days=10)),
        ("P", "C", AS_OF),
        ("P", "F", AS_OF - timedelta(days=3)),
    ]
    assert_frame_equal(recent_purchases(shuffled(lots, 5), AS_OF), out)


# --- the convex tax segments ----------------------------------------------------------------------


def test_segments_of_the_three_lots_by_hand():
    costs = lot_tax_costs(three_lots(), PRICES, AS_OF)
    # lengths: qty x 100 x 1.25 / 10,000: A 0.125, C 0.375, B 0.25 (total 60 x 125 / 10,000 = 0.75)
    seg = tax_segments(costs, NAV, None, 3, ALL_X)
    assert seg.schema == pl.Schema(TAX_SEGMENTS_SCHEMA)
    assert seg.select("segment", "length").rows() == [(0, 0.125), (1, 0.375), (2, 0.25)]
    assert seg["slope"].to_list() == pytest.approx([-0.074, 0.06, 0.074], abs=1e-15)
    # T(0.3) = 0.125 x -0.074 + 0.175 x 0.06 = -0.00925 + 0.0105 = 0.00125 of nav = 12.50 base:
    # 0.3 of nav = 3,000 base = 24 shares: A's 10 (-74 local) + 14 of C (84 local) = 10 local x 1.25
    assert tax_function(seg["length"], seg["slope"], 0.3) == pytest.approx(0.00125, abs=1e-15)
    # not harvestable: A's saving is worth nothing
    assert tax_segments(costs, NAV, None, 3, NONE)["slope"].to_list() == pytest.approx([0.0, 0.06, 0.074])
    # two segments: the loss keeps its own, C and B merge: (0.375 x 0.06 + 0.25 x 0.074) / 0.625 = 0.0656
    two = tax_segments(costs, NAV, None, 2, ALL_X)
    assert two["length"].to_list() == pytest.approx([0.125, 0.625])
    assert two["slope"].to_list() == pytest.approx([-0.074, 0.0656])
    # one segment: the chord of the whole function: (-0.00925 + 0.0225 + 0.0185) / 0.75
    one = tax_segments(costs, NAV, None, 1, ALL_X)
    assert one.rows() == [("P", "X", 0, pytest.approx(0.75), pytest.approx(0.03175 / 0.75))]


def test_selling_along_the_segments_costs_what_select_lots_charges():
    costs = lot_tax_costs(three_lots(), PRICES, AS_OF)
    seg = tax_segments(costs, NAV, None, 3, ALL_X)
    for q in (4.0, 10.0, 25.0, 41.5, 60.0):
        w = q * 100.0 * 1.25 / 10_000.0
        local_tax = select_lots(costs, sells(("P", "X", q)))["tax"].sum()
        assert tax_function(seg["length"], seg["slope"], w) * 10_000.0 == pytest.approx(local_tax * 1.25, abs=1e-9)


def test_merging_keeps_signs_apart():
    # five loss lots, three break-even lots, four gain lots (price 100, SHORT term, 1 share each)
    bases = [150, 140, 130, 120, 110, 100, 100, 100, 90, 80, 70, 60]
    lots = lots_frame([("P", "X", f"L{k:02d}", 1.0, float(b), date(2025, 1, 2)) for k, b in enumerate(bases)])
    costs = lot_tax_costs(lots, PRICES, AS_OF)
    nav = pl.DataFrame({"portfolio_id": ["P"], "nav": [125.0]})  # each lot: 1 x 100 x 1.25 / 125 = 1.0 of weight
    signs = lambda seg: [int(np.sign(s)) for s in seg["slope"]]  # noqa: E731
    # J = 3: one segment per sign; the zero slopes (three lots) are one piece already
    three = tax_segments(costs, nav, None, 3, ALL_X)
    assert signs(three) == [-1, 0, 1] and three["length"].to_list() == [5.0, 3.0, 4.0]
    # J = 5: zero keeps 1, the 4 left are shared 5:4 -> round(4 x 5/9) = 2 loss and 2 gain segments;
    # losses (slopes -0.185 .. -0.037 by 0.037) split 3 + 2 (floor(i x 2 / 5): 0,0,0,1,1)
    five = tax_segments(costs, nav, None, 5, ALL_X)
    assert signs(five) == [-1, -1, 0, 1, 1] and five["length"].to_list() == [3.0, 2.0, 3.0, 2.0, 2.0]
    assert five["slope"][0] == pytest.approx(-0.37 * 40 / 100) and five["slope"][1] == pytest.approx(-0.37 * 15 / 100)
    # J = 2 with three signs: zero joins the gains; J = 1: everything
    assert signs(tax_segments(costs, nav, None, 2, ALL_X)) == [-1, 1]
    assert tax_segments(costs, nav, None, 1, ALL_X)["length"].to_list() == [12.0]
    # not harvestable: the losses clip to 0 and join the break-even lots
    clipped = tax_segments(costs, nav, None, 3, NONE)
    assert signs(clipped) == [0, 1, 1] and clipped["length"].to_list() == [8.0, 2.0, 2.0]


def test_fx_frames_keyed_per_portfolio_and_portfolios_are_independent():
    lots = lots_frame([("P", "X", "A", 10.0, 900.0, date(2025, 1, 2)), ("Q", "X", "B", 10.0, 1100.0, date(2025, 1, 2))])
    costs = lot_tax_costs(lots, pl.DataFrame({"instrument_id": ["X"], "price": [100.0]}), AS_OF)
    assert costs["fx_rate"].null_count() == 2
    nav = pl.DataFrame({"portfolio_id": ["P", "Q"], "nav": [2000.0, 4000.0]})
    fx = pl.DataFrame({"portfolio_id": ["P", "Q"], "instrument_id": ["X", "X"], "fx_rate": [1.0, 2.0]})
    both = pl.DataFrame({"portfolio_id": ["P", "Q"], "instrument_id": ["X", "X"]})
    seg = tax_segments(costs, nav, fx, 2, both)
    # P: 10 x 100 x 1 / 2,000 = 0.5, slope 0.37 x 10 / 100; Q: 10 x 100 x 2 / 4,000 = 0.5, slope 0.37 x -10 / 100
    assert seg.rows() == [("P", "X", 0, 0.5, pytest.approx(0.037)), ("Q", "X", 0, 0.5, pytest.approx(-0.037))]
    alone = tax_segments(costs.filter(pl.col("portfolio_id") == "Q"), nav, fx, 2, both)
    assert_frame_equal(alone, seg.filter(pl.col("portfolio_id") == "Q"))
    with pytest.raises(ValueError, match="no fx rate for P/X"):
        tax_segments(costs, nav, None, 2, both)


@st.composite
def random_book(draw):
    n = draw(st.integers(1, 14))
    price = draw(st.floats(1.0, 500.0))
    rows = []
    for k in range(n):
        basis = draw(st.floats(0.0, 2.0)) * price
        qty = draw(st.floats(0.01, 1000.0))
        held = draw(st.integers(0, 900))
        rows.append(("P", "X", f"L{k:02d}", qty, basis * qty, AS_OF - timedelta(days=held)))
    return rows, price, draw(st.integers(1, 6)), draw(st.booleans()), draw(st.floats(0.5, 2.0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_book())
def test_segments_are_convex_and_exact_at_their_ends(book):
    rows, price, J, harvest, fx = book
    costs = lot_tax_costs(lots_frame(rows), pl.DataFrame({"instrument_id": ["X"], "price": [price], "fx_rate": [fx]}), AS_OF)
    nav = 1000.0 * price
    seg = tax_segments(costs, pl.DataFrame({"portfolio_id": ["P"], "nav": [nav]}), None, J, ALL_X if harvest else NONE)
    slopes, lengths = seg["slope"].to_numpy(), seg["length"].to_numpy()
    assert 1 <= seg.height <= J and seg["segment"].to_list() == list(range(seg.height))
    assert np.all(np.diff(slopes) > 0)  # strictly: equal slopes were joined
    assert np.all(lengths > 0) and np.isfinite(slopes).all()
    # the lot-by-lot function, in sale order
    lot_len = (costs["quantity"] * price * fx / nav).to_numpy()
    lot_slope = costs["tax_per_value"].to_numpy()
    if not harvest:
        lot_slope = np.maximum(lot_slope, 0.0)
        assert np.all(slopes >= 0)
    total = lot_len.sum()
    assert lengths.sum() == pytest.approx(total, rel=1e-12)
    scale = np.abs(lot_slope).max() * total + 1e-300
    ends = np.cumsum(lengths)
    for w in ends:  # equal at every segment end
        assert tax_function(lengths, slopes, w) == pytest.approx(tax_function(lot_len, lot_slope, w), abs=1e-12 * scale)
    for w in np.linspace(0.0, total, 9):  # never below the true function (chords of a convex one)
        assert tax_function(lengths, slopes, w) >= tax_function(lot_len, lot_slope, w) - 1e-12 * scale
    # exact everywhere when there are no more distinct slopes than segments
    if np.unique(lot_slope).size <= J:
        for w in np.linspace(0.0, total, 7):
            assert tax_function(lengths, slopes, w) == pytest.approx(tax_function(lot_len, lot_slope, w), abs=1e-12 * scale)
    # no segment mixes signs when J covers the signs present
    lot_signs = set(np.sign(lot_slope).astype(int))
    if len(lot_signs) <= J:
        assert {int(np.sign(s)) for s in slopes} == lot_signs
        assert seg.height == min(J, np.unique(lot_slope).size)


# --- harvest candidates -----------------------------------------------------------------------------


def test_harvest_threshold_at_above_and_below_the_loss():
    costs = lot_tax_costs(three_lots(), PRICES, AS_OF)
    # unrealised tax loss of X: only lot A: 10 sh x -20 x fx 1.25 = -250 base (the gains of B, C
    # do not offset it); nav 10,000: loss share 0.025
    got = harvest_candidates(costs, NAV, WASH_EMPTY, NONE, 0.02)
    assert got.schema == pl.Schema(HARVEST_CANDIDATES_SCHEMA)
    assert got.rows() == [("P", "X", 250.0, 0.025, None)]
    assert harvest_candidates(costs, NAV, WASH_EMPTY, NONE, 0.025).height == 0  # at: not larger
    assert harvest_candidates(costs, NAV, WASH_EMPTY, NONE, 0.03).height == 0  # above
    # a purchase 10 days ago makes the loss sale a wash sale: not a candidate
    purchases = pl.DataFrame({"portfolio_id": ["P"], "instrument_id": ["X"], "last_purchase": [AS_OF - timedelta(days=10)]})
    assert harvest_candidates(costs, NAV, WASH_EMPTY, purchases, 0.0).height == 0
    # a recent loss sale does not stop another one; it is reported
    block = pl.DataFrame(
        {"portfolio_id": ["P"], "instrument_id": ["X"], "last_loss_sale": [AS_OF - timedelta(days=3)],
         "blocked_until": [AS_OF + timedelta(days=27)], "loss": [5.0]}
    )
    assert harvest_candidates(costs, NAV, block, NONE, 0.0)["purchase_blocked_until"].to_list() == [AS_OF + timedelta(days=27)]
    # fx given as a frame replaces the column: at fx 2 the loss is 400
    fx = pl.DataFrame({"instrument_id": ["X"], "fx_rate": [2.0]})
    assert harvest_candidates(costs, NAV, WASH_EMPTY, NONE, 0.0, fx=fx)["unrealized_loss"].to_list() == [400.0]


WASH_EMPTY = pl.DataFrame(schema=WASH_SALE_BLOCKS_SCHEMA)


# --- lot selection ------------------------------------------------------------------------------------


def test_select_lots_whole_book_and_many_sells_at_once():
    lots = lots_frame(
        [
            ("P", "X", "A", 0.1, 10.0, date(2025, 1, 2)),
            ("P", "X", "B", 0.2, 20.0, date(2025, 1, 3)),
            ("P", "Y", "C", 7.0, 700.0, date(2025, 1, 2)),
            ("P", "Y", "D", 3.0, 600.0, date(2025, 1, 2)),  # basis 200 > 100: a loss, sold first
            ("Q", "Y", "E", 4.0, 400.0, date(2025, 1, 2)),
        ]
    )
    prices = pl.DataFrame({"instrument_id": ["X", "Y"], "price": [100.0, 100.0]})
    costs = lot_tax_costs(lots, prices, AS_OF)
    # 0.1 + 0.2 != 0.3 in floating point: selling "0.3" still takes both lots whole, nothing else
    out = select_lots(costs, sells(("P", "X", 0.3), ("P", "Y", 4), ("Q", "Y", 1)))
    assert out.select("portfolio_id", "instrument_id", "lot_id", "quantity").rows() == [
        ("P", "X", "A", 0.1), ("P", "X", "B", 0.2), ("P", "Y", "D", 3.0), ("P", "Y", "C", 1.0), ("Q", "Y", "E", 1.0),
    ]
    # D: 3 x (100 - 200) x 0.37 = -111; C: 1 x 0 = 0
    p_y = out.filter(pl.col("instrument_id") == "Y", pl.col("portfolio_id") == "P")
    assert p_y["tax"].to_list() == pytest.approx([-111.0, 0.0])
    # row order of either input does not matter
    again = select_lots(shuffled(costs, 1), shuffled(sells(("P", "X", 0.3), ("P", "Y", 4), ("Q", "Y", 1)), 2))
    assert_frame_equal(again, out)


# --- row order --------------------------------------------------------------------------------------


def test_input_row_order_does_not_change_any_output():
    rng = random.Random(7)
    rows = []
    for p in ("P", "Q"):
        for i in ("X", "Y", "Z"):
            for k in range(6):
                qty = rng.uniform(1, 50)
                rows.append((p, i, f"{p}{i}{k}", qty, qty * rng.uniform(40, 160), AS_OF - timedelta(days=rng.randint(0, 800))))
    lots = lots_frame(rows)
    prices = pl.DataFrame({"instrument_id": ["X", "Y", "Z"], "price": [100.0, 80.0, 120.0], "fx_rate": [1.0, 0.9, 1.1]})
    nav = pl.DataFrame({"portfolio_id": ["P", "Q"], "nav": [50_000.0, 60_000.0]})
    harv = pl.DataFrame({"portfolio_id": ["P", "Q"], "instrument_id": ["X", "Z"]})
    sv = sells(("P", "X", 30), ("Q", "Z", 55), ("P", "Y", 1))

    def run(lots, prices, nav, harv, sv):
        costs = lot_tax_costs(lots, prices, AS_OF)
        return (
            costs,
            tax_segments(costs, nav, None, 3, harv),
            harvest_candidates(costs, nav, WASH_EMPTY, NONE, 0.0),
            select_lots(costs, sv),
        )

    base = run(lots, prices, nav, harv, sv)
    again = run(shuffled(lots, 11), shuffled(prices, 12), shuffled(nav, 13), shuffled(harv, 14), shuffled(sv, 15))
    for a, b in zip(base, again):
        assert a.height > 0
        assert_frame_equal(a, b)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("short_term, long_term", [(-0.1, 0.2), (0.37, 1.0), (math.nan, 0.2), (0.37, "0.2"), (True, 0.2)])
def test_rates_out_of_range(short_term, long_term):
    with pytest.raises(ValueError, match="TaxRates"):
        TaxRates(short_term, long_term)


def test_bad_input_is_named():
    lots = three_lots()
    costs = lot_tax_costs(lots, PRICES, AS_OF)
    with pytest.raises(ValueError, match="missing column.*tax_basis"):
        lot_tax_costs(lots.drop("tax_basis"), PRICES, AS_OF)
    with pytest.raises(ValueError, match="missing column.*price"):
        lot_tax_costs(lots, PRICES.drop("price"), AS_OF)
    with pytest.raises(ValueError, match="missing column.*taxable_pnl"):
        wash_sale_blocks(realized_frame([]).drop("taxable_pnl"), AS_OF)
    with pytest.raises(ValueError, match="missing column.*open_ts"):
        recent_purchases(lots.drop("open_ts"), AS_OF)
    with pytest.raises(ValueError, match="missing column.*tax_per_value"):
        tax_segments(costs.drop("tax_per_value"), NAV, None, 3, ALL_X)
    with pytest.raises(ValueError, match="missing column.*quantity"):
        select_lots(costs, sells(("P", "X", 1)).drop("quantity"))
    with pytest.raises(ValueError, match="non-positive quantity"):
        negative = pl.when(pl.col("lot_id") == "B").then(-5.0).otherwise(pl.col("quantity"))
        lot_tax_costs(lots.with_columns(negative.alias("quantity")), PRICES, AS_OF)
    with pytest.raises(ValueError, match="duplicate key.*lot_id"):
        lot_tax_costs(pl.concat([lots, lots.head(1)]), PRICES, AS_OF)
    with pytest.raises(ValueError, match="duplicate key.*lot_id"):
        select_lots(pl.concat([costs, costs.head(1)]), sells(("P", "X", 1)))
    with pytest.raises(ValueError, match="duplicate key.*instrument_id"):
        lot_tax_costs(lots, pl.concat([PRICES, PRICES]), AS_OF)
    with pytest.raises(ValueError, match="position_type"):
        lot_tax_costs(lots.with_columns(pl.lit("long").alias("position_type")), PRICES, AS_OF)
    # 60 shares are open: selling 61 names the portfolio and instrument
    with pytest.raises(ValueError, match="61.0 shares of P/X exceeds its open LONG quantity 60.0"):
        select_lots(costs, sells(("P", "X", 61)))
    with pytest.raises(ValueError, match="P/Y exceeds its open LONG quantity 0.0"):
        select_lots(costs, sells(("P", "Y", 1)))
    with pytest.raises(ValueError, match="sells has 1 row.*non-positive quantity"):
        select_lots(costs, sells(("P", "X", -1)))
    with pytest.raises(ValueError, match="duplicate key"):
        select_lots(costs, sells(("P", "X", 1), ("P", "X", 2)))
    with pytest.raises(ValueError, match="segments must be a positive integer"):
        tax_segments(costs, NAV, None, 0, ALL_X)
    with pytest.raises(ValueError, match="no nav for portfolio"):
        tax_segments(costs, NAV.clear(), None, 3, ALL_X)
    with pytest.raises(ValueError, match="nav must be positive"):
        harvest_candidates(costs, NAV.with_columns(pl.lit(0.0).alias("nav")), WASH_EMPTY, NONE, 0.0)
    with pytest.raises(ValueError, match="threshold"):
        harvest_candidates(costs, NAV, WASH_EMPTY, NONE, -0.01)
    with pytest.raises(ValueError, match="as_of must be a datetime.date"):
        lot_tax_costs(lots, PRICES, ts(AS_OF))
    with pytest.raises(ValueError, match="days must be"):
        wash_sale_blocks(realized_frame([]), AS_OF, days=-1)
    with pytest.raises(ValueError, match="non-finite price"):
        lot_tax_costs(lots, PRICES.with_columns(pl.lit(math.inf).alias("price")), AS_OF)
