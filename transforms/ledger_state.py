"""Continue the tax-lot ledger from its open lots: the intraday path applies a file of new
trades without replaying each touched portfolio's whole history.

A ledger build leaves its state: every OPEN lot with the replay's working fields
(``Ledger.state``), per book its last event (``Ledger.books``), and the loss rows of recent
sales whose loss shares no replacement has taken yet (``Ledger.open_losses``). New trades
continue a book exactly, with the same lots, realised rows and rejections as a replay of its
whole history, when each comes after every earlier event of its portfolio and instrument: a
trade at or before that moment could change how earlier closes were matched or rejected.
A new BUY within 30 days after an open loss takes its loss shares as the whole replay would
(``transforms.lot_kernel``); the earlier realised rows whose disallowed loss that raises are
reported (``Ledger.loss_updates``) for the caller to update by key.

Trade ids must not repeat earlier ones (bronze guarantees it: ``assets.ingest``). A portfolio
with a trade at or before its book's last event is replayed whole instead (``replay_needed``).
"""

from __future__ import annotations

from dataclasses import replace

import polars as pl

from transforms.contract import LEDGER_BOOKS_SCHEMA, LOTS_SCHEMA
from transforms.lots import Ledger, build_ledger

BOOK_KEY = ["portfolio_id", "instrument_id", "position_type"]


def replay_needed(trades: pl.DataFrame, books: pl.DataFrame) -> pl.Series:
    """The portfolios (sorted, distinct ``portfolio_id``) whose new ``trades`` cannot continue
    the ledger whose ``books`` (``LEDGER_BOOKS_SCHEMA``) are given: a trade at or before the
    last event of its portfolio and instrument (either side of the book). Rows missing a
    portfolio, instrument or time are left to the ledger's own checks (rejected whatever
    their order)."""
    new = trades.select(
        pl.col("portfolio_id").cast(pl.String), pl.col("instrument_id").cast(pl.String), "trade_ts",
    ).drop_nulls()
    last = books.group_by("portfolio_id", "instrument_id").agg(pl.col("last_event_ts").max())
    early = new.join(last, on=["portfolio_id", "instrument_id"]).filter(pl.col("trade_ts") <= pl.col("last_event_ts"))
    return early["portfolio_id"].unique().sort()


def continue_ledger(
    trades: pl.DataFrame, portfolios: pl.DataFrame, state: pl.DataFrame, open_losses: pl.DataFrame
) -> Ledger:
    """The ledger ``trades`` make from ``state`` and ``open_losses`` (``LEDGER_STATE_SCHEMA``,
    ``LEDGER_OPEN_LOSSES_SCHEMA``: those of an earlier build, at least of the trades'
    portfolios), for portfolios that ``replay_needed`` does not name.

    Only the books of the (portfolio, instrument) pairs the trades name are replayed, from
    their open lots and open losses: a book's lots and the wash-sale rule (the same
    instrument) never look at another instrument, and a portfolio holds thousands of lots
    in books a file does not touch.

    Output: a ``Ledger`` whose lots are those of the replayed books (the seeded ones as they
    are now, and the new ones; ``open_lots(state)`` gives every open lot), whose realised
    rows, accepted and rejected trades are the new ones; ``loss_updates`` the earlier realised
    rows whose disallowed loss changed; its ``state`` and ``open_losses`` are every one of
    the trades' portfolios (they replace their earlier rows: the other books' rows pass
    through) and its ``books`` cover the books it replayed (merge them into the earlier ones
    with ``merge_books``)."""
    pairs = trades.select(pl.col("portfolio_id").cast(pl.String), pl.col("instrument_id").cast(pl.String)).unique()
    ids = pairs.get_column("portfolio_id").implode()
    mine = pl.col("portfolio_id").is_in(ids)
    state, open_losses = state.filter(mine), open_losses.filter(mine)
    pair = ["portfolio_id", "instrument_id"]
    ledger = build_ledger(trades, portfolios, seed=state.join(pairs, on=pair, how="semi"),
                          open_losses=open_losses.join(pairs, on=pair, how="semi"))
    others = (state.join(pairs, on=pair, how="anti"), open_losses.join(pairs, on=pair, how="anti"))
    return replace(
        ledger,
        state=pl.concat([others[0], ledger.state.select(others[0].columns)]),
        open_losses=pl.concat([others[1], ledger.open_losses.select(others[1].columns)]),
    )


def open_lots(state: pl.DataFrame) -> pl.DataFrame:
    """The ``LOTS_SCHEMA`` rows of the open lots a ledger ``state`` holds, as the ledger
    writes them: status OPEN, no close, ``tax_basis = cost_basis + wash_sale_adjustment``."""
    return state.with_columns(
        (pl.col("cost_basis") + pl.col("wash_sale_adjustment")).alias("tax_basis"),
        pl.lit("OPEN").alias("status"),
        pl.lit(None, LOTS_SCHEMA["closed_ts"]).alias("closed_ts"),
    ).select(list(LOTS_SCHEMA)).cast(LOTS_SCHEMA)


def merge_books(earlier: pl.DataFrame, later: pl.DataFrame) -> pl.DataFrame:
    """``LEDGER_BOOKS_SCHEMA`` rows of both, one per book, with the later last event of the two
    (a continued book's seeded lots are events older than its last one). Sorted by book."""
    return (
        pl.concat([earlier.select(list(LEDGER_BOOKS_SCHEMA)), later.select(list(LEDGER_BOOKS_SCHEMA))])
        .group_by(BOOK_KEY)
        .agg(pl.col("last_event_ts").max())
        .sort(BOOK_KEY)
        .cast(LEDGER_BOOKS_SCHEMA)
    )
