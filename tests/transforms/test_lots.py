"""Tests of the lot ledger (transforms.lots, transforms.lot_kernel).

Every figure below is computed by hand in the comment next to it; invariants are checked on
random books with hypothesis.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from transforms.contract import LANDING_SCHEMAS, LOTS_SCHEMA, REALIZED_PNL_SCHEMA
from transforms.lots import build_ledger

TRADE_SCHEMA = {**LANDING_SCHEMAS["trades"], "source_row": pl.Int64}


def ts(d: str, hour: int = 15) -> datetime:
    return datetime.fromisoformat(d).replace(hour=hour, tzinfo=UTC)


def book(*rows, pid: str = "P", iid: str = "X") -> pl.DataFrame:
    """rows: (trade_id, day or datetime, side, quantity, price[, fees[, lot_id]])."""
    out = []
    for n, r in enumerate(rows, start=1):
        tid, when, side, qty, price = r[:5]
        fees = r[5] if len(r) > 5 else 0.0
        lot = r[6] if len(r) > 6 else None
        moment = when if isinstance(when, datetime) else ts(when)
        out.append(
            {
                "trade_id": tid,
                "portfolio_id": pid,
                "instrument_id": iid,
                "trade_ts": moment,
                "settle_date": moment.date() + timedelta(days=2),
                "side": side,
                "quantity": float(qty),
                "price": float(price),
                "fees": float(fees),
                "strategy_id": "S1",
                "lot_id": lot,
                "source_row": n,
            }
        )
    return pl.DataFrame(out, schema=TRADE_SCHEMA)


def pf(method: str = "FIFO", tax: str = "EXEMPT", pid: str = "P") -> pl.DataFrame:
    return pl.DataFrame(
        {"portfolio_id": [pid], "tax_status": [tax], "lot_method": [method]}
    )


def lot(ledger, lot_id: str) -> dict:
    rows = ledger.lots.filter(pl.col("lot_id") == lot_id).to_dicts()
    assert len(rows) == 1, (lot_id, ledger.lots)
    return rows[0]


def realized(ledger, trade_id: str) -> list[dict]:
    return ledger.realized_pnl.filter(pl.col("trade_id") == trade_id).to_dicts()


def by_lot(rows: list[dict], field: str) -> dict[str, float]:
    return {r["lot_id"]: r[field] for r in rows}


def check_schemas(ledger, trades: pl.DataFrame) -> None:
    assert ledger.lots.schema == pl.Schema(LOTS_SCHEMA)
    assert ledger.realized_pnl.schema == pl.Schema(REALIZED_PNL_SCHEMA)
    assert ledger.accepted_trades.schema == trades.schema
    assert ledger.rejected_trades.schema == pl.Schema(
        {**trades.schema, "reason": pl.String}
    )
    assert (
        ledger.accepted_trades.height + ledger.rejected_trades.height == trades.height
    )


# --- wash sales: IRS Publication 550 -----------------------------------------------------------

# Pub. 550: "You buy 100 shares of X stock for $1,000. You sell these shares for $750 and within
# 30 days from the sale you buy 100 shares of the same stock for $800. Because you bought
# substantially identical stock, you can't deduct your loss of $250 on the sale. However, you
# add the disallowed loss ($250) to the cost of the new stock ($800) to obtain your basis in
# the new stock, which is $1,050."
IRS = book(
    ("B1", "2024-01-02", "BUY", 100, 10.0),
    ("S1", "2024-03-01", "SELL", 100, 7.5),
    ("B2", "2024-03-15", "BUY", 100, 8.0),
)


def test_irs_pub_550_wash_sale():
    ledger = build_ledger(IRS, pf("FIFO", "TAXABLE"))
    check_schemas(ledger, IRS)
    [row] = realized(ledger, "S1")
    assert row["lot_id"] == "B1"
    assert row["proceeds"] == pytest.approx(750.0)
    assert row["cost_basis"] == pytest.approx(1000.0)
    assert row["realized_pnl"] == pytest.approx(-250.0)
    assert row["disallowed_loss"] == pytest.approx(250.0)
    assert row["taxable_pnl"] == pytest.approx(0.0)
    assert row["holding_days"] == 59  # 2024-01-02 -> 2024-03-01
    b2 = lot(ledger, "B2")
    assert b2["cost_basis"] == pytest.approx(800.0)
    assert b2["wash_sale_adjustment"] == pytest.approx(250.0)
    assert b2["tax_basis"] == pytest.approx(1050.0)
    # B1 was held 59 days: B2's holding period starts 59 days before 2024-03-15
    assert b2["holding_start"] == date(2024, 1, 16)
    assert b2["status"] == "OPEN" and b2["quantity"] == 100.0
    assert lot(ledger, "B1")["status"] == "CLOSED"


def test_irs_example_in_exempt_portfolio_has_no_disallowance():
    ledger = build_ledger(IRS, pf("FIFO", "EXEMPT"))
    [row] = realized(ledger, "S1")
    assert row["disallowed_loss"] == 0.0
    assert row["taxable_pnl"] == pytest.approx(-250.0)
    b2 = lot(ledger, "B2")
    assert b2["wash_sale_adjustment"] == 0.0
    assert b2["tax_basis"] == pytest.approx(800.0)
    assert b2["holding_start"] == date(2024, 3, 15)


def test_wash_sale_chain_uses_adjusted_basis():
    # continue the IRS book: sell B2 for $900 (economic +100, but tax basis 1,050: -150),
    # then buy 50 within 30 days: half the shares are replaced, $75 disallowed
    trades = pl.concat(
        [
            IRS,
            book(
                ("S2", "2024-06-01", "SELL", 100, 9.0),
                ("B3", "2024-06-10", "BUY", 50, 8.0),
            ),
        ]
    )
    ledger = build_ledger(trades, pf("FIFO", "TAXABLE"))
    [row] = realized(ledger, "S2")
    assert row["realized_pnl"] == pytest.approx(100.0)
    assert row["wash_sale_adjustment"] == pytest.approx(250.0)
    assert row["disallowed_loss"] == pytest.approx(75.0)  # 1.50 per share x 50 shares
    assert row["taxable_pnl"] == pytest.approx(100.0 - 250.0 + 75.0)
    assert row["holding_start"] == date(2024, 1, 16)
    b3 = lot(ledger, "B3")
    assert b3["tax_basis"] == pytest.approx(400.0 + 75.0)
    # B2's (tacked) holding period: 2024-01-16 -> 2024-06-01 = 137 days
    assert b3["holding_start"] == date(2024, 6, 10) - timedelta(days=137)
    assert b3["holding_start"] == date(2024, 1, 25)


def test_partial_replacement_disallows_only_replaced_shares():
    # loss 200 on 100 shares ($2/share); only 40 shares bought back -> 80 disallowed, 120 kept
    trades = book(
        ("B1", "2024-01-02", "BUY", 100, 10.0),
        ("S1", "2024-03-01", "SELL", 100, 8.0),
        ("B2", "2024-03-10", "BUY", 40, 8.5),
    )
    ledger = build_ledger(trades, pf("FIFO", "TAXABLE"))
    [row] = realized(ledger, "S1")
    assert row["realized_pnl"] == pytest.approx(-200.0)
    assert row["disallowed_loss"] == pytest.approx(80.0)
    assert row["taxable_pnl"] == pytest.approx(-120.0)
    b2 = lot(ledger, "B2")
    assert b2["wash_sale_adjustment"] == pytest.approx(80.0)
    assert b2["tax_basis"] == pytest.approx(340.0 + 80.0)
    assert b2["holding_start"] == date(2024, 3, 10) - timedelta(days=59)
    assert ledger.lots.height == 2  # the whole lot is a replacement: no split


def test_replacement_larger_than_sale_splits_the_lot():
    # sell 50 of 100 at $2 loss/share; the other 50 of B1 are the same lot (not replacements);
    # B2 buys 80: 50 of them are replacements -> B2~W1 (50 sh, +100 adj), B2 keeps 30 sh
    trades = book(
        ("B1", "2024-01-02", "BUY", 100, 10.0),
        ("S1", "2024-02-01", "SELL", 50, 8.0),
        ("B2", "2024-02-20", "BUY", 80, 9.0, 4.0),
    )
    ledger = build_ledger(trades, pf("FIFO", "TAXABLE"))
    check_schemas(ledger, trades)
    [row] = realized(ledger, "S1")
    assert row["disallowed_loss"] == pytest.approx(100.0)
    assert row["taxable_pnl"] == pytest.approx(0.0)
    piece, rest = lot(ledger, "B2~W1"), lot(ledger, "B2")
    assert piece["open_trade_id"] == "B2" and rest["open_trade_id"] == "B2"
    assert piece["original_quantity"] == 50.0 and piece["quantity"] == 50.0
    assert rest["original_quantity"] == 30.0 and rest["quantity"] == 30.0
    # B2 cost 80 * 9 + 4 = 724, split pro-rata 50/80 and 30/80
    assert piece["cost_basis"] == pytest.approx(724.0 * 50 / 80)
    assert rest["cost_basis"] == pytest.approx(724.0 * 30 / 80)
    assert piece["wash_sale_adjustment"] == pytest.approx(100.0)
    assert rest["wash_sale_adjustment"] == 0.0
    assert piece["holding_start"] == date(2024, 2, 20) - timedelta(
        days=30
    )  # B1 held 30 days
    assert rest["holding_start"] == date(2024, 2, 20)
    b1 = lot(ledger, "B1")
    assert b1["quantity"] == 50.0 and b1["wash_sale_adjustment"] == 0.0


def test_replacement_bought_before_the_sale():
    # B2 (bought 10 days before the loss sale of B1) is the replacement
    trades = book(
        ("B1", "2024-01-02", "BUY", 100, 10.0),
        ("B2", "2024-02-20", "BUY", 100, 9.0),
        ("S1", "2024-03-01", "SELL", 100, 8.0),
    )
    ledger = build_ledger(trades, pf("FIFO", "TAXABLE"))
    [row] = realized(ledger, "S1")
    assert row["lot_id"] == "B1"
    assert row["disallowed_loss"] == pytest.approx(200.0)
    assert lot(ledger, "B2")["tax_basis"] == pytest.approx(1100.0)


def test_no_wash_sale_outside_30_days_or_on_a_gain():
    trades = book(
        ("B1", "2024-01-02", "BUY", 100, 10.0),
        ("S1", "2024-03-01", "SELL", 50, 8.0),  # loss; next buy 31 days later
        ("B2", "2024-04-01", "BUY", 100, 9.0),
        ("S2", "2024-04-05", "SELL", 50, 12.0),  # gain on the rest of B1
        ("B3", "2024-04-06", "BUY", 10, 12.0),
    )
    ledger = build_ledger(trades, pf("FIFO", "TAXABLE"))
    assert ledger.realized_pnl["disallowed_loss"].to_list() == [0.0, 0.0]
    assert ledger.lots["wash_sale_adjustment"].to_list() == [0.0, 0.0, 0.0]


# --- lot methods ------------------------------------------------------------------------------

METHOD_BOOK = book(
    ("B1", "2024-01-02", "BUY", 100, 10.0),
    ("B2", "2024-01-03", "BUY", 100, 12.0),
    ("B3", "2024-01-04", "BUY", 100, 11.0),
    ("S1", "2024-01-05", "SELL", 150, 13.0),
)


@pytest.mark.parametrize(
    ("method", "pnl", "remaining"),
    [
        # FIFO: B1 100 (1300-1000=300), B2 50 (650-600=50)
        ("FIFO", {"B1": 300.0, "B2": 50.0}, {"B1": 0.0, "B2": 50.0, "B3": 100.0}),
        # LIFO: B3 100 (1300-1100=200), B2 50 (650-600=50)
        ("LIFO", {"B3": 200.0, "B2": 50.0}, {"B1": 100.0, "B2": 50.0, "B3": 0.0}),
        # HIFO: B2 100 (1300-1200=100), B3 50 (650-550=100)
        ("HIFO", {"B2": 100.0, "B3": 100.0}, {"B1": 100.0, "B2": 0.0, "B3": 50.0}),
    ],
)
def test_lot_methods(method, pnl, remaining):
    ledger = build_ledger(METHOD_BOOK, pf(method))
    rows = realized(ledger, "S1")
    assert [r["lot_id"] for r in rows] == list(pnl)  # consumption order
    assert by_lot(rows, "realized_pnl") == pytest.approx(pnl)
    assert dict(zip(ledger.lots["lot_id"], ledger.lots["quantity"])) == remaining
    # the remaining basis is pro-rata: B2 half left = 600, B3 half left = 550
    if method == "FIFO":
        assert lot(ledger, "B2")["cost_basis"] == pytest.approx(600.0)
        assert (
            lot(ledger, "B2")["status"] == "OPEN"
            and lot(ledger, "B2")["closed_ts"] is None
        )
        assert lot(ledger, "B1")["closed_ts"] == ts("2024-01-05")
    if method == "HIFO":
        assert lot(ledger, "B3")["cost_basis"] == pytest.approx(550.0)


def test_named_lot_first_then_method():
    trades = METHOD_BOOK.with_columns(
        lot_id=pl.when(pl.col("trade_id") == "S1")
        .then(pl.lit("B3"))
        .otherwise(pl.col("lot_id"))
    )
    ledger = build_ledger(trades, pf("FIFO"))
    rows = realized(ledger, "S1")
    # B3 100 (1300-1100=200), then FIFO: B1 50 (650-500=150)
    assert by_lot(rows, "realized_pnl") == pytest.approx({"B3": 200.0, "B1": 150.0})
    assert [r["lot_id"] for r in rows] == ["B3", "B1"]


def test_fees_pro_rata():
    trades = book(
        ("L1", "2024-01-02", "BUY", 30, 10.0, 3.0),  # basis 303
        ("L2", "2024-01-03", "BUY", 70, 11.0, 7.0),  # basis 777
        ("S1", "2024-01-04", "SELL", 50, 12.0, 5.0),
    )
    ledger = build_ledger(trades, pf("FIFO"))
    rows = realized(ledger, "S1")
    # L1 30: 360 - 3 fees = 357 vs 303; L2 20: 240 - 2 = 238 vs 777 * 20/70 = 222
    assert by_lot(rows, "proceeds") == pytest.approx({"L1": 357.0, "L2": 238.0})
    assert by_lot(rows, "cost_basis") == pytest.approx({"L1": 303.0, "L2": 222.0})
    assert by_lot(rows, "realized_pnl") == pytest.approx({"L1": 54.0, "L2": 16.0})
    l2 = lot(ledger, "L2")
    assert l2["quantity"] == 50.0 and l2["cost_basis"] == pytest.approx(555.0)
    assert l2["original_quantity"] == 70.0


def test_short_open_and_cover():
    trades = book(
        ("SS1", "2024-01-02", "SELL_SHORT", 100, 50.0, 10.0),  # proceeds received 4990
        ("C1", "2024-01-10", "BUY_TO_COVER", 40, 45.0, 4.0),
        ("C2", "2024-01-20", "BUY_TO_COVER", 60, 52.0, 6.0),
        (
            "SS2",
            "2024-01-25",
            "SELL_SHORT",
            10,
            51.0,
        ),  # re-short: no wash sale on shorts
    )
    ledger = build_ledger(trades, pf("FIFO", "TAXABLE"))
    [c1], [c2] = realized(ledger, "C1"), realized(ledger, "C2")
    assert c1["position_type"] == "SHORT"
    # C1: proceeds 4990 * 0.4 = 1996; cost 40 * 45 + 4 = 1804
    assert (c1["proceeds"], c1["cost_basis"]) == pytest.approx((1996.0, 1804.0))
    assert c1["realized_pnl"] == pytest.approx(192.0)
    # C2: proceeds 2994; cost 60 * 52 + 6 = 3126
    assert c2["realized_pnl"] == pytest.approx(-132.0)
    assert c2["disallowed_loss"] == 0.0 and c2["taxable_pnl"] == pytest.approx(-132.0)
    ss1 = lot(ledger, "SS1")
    assert ss1["position_type"] == "SHORT" and ss1["status"] == "CLOSED"
    assert ss1["original_quantity"] == 100.0 and ss1["quantity"] == 0.0
    assert lot(ledger, "SS2")["cost_basis"] == pytest.approx(510.0)
    assert lot(ledger, "SS2")["wash_sale_adjustment"] == 0.0


def test_long_and_short_books_are_independent():
    trades = book(
        ("B1", "2024-01-02", "BUY", 10, 10.0),
        ("SS1", "2024-01-03", "SELL_SHORT", 5, 11.0),
        ("S1", "2024-01-04", "SELL", 10, 12.0),
        ("C1", "2024-01-05", "BUY_TO_COVER", 5, 9.0),
    )
    ledger = build_ledger(trades, pf("LIFO"))
    assert by_lot(realized(ledger, "S1"), "realized_pnl") == pytest.approx({"B1": 20.0})
    assert by_lot(realized(ledger, "C1"), "realized_pnl") == pytest.approx(
        {"SS1": 10.0}
    )
    assert ledger.rejected_trades.height == 0


def test_term_around_one_year():
    trades = book(
        ("B1", "2023-01-10", "BUY", 100, 10.0),
        ("S1", "2024-01-10", "SELL", 50, 11.0),  # one year to the day: SHORT
        ("S2", "2024-01-11", "SELL", 50, 11.0),  # more than one year: LONG
    )
    ledger = build_ledger(trades, pf("FIFO"))
    [s1], [s2] = realized(ledger, "S1"), realized(ledger, "S2")
    assert (s1["holding_days"], s1["term"]) == (365, "SHORT")
    assert (s2["holding_days"], s2["term"]) == (366, "LONG")


def test_term_lookup_equals_calendar_offset_per_row():
    """The per-day lookup of ``hstart + 1y`` equals Polars' per-row ``offset_by("1y")``
    (Feb 29 + 1y = Feb 28), on every holding start of a span crossing leap years."""
    from transforms.lots import _long_term

    starts = pl.date_range(date(2019, 12, 1), date(2025, 3, 31), eager=True)
    hstart = pl.concat([starts, starts, starts])
    year_on = starts.dt.offset_by("1y")
    # closes a day before, on and after the anniversary
    c_date = pl.concat([year_on + timedelta(days=d) for d in (-1, 0, 1)])
    real = pl.DataFrame({"hstart": hstart, "c_date": c_date})
    expected = real.select(pl.col("c_date") > pl.col("hstart").dt.offset_by("1y")).to_series()

    def days(s: pl.Series):
        return s.cast(pl.Int32).to_numpy().astype("int64")

    assert _long_term(days(hstart), days(c_date)).tolist() == expected.to_list()
    assert _long_term(days(hstart[:0]), days(c_date[:0])).size == 0
    leap = pl.Series([date(2020, 2, 29)] * 2)
    closes = pl.Series([date(2021, 2, 28), date(2021, 3, 1)])
    assert _long_term(days(leap), days(closes)).tolist() == [False, True]


def test_same_timestamp_opening_side_first():
    moment = ts("2024-01-02")
    # the SELL's id sorts first and it comes first in the input: the BUY still goes first
    trades = book(
        ("A-SELL", moment, "SELL", 100, 11.0), ("Z-BUY", moment, "BUY", 100, 10.0)
    )
    ledger = build_ledger(trades, pf("FIFO"))
    assert ledger.rejected_trades.height == 0
    [row] = realized(ledger, "A-SELL")
    assert row["lot_id"] == "Z-BUY" and row["realized_pnl"] == pytest.approx(100.0)
    assert row["holding_days"] == 0 and row["term"] == "SHORT"


def test_same_time_and_side_ordered_by_trade_id_and_chunking_irrelevant():
    """Exact ties (book, time, side rank) go by trade_id; a many-chunk input (as after
    ``pl.concat(..., rechunk=False)``) gives the same ledger, strategy_id and lot_id included."""
    moment = ts("2024-01-02")
    rows = [
        ("B2", moment, "BUY", 50, 11.0),
        ("B1", moment, "BUY", 50, 10.0),
        ("S1", "2024-01-05", "SELL", 60, 12.0),
        ("S2", "2024-01-06", "SELL", 10, 12.0, 0.0, "B2"),
    ]
    trades = book(*rows)
    chunked = pl.concat([trades[i : i + 1] for i in range(trades.height)], rechunk=False)
    ledger = build_ledger(chunked, pf("FIFO"))
    assert by_lot(realized(ledger, "S1"), "quantity") == {"B1": 50.0, "B2": 10.0}
    assert by_lot(realized(ledger, "S2"), "quantity") == {"B2": 10.0}
    assert ledger.accepted_trades["trade_id"].to_list() == ["B1", "B2", "S1", "S2"]
    assert ledger.lots["strategy_id"].to_list() == ["S1", "S1"]
    single = build_ledger(trades, pf("FIFO"))
    for a, b in zip(
        (ledger.lots, ledger.realized_pnl, ledger.accepted_trades, ledger.rejected_trades),
        (single.lots, single.realized_pnl, single.accepted_trades, single.rejected_trades),
    ):
        assert_frame_equal(a, b)


def test_books_whose_keys_do_not_pack_order_as_packed_ones():
    """Hundreds of books over five centuries do not fit one 63-bit (book, time) key: the
    column sort, or time ranks when the trades come in time order (ties at one time in
    reverse trade_id order), give each book the ledger it has alone (where the key packs)."""
    books = []
    for k in range(600):
        iid = f"I{k:03d}"
        first = datetime(1700, 1, 4, tzinfo=UTC) if k == 0 else ts("2024-01-02")
        books.append(book(
            (f"{iid}-B", first, "BUY", 10, 10.0),
            (f"{iid}-S", ts("2199-12-30") if k == 599 else ts("2024-03-01"), "SELL", 4, 12.0),
            (f"{iid}-C", ts("2024-03-01"), "SELL", 1, 12.0),  # same time as the SELL: trade_id decides
            iid=iid,
        ))
    alone = [build_ledger(b, pf("FIFO")) for b in books]
    # out of time order: the column sort; in time order: time ranks keep the key packed
    for trades in (pl.concat(books[::-1]), pl.concat(books).sort("trade_ts", "trade_id", descending=[False, True])):
        whole = build_ledger(trades, pf("FIFO"))
        assert_frame_equal(whole.lots, pl.concat([a.lots for a in alone]))
        assert_frame_equal(whole.realized_pnl, pl.concat([a.realized_pnl for a in alone]))
        assert_frame_equal(whole.accepted_trades, pl.concat([a.accepted_trades for a in alone]))


# --- rejections -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["FIFO", "LIFO"])
def test_oversell_rejected_and_later_trades_processed(method):
    trades = book(
        ("B1", "2024-01-02", "BUY", 100, 10.0),
        ("S1", "2024-01-03", "SELL", 150, 11.0),  # rejected whole, never a short
        ("S2", "2024-01-04", "SELL", 80, 12.0),  # valid only because S1 was rejected
        ("B2", "2024-01-05", "BUY", 10, 10.0),
        ("S3", "2024-01-06", "SELL", 30, 13.0),
    )
    ledger = build_ledger(trades, pf(method))
    check_schemas(ledger, trades)
    rej = ledger.rejected_trades
    assert rej["trade_id"].to_list() == ["S1"]
    assert rej["reason"][0] == "SELL of 150.0 exceeds open LONG quantity 100.0"
    assert rej["source_row"].to_list() == [2]  # extra columns carried through
    assert ledger.accepted_trades["trade_id"].to_list() == ["B1", "S2", "B2", "S3"]
    assert by_lot(realized(ledger, "S2"), "quantity") == {"B1": 80.0}
    s3 = realized(ledger, "S3")
    assert sum(r["quantity"] for r in s3) == 30.0
    assert (ledger.lots["position_type"] == "LONG").all()  # no short created
    assert ledger.lots["quantity"].sum() == pytest.approx(0.0)


def test_buy_to_cover_beyond_short_rejected():
    trades = book(
        ("SS1", "2024-01-02", "SELL_SHORT", 10, 10.0),
        ("B1", "2024-01-02", "BUY", 50, 10.0),  # a long position does not cover a short
        ("C1", "2024-01-03", "BUY_TO_COVER", 20, 9.0),
        ("C2", "2024-01-04", "BUY_TO_COVER", 10, 9.0),
    )
    ledger = build_ledger(trades, pf("FIFO"))
    assert ledger.rejected_trades.select("trade_id", "reason").rows() == [
        ("C1", "BUY_TO_COVER of 20.0 exceeds open SHORT quantity 10.0")
    ]
    assert by_lot(realized(ledger, "C2"), "realized_pnl") == pytest.approx(
        {"SS1": 10.0}
    )
    assert lot(ledger, "B1")["quantity"] == 50.0


def test_unknown_or_closed_lot_id_rejected():
    trades = book(
        ("B1", "2024-01-02", "BUY", 100, 10.0),
        ("SS1", "2024-01-02", "SELL_SHORT", 10, 10.0),
        ("S1", "2024-01-03", "SELL", 10, 11.0, 0.0, "NOPE"),  # no such lot
        ("S2", "2024-01-03", "SELL", 10, 11.0, 0.0, "SS1"),  # a SHORT lot: wrong book
        ("S3", "2024-01-03", "SELL", 10, 11.0, 0.0, "B2"),  # opened later
        ("B2", "2024-01-04", "BUY", 100, 10.0),
        ("S4", "2024-01-05", "SELL", 100, 11.0, 0.0, "B1"),  # closes B1
        ("S5", "2024-01-06", "SELL", 10, 11.0, 0.0, "B1"),  # B1 is closed by now
        ("S6", "2024-01-07", "SELL", 10, 11.0, 0.0, "B2"),
    )
    ledger = build_ledger(trades, pf("LIFO"))
    rej = dict(ledger.rejected_trades.select("trade_id", "reason").rows())
    assert set(rej) == {"S1", "S2", "S3", "S5"}
    assert rej["S1"] == (
        "lot_id NOPE is not an open LONG lot of this portfolio and instrument at the trade time"
    )
    assert by_lot(realized(ledger, "S4"), "quantity") == {"B1": 100.0}
    assert by_lot(realized(ledger, "S6"), "quantity") == {"B2": 10.0}


def test_unknown_portfolio_and_bad_rows_rejected():
    trades = pl.concat(
        [
            book(("B1", "2024-01-02", "BUY", 10, 10.0)),
            book(("B2", "2024-01-02", "BUY", 10, 10.0), pid="NOPE"),
            book(("B3", "2024-01-02", "BUY", -1, 10.0)),
            book(("B4", "2024-01-02", "HOLD", 1, 10.0)),
            book(
                ("B1", "2024-01-03", "BUY", 5, 10.0), iid="Y"
            ),  # duplicate id (both rejected)
        ]
    )
    ledger = build_ledger(trades, pf("FIFO"))
    check_schemas(ledger, trades)
    rej = ledger.rejected_trades.select("trade_id", "reason").rows()
    assert ("B2", "unknown portfolio_id NOPE") in rej
    assert ("B3", "quantity must be positive and finite") in rej
    assert ("B4", "invalid side HOLD") in rej
    assert rej.count(("B1", "duplicate trade_id B1")) == 2
    assert ledger.accepted_trades.height == 0 and ledger.lots.height == 0


def test_empty_input():
    trades = pl.DataFrame(schema=TRADE_SCHEMA)
    ledger = build_ledger(trades, pf())
    check_schemas(ledger, trades)
    assert ledger.lots.height == ledger.realized_pnl.height == 0


# --- invariants on random books -------------------------------------------------------------

SIDES = ["BUY", "SELL", "SELL_SHORT", "BUY_TO_COVER"]


@st.composite
def random_books(draw, tax: str | None = None):
    """2 portfolios x 2 instruments, trades on random days (oversells included on purpose)."""
    n = draw(st.integers(1, 40))
    rows = []
    for i in range(n):
        rows.append(
            {
                "trade_id": f"T{i:03d}",
                "portfolio_id": draw(st.sampled_from(["P1", "P2"])),
                "instrument_id": draw(st.sampled_from(["X", "Y"])),
                "trade_ts": datetime(2024, 1, 1, tzinfo=UTC)
                + timedelta(
                    days=draw(st.integers(0, 90)), hours=draw(st.sampled_from([0, 12]))
                ),
                "settle_date": None,
                "side": draw(st.sampled_from(SIDES + ["BUY", "SELL"])),
                "quantity": float(draw(st.integers(1, 100))),
                "price": float(draw(st.integers(50, 150))) / 10,
                "fees": float(draw(st.integers(0, 3))),
                "strategy_id": None,
                "lot_id": None,
                "source_row": i,
            }
        )
    trades = pl.DataFrame(rows, schema=TRADE_SCHEMA)
    methods = [draw(st.sampled_from(["FIFO", "LIFO", "HIFO"])) for _ in range(2)]
    taxes = [tax or draw(st.sampled_from(["TAXABLE", "EXEMPT"])) for _ in range(2)]
    portfolios = pl.DataFrame(
        {"portfolio_id": ["P1", "P2"], "tax_status": taxes, "lot_method": methods}
    )
    return trades, portfolios


FAST = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(random_books())
def test_realized_codes_decode_to_the_rows_ids(book_and_portfolios):
    trades, portfolios = book_and_portfolios
    ledger = build_ledger(trades, portfolios)
    codes = ledger.realized_codes
    assert codes.portfolio_ids.gather(codes.portfolio).to_list() == ledger.realized_pnl["portfolio_id"].to_list()
    assert codes.instrument_ids.gather(codes.instrument).to_list() == ledger.realized_pnl["instrument_id"].to_list()


def signed_open_quantity(trades: pl.DataFrame) -> pl.DataFrame:
    sign = {"BUY": 1.0, "SELL": -1.0, "SELL_SHORT": 1.0, "BUY_TO_COVER": -1.0}
    return trades.group_by(
        "portfolio_id",
        "instrument_id",
        position_type=pl.when(pl.col("side").is_in(["BUY", "SELL"]))
        .then(pl.lit("LONG"))
        .otherwise(pl.lit("SHORT")),
    ).agg(
        (pl.col("quantity") * pl.col("side").replace_strict(sign))
        .sum()
        .alias("expected")
    )


@FAST
@given(random_books())
def test_invariants(data):
    trades, portfolios = data
    ledger = build_ledger(trades, portfolios)
    check_schemas(ledger, trades)
    lots, real = ledger.lots, ledger.realized_pnl

    # open quantity per book = opened - closed over the accepted trades
    held = lots.group_by("portfolio_id", "instrument_id", "position_type").agg(
        pl.col("quantity").sum().alias("held")
    )
    cmp = signed_open_quantity(ledger.accepted_trades).join(
        held,
        on=["portfolio_id", "instrument_id", "position_type"],
        how="full",
        coalesce=True,
    )
    assert cmp.select(
        (
            (pl.col("expected").fill_null(0) - pl.col("held").fill_null(0)).abs() < 1e-6
        ).all()
    ).item()

    assert (lots["quantity"] >= 0).all()
    assert (lots["quantity"] <= lots["original_quantity"] + 1e-9).all()
    assert ((lots["status"] == "CLOSED") == (lots["quantity"] == 0)).all()
    assert ((lots["status"] == "CLOSED") == lots["closed_ts"].is_not_null()).all()
    assert (real["quantity"] > 0).all()
    assert (real["disallowed_loss"] >= 0).all()

    # every accepted close is fully matched, and only accepted closes are
    closes = ledger.accepted_trades.filter(
        pl.col("side").is_in(["SELL", "BUY_TO_COVER"])
    )
    matched = real.group_by("trade_id").agg(pl.col("quantity").sum())
    joined = closes.select("trade_id", "quantity").join(
        matched, on="trade_id", how="full", suffix="_m"
    )
    assert joined.select(
        ((pl.col("quantity") - pl.col("quantity_m")).abs() < 1e-9).all()
    ).item()

    # disallowed losses go to lots: still there, or released into later closes
    taxable_total = real["taxable_pnl"].sum()
    assert taxable_total == pytest.approx(
        real["realized_pnl"].sum() + lots["wash_sale_adjustment"].sum(), abs=1e-6
    )
    assert real["disallowed_loss"].sum() == pytest.approx(
        real["wash_sale_adjustment"].sum() + lots["wash_sale_adjustment"].sum(),
        abs=1e-6,
    )

    # input row order does not matter
    shuffled = build_ledger(
        trades.sample(fraction=1.0, shuffle=True, seed=7), portfolios
    )
    for a, b in zip(
        (
            ledger.lots,
            ledger.realized_pnl,
            ledger.accepted_trades,
            ledger.rejected_trades,
        ),
        (
            shuffled.lots,
            shuffled.realized_pnl,
            shuffled.accepted_trades,
            shuffled.rejected_trades,
        ),
    ):
        assert_frame_equal(a, b, check_exact=False, abs_tol=1e-9)


@FAST
@given(random_books(tax="EXEMPT"))
def test_cost_conservation_exempt(data):
    trades, portfolios = data
    ledger = build_ledger(trades, portfolios)
    opens = ledger.accepted_trades.filter(pl.col("side").is_in(["BUY", "SELL_SHORT"]))
    original = opens.select(
        (
            pl.col("quantity") * pl.col("price")
            + pl.when(pl.col("side") == "BUY")
            .then(pl.col("fees"))
            .otherwise(-pl.col("fees"))
        ).sum()
    ).item()
    real = ledger.realized_pnl
    released = real.select(
        pl.when(pl.col("position_type") == "LONG")
        .then(pl.col("cost_basis"))
        .otherwise(pl.col("proceeds"))
        .sum()
    ).item()
    assert original == pytest.approx(
        ledger.lots["cost_basis"].sum() + released, abs=1e-6
    )
    assert (real["disallowed_loss"] == 0).all()
    assert (ledger.lots["wash_sale_adjustment"] == 0).all()


@st.composite
def random_books_named(draw, tax: str | None = None):
    """``random_books`` where some closes name a lot (an earlier trade id, any side, or none)."""
    trades, portfolios = draw(random_books(tax))
    ids = trades["trade_id"].to_list()
    names = []
    for side in trades["side"]:
        if side in ("SELL", "BUY_TO_COVER") and draw(st.integers(0, 3)) == 0:
            names.append(draw(st.sampled_from([*ids, "NOPE"])))
        else:
            names.append(None)
    return trades.with_columns(lot_id=pl.Series(names, dtype=pl.String)), portfolios


def spec_event_order(trades: pl.DataFrame) -> list[dict]:
    """The trades as dicts in the specification's event order: portfolio, instrument, time,
    opening sides before closing sides, trade_id."""
    rank = {"BUY": 0, "SELL_SHORT": 0, "SELL": 1, "BUY_TO_COVER": 1}
    return sorted(
        trades.to_dicts(),
        key=lambda r: (
            r["portfolio_id"], r["instrument_id"], r["trade_ts"], rank[r["side"]], r["trade_id"]
        ),
    )


def full_reference_ledger(trades: pl.DataFrame, portfolios: pl.DataFrame):
    """A plain per-trade loop of every rule, wash sales and named lots included.

    Returns ({(trade_id, lot_id): realised row fields}, rejected ids, {lot_id: lot fields}).
    This is the specification, trade by trade, in plain Python; the compiled kernel is checked
    against it.
    """
    method = dict(zip(portfolios["portfolio_id"], portfolios["lot_method"]))
    taxable = dict(zip(portfolios["portfolio_id"], portfolios["tax_status"]))
    rows = spec_event_order(trades)
    eps = 1e-9
    # every lot is known up front (a wash sale may replace into a later purchase)
    books: dict = {}
    for seq, r in enumerate(rows):
        if r["side"] in ("BUY", "SELL_SHORT"):
            q, p, f = r["quantity"], r["price"], r["fees"]
            long = r["side"] == "BUY"
            cost = q * p + f if long else q * p - f
            books.setdefault((r["portfolio_id"], r["instrument_id"], long), []).append(
                {
                    "id": r["trade_id"], "seq": seq, "split": 0, "orig": q, "rem": q,
                    "cost": cost, "wadj": 0.0, "ptb": cost / q,
                    "hstart": r["trade_ts"].date(), "open": r["trade_ts"].date(),
                    "used": False, "nsplit": 0,
                }
            )
    matches, rejected = {}, set()
    for seq, r in enumerate(rows):
        if r["side"] in ("BUY", "SELL_SHORT"):
            continue
        long = r["side"] == "SELL"
        lots = books.get((r["portfolio_id"], r["instrument_id"], long), [])
        avail = [lt for lt in lots if lt["seq"] < seq and lt["rem"] > 0]
        named = [lt for lt in avail if lt["id"] == r["lot_id"]]
        q, p, f = r["quantity"], r["price"], r["fees"]
        if (r["lot_id"] is not None and not named) or q > sum(
            lt["rem"] for lt in avail
        ) * (1 + eps):
            rejected.add(r["trade_id"])
            continue
        m = method[r["portfolio_id"]]
        key = {
            "FIFO": lambda lt: (lt["seq"], lt["split"]),
            "LIFO": lambda lt: (-lt["seq"], lt["split"]),
            "HIFO": lambda lt: (-lt["ptb"], lt["seq"], lt["split"]),
        }[m]
        order = sorted(named, key=key) + sorted(
            [lt for lt in avail if lt["id"] != r["lot_id"]], key=key
        )
        left, sold = q, []
        for lt in order:
            take = min(left, lt["rem"])
            if lt["rem"] - take <= eps * lt["orig"]:
                take = lt["rem"]
            left -= lt["rem"]
            if take <= eps * q:
                continue
            cost = lt["cost"] * take / lt["rem"]
            wadj = lt["wadj"] * take / lt["rem"]
            value = take * p - f * take / q if long else take * p + f * take / q
            pnl = value - cost if long else cost - value
            name = lt["id"] + (f"~W{lt['split']}" if lt["split"] else "")
            matches[(r["trade_id"], name)] = {
                "quantity": take, "realized_pnl": pnl, "wash_sale_adjustment": wadj,
                "disallowed_loss": 0.0, "holding_start": lt["hstart"],
            }
            sold.append((lt, take, pnl - wadj, cost + wadj, name))
            lt["rem"] -= take
            lt["cost"] -= cost
            lt["wadj"] -= wadj
            if take >= lt["rem"] + take:  # the whole lot
                lt["rem"] = lt["cost"] = lt["wadj"] = 0.0
        if not (long and taxable[r["portfolio_id"]] == "TAXABLE"):
            continue
        day = r["trade_ts"].date()
        losses = [s for s in sold if s[2] < -eps * s[3]]
        consumed = {s[0]["id"] for s in sold}
        repl = [
            lt for lt in lots
            if lt["split"] == 0 and not lt["used"] and lt["rem"] > 0
            and abs((lt["open"] - day).days) <= 30 and lt["id"] not in consumed
        ]
        repl.sort(key=lambda lt: lt["seq"])
        pieces: dict = {}
        a0 = 0.0
        for lt_s, take_s, res, _, name in losses:
            c0 = 0.0
            for lt in repl:
                mq = min(a0 + take_s, c0 + lt["rem"]) - max(a0, c0)
                if mq > eps * take_s:
                    dis = -res * mq / take_s
                    matches[(r["trade_id"], name)]["disallowed_loss"] += dis
                    held = (day - lt_s["hstart"]).days
                    pieces.setdefault(id(lt), (lt, []))[1].append((mq, dis, held))
                c0 += lt["rem"]
            a0 += take_s
        for lt, ps in pieces.values():
            full = sum(x[0] for x in ps) >= lt["rem"] * (1 - eps)
            start = lt["hstart"]
            for i, (mq, dis, held) in enumerate(ps):
                if full and i == len(ps) - 1:  # the last piece stays in the lot
                    lt["wadj"] += dis
                    lt["hstart"] = start - timedelta(days=held)
                    lt["used"] = True
                    lt["ptb"] = (lt["cost"] + lt["wadj"]) / lt["rem"]
                    continue
                cost = lt["cost"] * mq / lt["rem"]
                lt["nsplit"] += 1
                lots.append(
                    {
                        **lt, "split": lt["nsplit"], "orig": mq, "rem": mq, "cost": cost,
                        "wadj": dis, "ptb": (cost + dis) / mq,
                        "hstart": start - timedelta(days=held), "used": True, "nsplit": 0,
                    }
                )
                lt["cost"] -= cost
                lt["orig"] -= mq
                lt["rem"] -= mq
    out_lots = {
        lt["id"] + (f"~W{lt['split']}" if lt["split"] else ""): {
            "original_quantity": lt["orig"], "quantity": lt["rem"],
            "cost_basis": lt["cost"], "wash_sale_adjustment": lt["wadj"],
            "holding_start": lt["hstart"],
        }
        for lots in books.values()
        for lt in lots
    }
    return matches, rejected, out_lots


def assert_rows_match(got: dict, want: dict) -> None:
    """Same keys; every wanted field equal (dates exactly, numbers to 1e-6)."""
    assert got.keys() == want.keys()
    for k, fields in want.items():
        for field, value in fields.items():
            if field == "holding_start":
                assert got[k][field] == value, (k, field)
            else:
                assert got[k][field] == pytest.approx(value, abs=1e-6), (k, field)


def assert_matches_full_reference(trades: pl.DataFrame, portfolios: pl.DataFrame) -> None:
    ledger = build_ledger(trades, portfolios)
    matches, rejected, lots = full_reference_ledger(trades, portfolios)
    got = {
        (r["trade_id"], r["lot_id"]): r
        for r in ledger.realized_pnl.to_dicts()
    }
    assert_rows_match(got, matches)
    assert set(ledger.rejected_trades["trade_id"]) == rejected
    assert_rows_match({r["lot_id"]: r for r in ledger.lots.to_dicts()}, lots)


@pytest.mark.parametrize("method", ["FIFO", "LIFO", "HIFO"])
@pytest.mark.parametrize("tax", ["EXEMPT", "TAXABLE"])
@FAST
@given(data=random_books_named())
def test_engine_equals_full_reference_loop(method, tax, data):
    """The replay kernel against the per-trade specification loop, every lot
    method, with and without wash sales, named lots and oversells included."""
    trades, portfolios = data
    portfolios = portfolios.with_columns(
        lot_method=pl.lit(method), tax_status=pl.lit(tax)
    )
    assert_matches_full_reference(trades, portfolios)


@FAST
@given(random_books())
def test_fifo_books_equal_reference_and_input_order_is_irrelevant(data):
    """FIFO books, as generated by ``random_books``, against the specification loop; and the
    same trades in reverse input order give the same frames."""
    trades, portfolios = data
    portfolios = portfolios.with_columns(lot_method=pl.lit("FIFO"))
    assert_matches_full_reference(trades, portfolios)
    forward = build_ledger(trades, portfolios)
    backward = build_ledger(trades.reverse(), portfolios)
    for a, b in zip(
        (forward.lots, forward.realized_pnl, forward.accepted_trades, forward.rejected_trades),
        (backward.lots, backward.realized_pnl, backward.accepted_trades, backward.rejected_trades),
    ):
        assert_frame_equal(a, b, check_exact=False, abs_tol=1e-9)


def reference_ledger(trades: pl.DataFrame, portfolios: pl.DataFrame):
    """A plain per-trade loop (no wash sales): {(trade_id, lot_id): (qty, pnl)}, rejected ids,
    {lot_id: remaining}. Only for EXEMPT books: the smallest statement of the lot methods."""
    method = dict(zip(portfolios["portfolio_id"], portfolios["lot_method"]))
    rows = spec_event_order(trades)
    books: dict = {}
    matches, rejected, remaining = {}, set(), {}
    for seq, r in enumerate(rows):
        long = r["side"] in ("BUY", "SELL")
        lots = books.setdefault((r["portfolio_id"], r["instrument_id"], long), [])
        q, p, f = r["quantity"], r["price"], r["fees"]
        if r["side"] in ("BUY", "SELL_SHORT"):
            lots.append([r["trade_id"], seq, q, q * p + f if long else q * p - f])
            remaining[r["trade_id"]] = q
            continue
        open_lots = [lt for lt in lots if lt[2] > 0]
        if q > sum(lt[2] for lt in open_lots) * (1 + 1e-9):
            rejected.add(r["trade_id"])
            continue
        m = method[r["portfolio_id"]]
        key = {
            "FIFO": lambda lt: (lt[1],),
            "LIFO": lambda lt: (-lt[1],),
            "HIFO": lambda lt: (-lt[3] / lt[2], lt[1]),
        }[m]
        left = q
        for lt in sorted(open_lots, key=key):
            take = min(left, lt[2])
            if take <= 0:
                break
            cost = lt[3] * take / lt[2]
            value = take * p - f * take / q if long else take * p + f * take / q
            matches[(r["trade_id"], lt[0])] = (
                take,
                value - cost if long else cost - value,
            )
            lt[2] -= take
            lt[3] -= cost
            remaining[lt[0]] = lt[2]
            left -= take
    return matches, rejected, remaining


@FAST
@given(random_books(tax="EXEMPT"))
def test_matches_reference_loop(data):
    trades, portfolios = data
    ledger = build_ledger(trades, portfolios)
    matches, rejected, remaining = reference_ledger(trades, portfolios)
    got = {
        (r["trade_id"], r["lot_id"]): (r["quantity"], r["realized_pnl"])
        for r in ledger.realized_pnl.to_dicts()
    }
    assert got.keys() == matches.keys()
    for k, (q, pnl) in matches.items():
        assert got[k] == pytest.approx((q, pnl), abs=1e-9)
    assert set(ledger.rejected_trades["trade_id"]) == rejected
    got_rem = dict(zip(ledger.lots["lot_id"], ledger.lots["quantity"]))
    assert got_rem == pytest.approx(remaining, abs=1e-9)


@pytest.mark.parametrize("method", ["FIFO", "LIFO", "HIFO"])
def test_books_with_pieces_available_now_later_or_never_against_reference(method):
    """Kernel bookkeeping: wash-sale pieces of lots already available join the live lots at
    once, pieces of lots opened later join when their lot opens, or never (opened after the
    book's last close); checked against the per-trade specification loop."""
    x = book(
        ("XB1", "2024-01-02", "BUY", 100, 10.0),
        ("XS1", "2024-02-01", "SELL", 60, 8.0),
        ("XB2", "2024-02-10", "BUY", 70, 9.0, 1.0),  # after X's last close: a piece, never used
        iid="X",
    )
    y = book(
        ("YB1", "2024-01-02", "BUY", 50, 20.0),
        ("YB2", "2024-01-20", "BUY", 40, 21.0),
        ("YS1", "2024-02-01", "SELL", 30, 15.0),  # loss: YB2 is a replacement (split)
        ("YB3", "2024-02-05", "BUY", 60, 16.0),
        ("YS2", "2024-02-15", "SELL", 70, 14.0),  # loss: YB3 replacement, available later
        ("YB4", "2024-02-20", "BUY", 25, 13.0),
        ("YS3", "2024-03-01", "SELL", 55, 17.0, 0.5, "YB3"),
        iid="Y",
    )
    z = book(  # a short book closing once, beside the long ones
        ("ZS1", "2024-01-03", "SELL_SHORT", 10, 30.0),
        ("ZC1", "2024-01-10", "BUY_TO_COVER", 4, 31.0),
        iid="Z",
    )
    trades = pl.concat([x, y, z])
    for tax in ("TAXABLE", "EXEMPT"):
        ledger = build_ledger(trades, pf(method, tax))
        check_schemas(ledger, trades)
        assert_matches_full_reference(trades, pf(method, tax))
    # the taxable run did split pieces off (the engine paths above were exercised)
    taxable = build_ledger(trades, pf(method, "TAXABLE"))
    assert taxable.lots.filter(pl.col("lot_id").str.contains("~W")).height > 0


@pytest.mark.parametrize("method", ["FIFO", "LIFO", "HIFO"])
def test_kernel_that_runs_out_of_room_replays_the_book_to_the_same_result(method):
    """Arrays started one entry long must double (book table, lots, realised rows, pairs,
    rejections) and replay the book that ran out, giving exactly the default-sized result."""
    from transforms.lot_kernel import replay_books
    from transforms.lots import _events, _validate

    rows = [
        ("B1", "2024-01-02", "BUY", 100, 10.0),
        ("B2", "2024-01-20", "BUY", 40, 21.0),
        ("S1", "2024-02-01", "SELL", 130, 8.0),  # loss: B2 pieces
        ("B3", "2024-02-05", "BUY", 60, 16.0),
        ("S2", "2024-02-15", "SELL", 500, 14.0),  # oversell: rejected
        ("S3", "2024-02-16", "SELL", 5, 14.0, 0.0, "NOPE"),  # unknown lot: rejected
        ("S4", "2024-02-20", "SELL", 50, 9.0),  # loss: B3 replacement pieces
        ("B4", "2024-03-01", "BUY", 125, 13.0),  # replaces S4's loss rows: split in pieces
    ]
    trades = pl.concat(
        [book(*[(iid + r[0], *r[1:]) for r in rows], iid=iid) for iid in ("X", "Y", "Z")]
    )
    checked, _, portfolio_ids = _validate(trades.with_row_index("_r"), pf(method, "TAXABLE"))
    ev = _events(checked, portfolio_ids)
    args = (ev.bk, ev.is_open, ev.is_long, ev.qty, ev.price, ev.fees, ev.ts, ev.day,
            ev.method, ev.wash, ev.named)
    default, tiny = replay_books(*args), replay_books(*args, room=1)
    assert (default[1][1] > 0).any()  # wash-sale pieces were split off
    assert default[4].size == 6  # two rejections per book
    for a, b in zip(default, tiny):
        np.testing.assert_array_equal(a, b)


def test_close_of_exactly_the_open_quantity_after_many_fractional_trades():
    """Closes at the open quantity after many fractional trades (the kernel keeps it as a
    running sum and recounts near the boundary): 0.1 bought 30 times, 0.7 sold 3 times, then
    exactly the rest (float sums leave ~1e-15 either way) is accepted and closes every lot,
    and a close of 1e-6 more than the rest is rejected with the open quantity in its reason."""
    rows = [(f"B{i:02d}", f"2024-01-{1 + i % 28:02d}", "BUY", 0.1, 10.0) for i in range(30)]
    rows += [(f"S{i}", "2024-02-01", "SELL", 0.7, 11.0) for i in range(3)]
    exact = book(*rows, ("S9", "2024-02-02", "SELL", 3.0 - 2.1, 12.0))
    ledger = build_ledger(exact, pf())
    assert ledger.rejected_trades.height == 0
    assert ledger.lots["quantity"].max() == 0.0
    over = book(*rows, ("S9", "2024-02-02", "SELL", 0.900001, 12.0))
    ledger = build_ledger(over, pf())
    assert ledger.rejected_trades["trade_id"].to_list() == ["S9"]
    assert "exceeds open LONG quantity 0.9" in ledger.rejected_trades["reason"][0]


@pytest.mark.parametrize(("split_events", "parts"), [(2, 8), (2, 2), (1_000, 8), (2, 1_000)])
def test_replay_in_parts_on_an_executor_equals_one_piece(tiny_book, monkeypatch, split_events, parts):
    """With an executor the books are replayed in parts (cut at book boundaries; more parts
    than books gives one part per book) shared by two threads, and part of the output built
    on it: every output frame must be the one-thread ledger's."""
    from concurrent.futures import ThreadPoolExecutor

    import transforms.lots as lots_module

    trades = pl.concat([f for _, f in tiny_book["trades"]])
    portfolios = pl.concat([f for _, f in tiny_book["portfolios"]])
    # oversells in the first and the last book, so rejections fall in both halves
    ends = trades.sort("portfolio_id", "instrument_id").filter(pl.col("side") == "BUY").slice(0, 1)
    ends = pl.concat([ends, trades.sort("portfolio_id", "instrument_id").filter(pl.col("side") == "BUY").tail(1)])
    oversells = ends.with_columns(
        pl.lit("SELL").alias("side"), pl.lit(1e9).alias("quantity"), (pl.col("trade_id") + "-OVER").alias("trade_id")
    )
    trades = pl.concat([trades, oversells])
    alone = build_ledger(trades, portfolios)
    assert alone.lots["lot_id"].str.contains("~W").any() and alone.rejected_trades.height > 0
    monkeypatch.setattr(lots_module, "SPLIT_EVENTS", split_events)
    monkeypatch.setattr(lots_module, "REPLAY_PARTS", parts)
    with ThreadPoolExecutor(1) as executor:
        split = build_ledger(trades, portfolios, executor=executor)
    for name in ("lots", "realized_pnl", "accepted_trades", "rejected_trades"):
        assert_frame_equal(getattr(split, name), getattr(alone, name))
