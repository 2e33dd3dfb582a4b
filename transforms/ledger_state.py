"""Continue the tax-lot ledger from its open lots: the intraday path applies a file of new
trades without replaying each touched portfolio's whole history.

A ledger build leaves its state (``Ledger.state``: every OPEN lot with the replay's working
fields) and, per book, its last event and latest loss sale still open to replacement shares
(``Ledger.books``). New trades continue a book exactly, with the same lots, realised rows
and rejections as a replay of its whole history, when

1. each comes after every earlier event of its portfolio and instrument (a trade at or before
   that moment could change how earlier closes were matched or rejected); and
2. no new BUY falls within the wash-sale window (30 days) after a loss sale of the book whose
   loss shares were not all matched with replacement shares: a whole replay would give that
   BUY's shares to the earlier loss (``transforms.lot_kernel``, "Matching").

Trade ids must not repeat earlier ones (bronze guarantees it: ``assets.ingest``). A portfolio
with a trade breaking 1 or 2 is replayed whole instead (``replay_needed``).
"""

from __future__ import annotations

import polars as pl

from transforms.contract import LEDGER_BOOKS_SCHEMA
from transforms.lot_kernel import WASH_WINDOW_DAYS
from transforms.lots import Ledger, build_ledger

BOOK_KEY = ["portfolio_id", "instrument_id", "position_type"]


def replay_needed(trades: pl.DataFrame, books: pl.DataFrame) -> pl.Series:
    """The portfolios (sorted, distinct ``portfolio_id``) whose new ``trades`` cannot continue
    the ledger whose ``books`` (``LEDGER_BOOKS_SCHEMA``) are given: a trade at or before the
    last event of its portfolio and instrument (either side of the book), or a BUY on a day
    ``d`` of a LONG book with an open loss sale on a day ``>= d - 30``. Rows missing a
    portfolio, instrument or time are left to the ledger's own checks (rejected whatever
    their order)."""
    new = trades.select(
        pl.col("portfolio_id").cast(pl.String), pl.col("instrument_id").cast(pl.String), "trade_ts",
        pl.col("side").cast(pl.String),
    ).drop_nulls()
    last = books.group_by("portfolio_id", "instrument_id").agg(pl.col("last_event_ts").max())
    early = new.join(last, on=["portfolio_id", "instrument_id"]).filter(pl.col("trade_ts") <= pl.col("last_event_ts"))
    losses = books.filter((pl.col("position_type") == "LONG") & pl.col("open_loss_day").is_not_null())
    washed = (
        new.filter(pl.col("side") == "BUY")
        .join(losses.select("portfolio_id", "instrument_id", "open_loss_day"), on=["portfolio_id", "instrument_id"])
        .filter(pl.col("open_loss_day") >= pl.col("trade_ts").dt.date() - pl.duration(days=WASH_WINDOW_DAYS))
    )
    return pl.concat([early["portfolio_id"], washed["portfolio_id"]]).unique().sort()


def continue_ledger(trades: pl.DataFrame, portfolios: pl.DataFrame, state: pl.DataFrame) -> Ledger:
    """The ledger ``trades`` make from ``state`` (``LEDGER_STATE_SCHEMA``: the open lots of an
    earlier build, at least those of the trades' portfolios), for portfolios that
    ``replay_needed`` does not name.

    Output: a ``Ledger`` whose lots are the seeded lots as they are now plus the new lots, and
    whose realised rows, accepted and rejected trades are the new ones; its ``state`` is the
    new state of those portfolios and its ``books`` cover the books it replayed (merge them
    into the earlier ones with ``merge_books``)."""
    ids = trades.get_column("portfolio_id").cast(pl.String).unique().implode()
    return build_ledger(trades, portfolios, seed=state.filter(pl.col("portfolio_id").is_in(ids)))


def merge_books(earlier: pl.DataFrame, later: pl.DataFrame) -> pl.DataFrame:
    """``LEDGER_BOOKS_SCHEMA`` rows of both, one per book: the later last event and the later
    open loss sale of the two (a continued book's seeded lots are events older than its last
    one). Sorted by book."""
    return (
        pl.concat([earlier.select(list(LEDGER_BOOKS_SCHEMA)), later.select(list(LEDGER_BOOKS_SCHEMA))])
        .group_by(BOOK_KEY)
        .agg(pl.col("last_event_ts").max(), pl.col("open_loss_day").max())
        .sort(BOOK_KEY)
        .cast(LEDGER_BOOKS_SCHEMA)
    )
