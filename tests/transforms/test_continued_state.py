"""Tests of the carried state (transforms.continued_state): a book's last trades applied to the
state stored by a build of the earlier ones give the positions, portfolio state, cash balances
and last valuation row of one build over every trade."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from transforms.book import BookInputs, Market, build_book
from transforms.cash import CASH_BALANCES_SCHEMA, cash_balances
from transforms.continued_state import (
    StoredState,
    carry_cash_balances,
    continue_book,
    valuation_changes,
    valuations_on_day,
)
from transforms.fx import Currencies
from transforms.ledger_state import open_lots
from transforms.lots import build_ledger
from transforms.sample_book import generate_book

TOL = {"check_exact": False, "rel_tol": 1e-12, "abs_tol": 1e-9}
LAST_DAY = date(2026, 10, 30)  # the tiny book's last price date (a Friday)


@pytest.fixture(scope="module")
def tiny() -> BookInputs:
    book = generate_book("tiny", 11)
    frame = {k: pl.concat([f for _, f in parts], how="diagonal_relaxed") for k, parts in book.items()}
    inputs = BookInputs(*(frame[k] for k in ("trades", "portfolios", "instruments", "prices", "fx_rates", "cash_flows")))
    assert inputs.prices["date"].max() == LAST_DAY
    return inputs


def _end(day: date) -> datetime:
    return datetime.combine(day, time.max, tzinfo=UTC)


def _stored(inputs: BookInputs, as_of: datetime) -> StoredState:
    """What the pipeline stores after a build of ``inputs`` at ``as_of``."""
    book = build_book(inputs, as_of)
    ledger = build_ledger(inputs.trades, inputs.portfolios)
    return StoredState(
        ledger_state=ledger.state,
        open_losses=ledger.open_losses,
        balances=cash_balances(book.cash_ledger, as_of),
        realized=book.portfolio_state.select("portfolio_id", "realized_pnl", pl.col("last_updated").alias("last_close_ts")),
        positions=book.positions,
        valuations=book.daily_valuations,
    )


def _split(inputs: BookInputs, new: pl.DataFrame) -> BookInputs:
    kept = inputs.trades.filter(~pl.col("trade_id").is_in(new["trade_id"].implode()))
    return BookInputs(kept, inputs.portfolios, inputs.instruments, inputs.prices, inputs.fx_rates, inputs.cash_flows)


def _assert_same_state(continued, whole, touched: pl.Series, as_of: datetime) -> None:
    mine = pl.col("portfolio_id").is_in(touched.implode())
    assert_frame_equal(continued.positions, whole.positions.filter(mine), **TOL)
    assert_frame_equal(continued.portfolio_state, whole.portfolio_state.filter(mine), **TOL)
    assert_frame_equal(continued.balances, cash_balances(whole.cash_ledger, as_of).filter(mine), **TOL)
    open_now = open_lots(continued.ledger.state).sort("lot_id")
    assert_frame_equal(open_now, whole.lots.filter(mine, pl.col("status") == "OPEN").sort("lot_id"))


def test_last_day_trades_applied_to_the_stored_state_equal_one_build(tiny):
    """The trades of the last price date arrive after a build of the earlier ones: carried
    forward, every table of their portfolios equals one build over every trade, and the
    valuation row of that date is recomputed in place (nothing to rebuild)."""
    as_of = _end(LAST_DAY)
    new = tiny.trades.filter(pl.col("trade_ts").dt.date() == LAST_DAY)
    assert new.height >= 5 and new["portfolio_id"].n_unique() >= 2
    stored = _stored(_split(tiny, new), as_of)
    continued = continue_book(stored, new, tiny.portfolios, tiny.instruments, Market.of(tiny), as_of)
    whole = build_book(tiny, as_of)
    touched = new["portfolio_id"].unique().sort()
    _assert_same_state(continued, whole, touched, as_of)
    assert continued.rebuild_valuations.len() == 0
    expected = whole.daily_valuations.filter(pl.col("date") == LAST_DAY, pl.col("portfolio_id").is_in(touched.implode()))
    assert_frame_equal(continued.valuations, expected, **TOL)
    # the row did change: the stored one is not the answer
    before = stored.valuations.filter(pl.col("date") == LAST_DAY, pl.col("portfolio_id").is_in(touched.implode()))
    assert (before["nav"] - expected["nav"]).abs().max() > 1.0


def test_trades_after_the_last_price_date_change_no_valuation_row(tiny):
    """Trades on the Saturday after the last price date: the state moves, no valuation row does."""
    saturday = LAST_DAY + timedelta(days=1)
    new = tiny.trades.filter(pl.col("trade_ts").dt.date() == LAST_DAY).with_columns(
        pl.col("trade_ts") + timedelta(days=1), pl.col("settle_date") + timedelta(days=3),
        (pl.col("trade_id") + "-SAT").alias("trade_id"),
    )
    with_new = BookInputs(pl.concat([tiny.trades, new]), *(getattr(tiny, k) for k in
                          ("portfolios", "instruments", "prices", "fx_rates", "cash_flows")))
    as_of = _end(saturday)
    stored = _stored(tiny, datetime.combine(saturday, time(0, 0, 1), tzinfo=UTC))
    continued = continue_book(stored, new, tiny.portfolios, tiny.instruments, Market.of(tiny), as_of)
    whole = build_book(with_new, as_of)
    _assert_same_state(continued, whole, new["portfolio_id"].unique().sort(), as_of)
    assert continued.valuations.height == 0 and continued.rebuild_valuations.len() == 0
    # the pending cash of trades settling next week is pending in the carried balances
    assert continued.balances["pending_cash"].abs().sum() > 0


def test_a_new_book_dated_earlier_names_its_portfolio_for_a_valuation_rebuild(tiny):
    """A first trade in a new instrument dated a week back continues the ledger (a new book)
    but changes that week's valuations: its portfolio is named for a rebuild, and positions
    and state still equal one build."""
    as_of = _end(LAST_DAY)
    portfolio = tiny.trades["portfolio_id"].sort()[0]
    held = set(tiny.trades.filter(pl.col("portfolio_id") == portfolio)["instrument_id"])
    instrument = next(i for i in tiny.instruments["instrument_id"].sort() if i not in held)
    new = pl.DataFrame({
        "trade_id": ["LATE-1"], "portfolio_id": [portfolio], "instrument_id": [instrument],
        "trade_ts": [datetime(2026, 10, 23, 15, 0, tzinfo=UTC)], "settle_date": [date(2026, 10, 27)],
        "side": ["BUY"], "quantity": [10.0], "price": [100.0], "fees": [1.0], "strategy_id": [None], "lot_id": [None],
    }).cast(tiny.trades.schema)
    with_new = BookInputs(pl.concat([tiny.trades, new]), *(getattr(tiny, k) for k in
                          ("portfolios", "instruments", "prices", "fx_rates", "cash_flows")))
    continued = continue_book(_stored(tiny, as_of), new, tiny.portfolios, tiny.instruments, Market.of(tiny), as_of)
    whole = build_book(with_new, as_of)
    _assert_same_state(continued, whole, pl.Series([portfolio]), as_of)
    assert continued.rebuild_valuations.to_list() == [portfolio] and continued.valuations.height == 0


def test_carried_balances_add_new_entries_and_keep_untouched_currencies():
    """Worked example: USD 100 settled and EUR 50 pending carried; a USD entry of -30 settling
    after the date and a new GBP entry of 20 settled."""
    day = date(2026, 3, 2)
    as_of = _end(day)
    earlier = pl.DataFrame({
        "portfolio_id": ["P1", "P1"], "currency": ["EUR", "USD"], "settled_cash": [0.0, 100.0],
        "pending_cash": [50.0, 0.0], "total_cash": [50.0, 100.0],
        "last_ts": [datetime(2026, 3, 2, 9, tzinfo=UTC), datetime(2026, 3, 2, 10, tzinfo=UTC)],
    }).cast(CASH_BALANCES_SCHEMA)
    entries = pl.DataFrame({
        "portfolio_id": ["P1", "P1"], "currency": ["USD", "GBP"], "amount": [-30.0, 20.0],
        "ts": [datetime(2026, 3, 2, 11, tzinfo=UTC), datetime(2026, 3, 2, 12, tzinfo=UTC)],
        "settle_date": [date(2026, 3, 4), day],
    })
    carried = carry_cash_balances(earlier, entries, as_of)
    assert carried.select("currency", "settled_cash", "pending_cash", "total_cash").rows() == [
        ("EUR", 0.0, 50.0, 50.0), ("GBP", 20.0, 0.0, 20.0), ("USD", 100.0, -30.0, 70.0)]
    assert carried["last_ts"].to_list() == [datetime(2026, 3, 2, 9, tzinfo=UTC), datetime(2026, 3, 2, 12, tzinfo=UTC),
                                            datetime(2026, 3, 2, 11, tzinfo=UTC)]


def test_valuation_changes_by_entry_date():
    """On the last business day an entry of that day changes its row; an earlier one, one
    without a stored row, or one on it when the moment is a later day, rebuilds."""
    day = date(2026, 3, 2)
    rows = pl.DataFrame({"portfolio_id": ["A", "B", "C"], "date": [day] * 3, "nav": [1.0, 2.0, 3.0]})

    def entries(*pairs):
        return pl.DataFrame({"portfolio_id": [p for p, _ in pairs],
                             "ts": [datetime.combine(d, time(12), tzinfo=UTC) for _, d in pairs]})

    earlier = day - timedelta(days=3)
    on_day, rebuild = valuation_changes(entries(("A", day), ("B", earlier), ("B", day), ("D", day)), rows, day, day)
    assert on_day["portfolio_id"].to_list() == ["A"] and rebuild.to_list() == ["B", "D"]
    later = day + timedelta(days=1)
    on_day, rebuild = valuation_changes(entries(("A", later), ("C", day)), rows, later, day)
    assert on_day.height == 0 and rebuild.to_list() == ["C"]
    on_day, rebuild = valuation_changes(entries(("A", day)), rows, day, None)
    assert on_day.height == 0 and rebuild.len() == 0


def test_a_holding_with_no_close_is_left_to_the_rebuild(tiny):
    """An instrument never quoted is valued at its last trade price by the daily valuations,
    which only the trades know: its portfolio is returned as unpriced, not valued."""
    as_of = _end(LAST_DAY)
    whole = build_book(tiny, as_of)
    first, second = whole.portfolio_state["portfolio_id"].sort()[:2]
    unquoted = whole.positions.filter(pl.col("portfolio_id") == first, pl.col("position_type") == "LONG").head(1)
    market = Market.of(BookInputs(tiny.trades, tiny.portfolios, tiny.instruments,
                                  tiny.prices.filter(pl.col("instrument_id") != unquoted["instrument_id"][0]),
                                  tiny.fx_rates, tiny.cash_flows))
    before = whole.daily_valuations.filter(pl.col("date") == LAST_DAY, pl.col("portfolio_id").is_in([first, second]))
    held_elsewhere = whole.positions.filter(pl.col("portfolio_id") == second,
                                            pl.col("instrument_id") == unquoted["instrument_id"][0]).height
    rows, unpriced = valuations_on_day(whole.positions, cash_balances(whole.cash_ledger, as_of), before, market,
                                       Currencies(tiny.instruments, tiny.portfolios), LAST_DAY)
    assert first in unpriced.to_list() and (second in unpriced.to_list()) == bool(held_elsewhere)
    assert first not in rows["portfolio_id"].to_list()
