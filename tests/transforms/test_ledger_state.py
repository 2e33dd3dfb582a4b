"""Tests of the continued ledger (transforms.ledger_state): a book applied file by file,
continuing from the open lots and open losses where ``replay_needed`` allows and replaying the
portfolio otherwise, gives the same lots, realised rows, rejections, state, books and open
losses as one replay of every trade, bit for bit."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from test_lots import FAST, book, pf, random_books_named

from transforms.contract import LEDGER_OPEN_LOSSES_SCHEMA, LEDGER_STATE_SCHEMA
from transforms.ledger_state import continue_ledger, merge_books, open_lots, replay_needed
from transforms.lots import build_ledger


def _sorted(frame: pl.DataFrame, *keys: str) -> pl.DataFrame:
    return frame.sort(*keys, maintain_order=True)


class Applied:
    """The ledger tables of a book applied batch by batch, the way the intraday path keeps
    them: lots, state and open losses replaced per continued or replayed portfolio, earlier
    realised rows updated by key where a new BUY took their loss, the rest appended."""

    def __init__(self, portfolios: pl.DataFrame):
        self.portfolios = portfolios
        empty = build_ledger(book(), portfolios)
        self.trades = empty.accepted_trades.clear()
        self.all_trades = book().clear()
        self.lots, self.realized, self.rejected = empty.lots, empty.realized_pnl, empty.rejected_trades
        self.state, self.books, self.open_losses = empty.state, empty.books, empty.open_losses
        self.replayed: set[str] = set()

    def apply(self, batch: pl.DataFrame) -> None:
        self.all_trades = pl.concat([self.all_trades, batch])
        redo = set(replay_needed(batch, self.books))
        self.replayed |= redo
        keep = ~pl.col("portfolio_id").is_in(list(redo))
        cont = continue_ledger(batch.filter(keep), self.portfolios, self.state, self.open_losses)
        full = build_ledger(self.all_trades.filter(~keep), self.portfolios.filter(~keep))
        touched = set(cont.lots["portfolio_id"]) | set(batch["portfolio_id"])
        # every open lot of a continued portfolio comes from its state (its other books' lots
        # are not replayed), the lots the new trades closed from the replayed books
        self.lots = pl.concat([
            self.lots.filter(keep & ~(pl.col("portfolio_id").is_in(list(touched)) & (pl.col("status") == "OPEN"))),
            open_lots(cont.state), cont.lots.filter(pl.col("status") == "CLOSED"), full.lots,
        ])
        key = ["portfolio_id", "trade_id", "lot_id"]
        updates = cont.loss_updates.select(*key, "disallowed_loss", "taxable_pnl")
        assert updates.select(key).is_unique().all()
        earlier = self.realized.filter(keep).update(updates, on=key)
        self.realized = pl.concat([earlier, cont.realized_pnl, full.realized_pnl])
        self.rejected = pl.concat([self.rejected.filter(keep), cont.rejected_trades, full.rejected_trades])
        self.trades = pl.concat([self.trades.filter(keep), cont.accepted_trades, full.accepted_trades])
        self.state = pl.concat([
            self.state.filter(keep & ~pl.col("portfolio_id").is_in(list(touched))), cont.state, full.state,
        ])
        self.books = pl.concat([merge_books(self.books.filter(keep), cont.books), full.books])
        self.open_losses = pl.concat([
            self.open_losses.filter(keep & ~pl.col("portfolio_id").is_in(list(touched))), cont.open_losses,
            full.open_losses,
        ])


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
    assert_frame_equal(_sorted(applied.open_losses, "trade_id", "lot_id"), _sorted(whole.open_losses, "trade_id", "lot_id"))


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


@pytest.mark.parametrize("method", ["FIFO", "LIFO", "HIFO"])
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))  # a continuation per trade
@given(data=random_books_named("TAXABLE"))
def test_every_trade_its_own_file_equals_one_replay(method, data):
    """The densest split (a file per distinct trade time, the way trades arrive intraday):
    every BUY after an open loss sale takes it from the stored open losses, and the tables
    still equal one replay of every trade."""
    trades, portfolios = data
    portfolios = portfolios.with_columns(lot_method=pl.lit(method))
    applied = Applied(portfolios)
    for (_,), batch in trades.sort("trade_ts").group_by("trade_ts", maintain_order=True):
        applied.apply(batch)
    assert_same_ledger(applied, build_ledger(trades, portfolios))


def _two_batches(first: pl.DataFrame, second: pl.DataFrame, portfolios: pl.DataFrame) -> Applied:
    applied = Applied(portfolios)
    applied.apply(first)
    applied.apply(second)
    assert_same_ledger(applied, build_ledger(pl.concat([first, second]), portfolios))
    return applied


def test_buy_after_an_unmatched_loss_takes_it_when_continued():
    """A loss sale with no replacement yet, then a BUY 20 days later in the next file: the
    BUY takes the $1,000 loss (IRS Pub. 550's rule) and its holding period, and the earlier
    realised row's disallowed loss is updated, without a replay."""
    portfolios = pf("FIFO", "TAXABLE")
    first = book(("B1", "2024-01-02", "BUY", 100, 50.0), ("S1", "2024-02-01", "SELL", 100, 40.0))
    assert build_ledger(first, portfolios).open_losses["trade_id"].to_list() == ["S1"]
    second = book(("B2", "2024-02-21", "BUY", 100, 42.0))
    assert replay_needed(second, build_ledger(first, portfolios).books).len() == 0
    applied = _two_batches(first, second, portfolios)
    assert applied.replayed == set()
    b2 = applied.lots.filter(pl.col("lot_id") == "B2")
    assert b2["wash_sale_adjustment"].item() == pytest.approx(1000.0)
    assert b2["holding_start"].item() == date(2024, 1, 22)  # 2024-02-21 less the 30 days B1 was held
    s1 = applied.realized.filter(pl.col("trade_id") == "S1")
    assert s1["disallowed_loss"].item() == pytest.approx(1000.0) and s1["taxable_pnl"].item() == pytest.approx(0.0)
    assert applied.open_losses.height == 0


def test_open_loss_taken_by_two_buys_in_two_files_splits_the_second():
    """200 loss shares, 120 bought back in one file and 120 in the next: the first lot takes
    120 shares' loss whole, the second is split into an 80-share piece ~W1 that takes the
    rest and its unwashed remainder; the loss is no longer open after the second file."""
    portfolios = pf("FIFO", "TAXABLE")
    first = book(("B1", "2024-01-02", "BUY", 200, 50.0), ("S1", "2024-02-01", "SELL", 200, 40.0))
    applied = Applied(portfolios)
    for batch in (first, book(("B2", "2024-02-05", "BUY", 120, 41.0)), book(("B3", "2024-02-09", "BUY", 120, 42.0))):
        applied.apply(batch)
    whole = build_ledger(pl.concat([first, book(("B2", "2024-02-05", "BUY", 120, 41.0)),
                                    book(("B3", "2024-02-09", "BUY", 120, 42.0))]), portfolios)
    assert_same_ledger(applied, whole)
    assert applied.replayed == set()
    wadj = dict(applied.lots.select("lot_id", "wash_sale_adjustment").iter_rows())
    assert wadj == pytest.approx({"B1": 0.0, "B2": 1200.0, "B3": 0.0, "B3~W1": 800.0})
    assert applied.realized["disallowed_loss"].item() == pytest.approx(2000.0)
    assert applied.open_losses.height == 0


def test_buy_after_the_window_or_a_matched_loss_takes_nothing():
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
    assert ledger.open_losses.schema == pl.Schema(LEDGER_OPEN_LOSSES_SCHEMA) and ledger.open_losses.height == 0


def test_seed_of_an_unknown_portfolio_is_refused():
    earlier = build_ledger(book(("B1", "2024-01-02", "BUY", 10, 5.0)), pf())
    with pytest.raises(ValueError, match="seeded lot of open trade B1"):
        continue_ledger(book(("B2", "2024-01-05", "BUY", 1, 5.0)), pf(pid="Q"), earlier.state, earlier.open_losses)


def test_a_trade_repeating_a_seeded_lot_id_is_rejected_as_duplicate():
    portfolios = pf()
    earlier = build_ledger(book(("B1", "2024-01-02", "BUY", 10, 5.0)), portfolios)
    cont = continue_ledger(book(("B1", "2024-01-05", "BUY", 1, 5.0)), portfolios, earlier.state, earlier.open_losses)
    assert cont.rejected_trades["reason"].to_list() == ["duplicate trade_id B1"]
    assert cont.lots["lot_id"].to_list() == ["B1"] and cont.accepted_trades.height == 0
