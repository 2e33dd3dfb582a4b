"""Tests of the continued ledger (transforms.ledger_state): a book applied file by file,
continuing from the open lots where ``replay_needed`` allows and replaying the portfolio
otherwise, gives the same lots, realised rows, rejections, state and books as one replay of
every trade, bit for bit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from test_lots import FAST, book, pf, random_books_named

from transforms.contract import LEDGER_STATE_SCHEMA
from transforms.ledger_state import continue_ledger, merge_books, replay_needed
from transforms.lots import build_ledger


def _sorted(frame: pl.DataFrame, *keys: str) -> pl.DataFrame:
    return frame.sort(*keys, maintain_order=True)


class Applied:
    """The ledger tables of a book applied batch by batch, the way the intraday path keeps
    them: lots and state replaced per continued or replayed portfolio, the rest appended."""

    def __init__(self, portfolios: pl.DataFrame):
        self.portfolios = portfolios
        empty = build_ledger(book(), portfolios)
        self.trades = empty.accepted_trades.clear()
        self.all_trades = book().clear()
        self.lots, self.realized, self.rejected = empty.lots, empty.realized_pnl, empty.rejected_trades
        self.state, self.books = empty.state, empty.books
        self.replayed: set[str] = set()

    def apply(self, batch: pl.DataFrame) -> None:
        self.all_trades = pl.concat([self.all_trades, batch])
        redo = set(replay_needed(batch, self.books))
        self.replayed |= redo
        keep = ~pl.col("portfolio_id").is_in(list(redo))
        cont = continue_ledger(batch.filter(keep), self.portfolios, self.state)
        full = build_ledger(self.all_trades.filter(~keep), self.portfolios.filter(~keep))
        touched = set(cont.lots["portfolio_id"]) | set(batch["portfolio_id"])
        self.lots = pl.concat([
            self.lots.filter(keep & ~(pl.col("portfolio_id").is_in(list(touched)) & (pl.col("status") == "OPEN"))),
            cont.lots, full.lots,
        ])
        self.realized = pl.concat([self.realized.filter(keep), cont.realized_pnl, full.realized_pnl])
        self.rejected = pl.concat([self.rejected.filter(keep), cont.rejected_trades, full.rejected_trades])
        self.trades = pl.concat([self.trades.filter(keep), cont.accepted_trades, full.accepted_trades])
        self.state = pl.concat([
            self.state.filter(keep & ~pl.col("portfolio_id").is_in(list(touched))), cont.state, full.state,
        ])
        self.books = pl.concat([merge_books(self.books.filter(keep), cont.books), full.books])


def assert_same_ledger(applied: Applied, whole) -> None:
    assert_frame_equal(_sorted(applied.lots, "lot_id"), _sorted(whole.lots, "lot_id"))
    assert_frame_equal(_sorted(applied.realized, "trade_id", "lot_id"), _sorted(whole.realized_pnl, "trade_id", "lot_id"))
    assert_frame_equal(_sorted(applied.rejected, "trade_id"), _sorted(whole.rejected_trades, "trade_id"))
    assert_frame_equal(_sorted(applied.trades, "trade_id"), _sorted(whole.accepted_trades, "trade_id"))
    assert_frame_equal(_sorted(applied.state, "lot_id"), _sorted(whole.state, "lot_id"))
    assert_frame_equal(
        _sorted(applied.books, "portfolio_id", "instrument_id", "position_type"),
        _sorted(whole.books, "portfolio_id", "instrument_id", "position_type"),
    )


@pytest.mark.parametrize("method", ["FIFO", "LIFO", "HIFO"])
@FAST
@given(data=random_books_named(), cuts=st.lists(st.integers(0, 90 * 24), max_size=4))
def test_any_split_into_batches_equals_one_replay(method, data, cuts):
    """Batches cut at random times (the wash-sale rule, named lots, oversells and shorts
    included), each continued or replayed as ``replay_needed`` says: the same tables as one
    replay of every trade."""
    trades, portfolios = data
    portfolios = portfolios.with_columns(lot_method=pl.lit(method))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    bounds = sorted({start + timedelta(hours=h) for h in cuts})
    applied = Applied(portfolios)
    lo = None
    for hi in [*bounds, None]:
        batch = trades.filter(
            (pl.col("trade_ts") >= lo if lo is not None else pl.lit(True))
            & (pl.col("trade_ts") < hi if hi is not None else pl.lit(True))
        )
        applied.apply(batch)
        lo = hi
    assert_same_ledger(applied, build_ledger(trades, portfolios))


def _two_batches(first: pl.DataFrame, second: pl.DataFrame, portfolios: pl.DataFrame) -> Applied:
    applied = Applied(portfolios)
    applied.apply(first)
    applied.apply(second)
    assert_same_ledger(applied, build_ledger(pl.concat([first, second]), portfolios))
    return applied


def test_buy_after_an_unmatched_loss_replays_the_portfolio():
    """A loss sale with no replacement yet, then a BUY 20 days later in the next file: the
    BUY takes the loss (IRS Pub. 550's rule), so the portfolio is replayed, not continued."""
    portfolios = pf("FIFO", "TAXABLE")
    first = book(("B1", "2024-01-02", "BUY", 100, 50.0), ("S1", "2024-02-01", "SELL", 100, 40.0))
    second = book(("B2", "2024-02-21", "BUY", 100, 42.0))
    assert replay_needed(second, build_ledger(first, portfolios).books).to_list() == ["P"]
    applied = _two_batches(first, second, portfolios)
    assert applied.replayed == {"P"}
    assert applied.lots.filter(pl.col("lot_id") == "B2")["wash_sale_adjustment"].item() == pytest.approx(1000.0)


def test_buy_after_the_window_or_a_matched_loss_continues():
    """31 days after the loss sale the BUY is outside the window; a loss already matched in
    full (replacement bought the day before) leaves nothing to take: both continue."""
    portfolios = pf("FIFO", "TAXABLE")
    first = book(("B1", "2024-01-02", "BUY", 100, 50.0), ("S1", "2024-02-01", "SELL", 100, 40.0))
    late = book(("B2", "2024-03-03", "BUY", 100, 42.0))
    assert _two_batches(first, late, portfolios).replayed == set()
    matched = book(("B1", "2024-01-02", "BUY", 100, 50.0), ("B0", "2024-01-31", "BUY", 100, 41.0),
                   ("S1", "2024-02-01", "SELL", 100, 40.0))
    again = book(("B2", "2024-02-10", "BUY", 100, 42.0), ("S2", "2024-02-11", "SELL", 150, 39.0))
    applied = _two_batches(matched, again, portfolios)
    assert applied.replayed == set()
    # the new loss sale (FIFO: B0~ then B2) finds B2 consumed and no other replacement
    assert applied.lots.filter(pl.col("status") == "OPEN")["lot_id"].to_list() == ["B2"]


def test_trade_at_or_before_the_last_event_replays():
    portfolios = pf("FIFO", "EXEMPT")
    first = book(("B1", "2024-01-02", "BUY", 100, 50.0), ("S1", "2024-02-01", "SELL", 150, 40.0))
    # S1 was rejected (oversell); B2 at the same moment opens before it: S1 now applies
    second = book(("B2", "2024-02-01", "BUY", 100, 42.0))
    applied = _two_batches(first, second, portfolios)
    assert applied.replayed == {"P"}
    assert applied.rejected.height == 0


def test_wash_sale_piece_continues_and_splits_again():
    """A replacement lot split into a wash-sale piece is seeded with its piece count: a later
    loss sale within the window splits the remainder into piece ~W2, as one replay does."""
    portfolios = pf("HIFO", "TAXABLE")
    first = book(
        ("B1", "2024-01-02", "BUY", 100, 50.0),
        ("B2", "2024-01-20", "BUY", 300, 45.0),
        ("S1", "2024-02-01", "SELL", 100, 40.0),  # B1's loss: 100 of B2's 300 shares
    )
    second = book(("S2", "2024-02-05", "SELL", 50, 30.0), ("B3", "2024-02-06", "BUY", 10, 31.0))
    applied = _two_batches(first, second, portfolios)
    assert applied.replayed == set()
    assert "B2~W1" in set(applied.lots["lot_id"])


def test_seed_state_is_the_open_lots_only():
    ledger = build_ledger(book(("B1", "2024-01-02", "BUY", 10, 5.0), ("S1", "2024-01-03", "SELL", 10, 6.0),
                               ("B2", "2024-01-04", "BUY", 5, 5.0)), pf())
    assert ledger.state["lot_id"].to_list() == ["B2"]
    assert ledger.state.schema == pl.Schema(LEDGER_STATE_SCHEMA)
    assert ledger.books["last_event_ts"].item() == datetime(2024, 1, 4, 15, tzinfo=UTC)


def test_seed_of_an_unknown_portfolio_is_refused():
    state = build_ledger(book(("B1", "2024-01-02", "BUY", 10, 5.0)), pf()).state
    with pytest.raises(ValueError, match="seeded lot of open trade B1"):
        continue_ledger(book(("B2", "2024-01-05", "BUY", 1, 5.0)), pf(pid="Q"), state)


def test_a_trade_repeating_a_seeded_lot_id_is_rejected_as_duplicate():
    portfolios = pf()
    state = build_ledger(book(("B1", "2024-01-02", "BUY", 10, 5.0)), portfolios).state
    cont = continue_ledger(book(("B1", "2024-01-05", "BUY", 1, 5.0)), portfolios, state)
    assert cont.rejected_trades["reason"].to_list() == ["duplicate trade_id B1"]
    assert cont.lots["lot_id"].to_list() == ["B1"] and cont.accepted_trades.height == 0
