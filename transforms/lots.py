"""The lot ledger: tax lots, realised P&L and wash sales from a portfolio's trades.

``build_ledger(trades, portfolios)`` is a pure function over Polars frames (no Dagster, no file
system). It replays every book (portfolio, instrument, LONG or SHORT) in event order, opens a lot
per opening trade, lets each closing trade consume lots by the portfolio's lot method, rejects
trades that cannot be applied, and applies the wash-sale rule (``transforms.lot_kernel``).

How it is split
---------------
- ``_validate`` (Polars): the rules a row breaks on its own (nulls, sides, signs, duplicate
  ids, unknown portfolios), as a small integer per row; words only for the bad rows.
- ``_events`` (numpy): portfolio (coded in ``_validate``, among the sorted portfolio ids) and
  instrument become integer codes in name order (an Enum of the sorted distinct names), so
  event order is one integer sort; the valid trades become the numeric columns the replay
  reads, in that order.
- ``transforms.lot_kernel.replay_books`` (compiled): the history-dependent rules, one book
  after the other, in one pass.
- ``_assemble`` (Polars): contract-typed output frames. Strings are gathered from the
  (rechunked) input by row number once per output column, and the kernel emits lots and
  realised rows already in output order, so nothing is sorted here.

Given an executor (``build_ledger(..., executor=)``; ``transforms.book.build_book`` passes one
when it runs alone), the replay runs in parts of the books and the output frames column by
column, each part or column taken by whichever thread is free; the accepted / rejected trades
are built on it meanwhile. The frames are the same either way.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial

import numpy as np
import polars as pl

from transforms.contract import (
    LANDING_SCHEMAS,
    LEDGER_BOOKS_SCHEMA,
    LEDGER_OPEN_LOSSES_SCHEMA,
    LEDGER_STATE_SCHEMA,
    LOT_METHODS,
    LOTS_SCHEMA,
    REALIZED_PNL_SCHEMA,
    TAX_STATUSES,
    TRADE_SIDES,
    TS,
)
from transforms.lot_kernel import FIFO, HIFO, LIFO, NO_LOT, WASH_WINDOW_DAYS, replay_books
from transforms.ordering import order_by_key_then, time_offsets
from transforms.prices import codes
from transforms.shards import InPlace, run_shared

__all__ = ["Ledger", "RowCodes", "build_ledger"]


@dataclass(frozen=True)
class RowCodes:
    """The portfolio and instrument of each row of a frame as integer codes (rows aligned).

    ``portfolio[k]`` is row k's position in ``portfolio_ids`` and ``instrument[k]`` its position
    in ``instrument_ids`` (both sorted, distinct). The ledger knows them from ordering the
    events, so a reader of its rows (e.g. ``transforms.state.realized_by_portfolio``) need not
    look the strings up again."""

    portfolio: np.ndarray
    instrument: np.ndarray
    portfolio_ids: pl.Series
    instrument_ids: pl.Series

    def take(self, rows: np.ndarray) -> "RowCodes":
        """The codes of ``rows`` (positions, or a bool mask with one entry per row)."""
        return RowCodes(self.portfolio[rows], self.instrument[rows], self.portfolio_ids, self.instrument_ids)


@dataclass(frozen=True)
class Ledger:
    """The result of :func:`build_ledger`.

    lots: ``LOTS_SCHEMA``; every lot ever opened (OPEN and CLOSED), including wash-sale pieces;
        continued from a ``seed``, the seeded lots as they are now and the new lots.
    realized_pnl: ``REALIZED_PNL_SCHEMA``; one row per (closing trade, lot) match.
    accepted_trades: the input trades that were applied (input columns, input dtypes).
    rejected_trades: the input rows that were not applied, plus a ``reason`` String column.
    realized_codes: the portfolio and instrument of each realised row as integer codes.
    accepted_codes: the same of each accepted trade.
    lot_codes: the same of each lot.
    state: ``LEDGER_STATE_SCHEMA``; the OPEN lots with the replay's working fields (what a
        later build continues from).
    books: ``LEDGER_BOOKS_SCHEMA``; per book replayed, its last event (seeded events count as
        events).
    open_losses: ``LEDGER_OPEN_LOSSES_SCHEMA``; the loss rows a later BUY may still take (the
        given ``open_losses`` of the seeded portfolios as they are now, and the new ones).
    loss_updates: realised rows of an earlier build whose disallowed loss a new BUY raised
        (``portfolio_id, instrument_id, trade_id, lot_id, disallowed_loss, taxable_pnl``);
        empty unless ``open_losses`` were given.
    """

    lots: pl.DataFrame
    realized_pnl: pl.DataFrame
    accepted_trades: pl.DataFrame
    rejected_trades: pl.DataFrame
    realized_codes: RowCodes
    accepted_codes: RowCodes
    lot_codes: RowCodes
    state: pl.DataFrame
    books: pl.DataFrame
    open_losses: pl.DataFrame
    loss_updates: pl.DataFrame


_METHOD_CODE = {"FIFO": FIFO, "LIFO": LIFO, "HIFO": HIFO}


def build_ledger(
    trades: pl.DataFrame, portfolios: pl.DataFrame, *, executor: Executor | None = None, seed: pl.DataFrame | None = None,
    open_losses: pl.DataFrame | None = None,
) -> Ledger:
    """Build the lot ledger of ``trades``, or continue it from ``seed``.

    Inputs:
        trades: at least the ``LANDING_SCHEMAS["trades"]`` columns (``fees``, ``lot_id`` and
            ``strategy_id`` may be absent or null; null fees count as 0). Extra columns (e.g.
            ``source_file``, ``source_row``) are carried to accepted/rejected untouched.
        portfolios: ``portfolio_id``, ``tax_status`` (TAXABLE/EXEMPT), ``lot_method``
            (FIFO/LIFO/HIFO).
        executor: where part of the output frames is built while the caller's thread builds
            the lots (default: all on the caller's thread).
        seed: ``LEDGER_STATE_SCHEMA`` rows, the open lots of an earlier ledger (its ``state``)
            that ``trades`` continue; every trade of a seeded book must come after all the
            events of the ledger the seed came from, and trade ids must not repeat its ones
            (``transforms.ledger_state.continue_ledger`` checks this before calling). Then the
            outputs hold the seeded lots as they are now, the new lots, and the new realised
            rows, accepted and rejected trades.
        open_losses: with ``seed``, the earlier ledger's ``open_losses`` (at least those of
            the seeded portfolios): new BUYs within 30 days after such a sale take its loss
            shares as a replay of every trade would, and the rows they change are reported in
            ``loss_updates``.
    Output: a :class:`Ledger`. It does not depend on the input row order: lots and realised
    rows are ordered by portfolio, instrument, LONG before SHORT, then event order; accepted
    trades in event order per (portfolio, instrument, side of book); rejected trades by
    portfolio, instrument, time and trade_id.

    Rules:
        - Event order per (portfolio_id, instrument_id): ``trade_ts``, then opening sides (BUY,
          SELL_SHORT) before closing sides (SELL, BUY_TO_COVER) at the same timestamp, then
          ``trade_id``.
        - BUY opens a LONG lot, SELL_SHORT a SHORT lot; ``lot_id`` = the opening ``trade_id``.
          SELL closes LONG lots, BUY_TO_COVER SHORT lots; the two books are independent.
        - A close consumes the lot named by its ``lot_id`` first (all still-open pieces of that
          opening trade), then lots by the portfolio's method: FIFO oldest first, LIFO newest
          first, HIFO highest per-unit tax basis first (for SHORT lots: highest proceeds per
          unit); ties by open time, then lot id (event order), then wash-sale piece number.
          ``lot_id`` on an opening trade is ignored.
        - Rejected (with a reason; the book goes on as if the trade never existed): unknown
          portfolio; portfolio with an invalid tax_status/lot_method; null or duplicate
          trade_id (all copies); unknown side; null timestamp/instrument; non-positive or
          non-finite quantity; negative or non-finite price or fees; a named lot_id that is not
          an open lot of the same book at that time; a SELL (BUY_TO_COVER) of more than the
          open LONG (SHORT) quantity (relative tolerance 1e-9), never turned into the other side.
        - Basis: LONG lot cost_basis = qty*price + fees; SHORT lot cost_basis (proceeds
          received) = qty*price - fees. A SELL's proceeds = qty*price - fees pro-rata per lot;
          a BUY_TO_COVER's cost = qty*price + fees pro-rata. realized_pnl = proceeds -
          cost_basis. A partial close keeps the lot OPEN with the remaining quantity and
          pro-rata remaining cost_basis and wash_sale_adjustment; ``closed_ts`` is set when the
          quantity reaches 0 (a remainder <= 1e-9 * original quantity counts as 0).
        - Holding period: holding_days = close date - holding_start (UTC dates). term is LONG
          when close date > holding_start + 1 calendar year (Polars ``offset_by("1y")``; Feb 29
          + 1y = Feb 28), else SHORT: a lot bought 2023-01-10 is SHORT when sold on 2024-01-10
          and LONG on 2024-01-11.
        - Wash sales: see ``transforms.lot_kernel`` (TAXABLE portfolios, LONG lots only; short
          sales are not subject to wash-sale processing). taxable_pnl = realized_pnl -
          wash_sale_adjustment + disallowed_loss, with disallowed_loss >= 0.
    """
    n_seed = 0
    if seed is not None and seed.height:
        # the seeded lots lead the frame as opening "trades" of their open trade, in replay
        # order, so the strings of their output rows are gathered like any trade's
        seed = seed.sort("portfolio_id", "instrument_id", "position_type", "open_ts", "open_trade_id", "piece")
        n_seed = seed.height
        seeded = _seed_rows(seed, trades.schema)
        columns = [*trades.columns, *(c for c in seeded.columns if c not in trades.columns)]
        trades = pl.concat([seeded, trades], how="diagonal").select(columns)
    # one chunk: gathers by row index over a many-chunk frame (e.g. concatenated shards) cost
    # several times the copy, and the output is gathered from these columns
    orig = trades.with_row_index("_r").rechunk()
    checked, reasons, portfolio_ids = _validate(orig, portfolios, n_seed)
    ev = _events(checked, portfolio_ids, seed if n_seed else None)
    if open_losses is None:
        open_losses = pl.DataFrame(schema=LEDGER_OPEN_LOSSES_SCHEMA)
    losses, loss_rows = _loss_arrays(open_losses, ev)
    executor = executor or InPlace()
    return _assemble(orig, reasons, ev, _replay(ev, executor, losses), executor, open_losses, loss_rows)


def _seed_rows(seed: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """The seeded lots as opening trades (``trades``' column types): their open trade's id,
    time, price and strategy; quantity the lot's original quantity (any positive value would
    do: the kernel takes the lot from the seed)."""
    frame = seed.select(
        trade_id=pl.col("open_trade_id"),
        portfolio_id="portfolio_id",
        instrument_id="instrument_id",
        trade_ts=pl.col("open_ts"),
        side=pl.when(pl.col("position_type") == "LONG").then(pl.lit("BUY")).otherwise(pl.lit("SELL_SHORT")),
        quantity="original_quantity",
        price="open_price",
        fees=pl.lit(0.0),
        strategy_id="strategy_id",
    )
    return frame.cast({c: schema[c] for c in frame.columns if c in schema})


# --- preparation ------------------------------------------------------------------------------


def _validate(
    orig: pl.DataFrame, portfolios: pl.DataFrame, n_seed: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame, pl.Series]:
    """(typed working columns of the rows that may apply, ``_r, reason`` of those that never
    can, the sorted distinct portfolio ids ``_p`` codes into).

    The first ``n_seed`` rows are seeded lots (``build_ledger``): a lot and its pieces share
    their open trade's id, so they are not duplicates; a trade repeating one is.

    The valid rows carry the portfolio's code in name order (``_p``), its lot method code
    (``_mcode``) and ``_taxable``.
    """
    t = orig
    for col in ("fees", "lot_id", "strategy_id"):
        if col not in t.columns:
            t = t.with_columns(pl.lit(None, LANDING_SCHEMAS["trades"][col]).alias(col))
    t = t.select(
        "_r",
        *[
            pl.col(c).cast(d)
            for c, d in LANDING_SCHEMAS["trades"].items()
            if c not in ("settle_date", "strategy_id")
        ],
    )
    # each row's portfolio as its position among the sorted known ids (-1: unknown), through an
    # Enum rather than a join: the lot method and tax status are then read from the (small)
    # portfolio table by that code, and ``_events`` orders books by it (name order)
    pf = (
        portfolios.lazy()
        .select(pl.col("portfolio_id").cast(pl.String), "tax_status", "lot_method")
        .filter(pl.col("portfolio_id").is_not_null())
        .unique("portfolio_id", keep="first", maintain_order=True)
        .sort("portfolio_id")
        .collect()
    )
    pcode = codes(t.get_column("portfolio_id"), pf.get_column("portfolio_id"))
    method, tax = pf.get_column("lot_method"), pf.get_column("tax_status")

    def per_row(values: pl.Series, unknown) -> pl.Series:  # slot -1: a row of no known portfolio
        return pl.Series(np.append(values.to_numpy(), unknown)[pcode])

    t = t.with_columns(
        _p=pl.Series(pcode),
        _mcode=per_row(method.replace_strict(_METHOD_CODE, default=-1, return_dtype=pl.Int8), -1),
        _taxable=per_row((tax == "TAXABLE").fill_null(False), False),
        _pf_ok=per_row((method.is_in(LOT_METHODS) & tax.is_in(TAX_STATUSES)).fill_null(False), False),
    )

    # duplicate ids: a sort of 64-bit hashes finds candidates cheaply; strings decide
    h = np.sort(t.get_column("trade_id").slice(n_seed).hash().to_numpy())  # numpy's sort: a third of polars' here
    repeats = bool((h[1:] == h[:-1]).any())
    if n_seed:  # a trade repeating a seeded lot's open trade id
        repeats = repeats or bool(np.isin(h, t.get_column("trade_id").head(n_seed).hash().to_numpy()).any())
    dup = (pl.col("trade_id").is_duplicated() & (pl.col("_r") >= n_seed)) if repeats else pl.lit(False)

    def bad(cond: pl.Expr) -> pl.Expr:  # a null comparison counts as bad
        return cond.fill_null(True)

    # the first failing rule, as a small integer: the words are formatted afterwards for the
    # (few) bad rows only, since ``pl.format`` in a when/then chain runs over every row
    q, p, f = pl.col("quantity"), pl.col("price"), pl.col("fees").fill_null(0.0)
    rules = [
        (pl.col("trade_id").is_null(), pl.lit("trade_id is null")),
        (dup, pl.format("duplicate trade_id {}", "trade_id")),
        (pl.col("_p") < 0, pl.format("unknown portfolio_id {}", "portfolio_id")),
        (~pl.col("_pf_ok"), pl.format("portfolio {} has an invalid tax_status or lot_method", "portfolio_id")),
        (pl.col("instrument_id").is_null(), pl.lit("instrument_id is null")),
        (bad(~pl.col("side").is_in(TRADE_SIDES)), pl.format("invalid side {}", "side")),
        (pl.col("trade_ts").is_null(), pl.lit("trade_ts is null")),
        (bad(~((q > 0) & q.is_finite())), pl.lit("quantity must be positive and finite")),
        (bad(~((p >= 0) & p.is_finite())), pl.lit("price must be non-negative and finite")),
        (bad(~((f >= 0) & f.is_finite())), pl.lit("fees must be non-negative and finite")),
    ]
    code = pl.when(rules[0][0]).then(pl.lit(1, pl.Int8))
    for i, (cond, _) in enumerate(rules[1:], start=2):
        code = code.when(cond).then(pl.lit(i, pl.Int8))
    t = t.with_columns(_code=code.otherwise(pl.lit(0, pl.Int8)))
    portfolio_ids = pf.get_column("portfolio_id")
    if n_seed and (t.get_column("_code").head(n_seed) > 0).any():
        bad = t.head(n_seed).filter(pl.col("_code") > 0).row(0, named=True)
        raise ValueError(f"seeded lot of open trade {bad['trade_id']} (portfolio {bad['portfolio_id']}) is not valid: "
                         "its portfolio is unknown or no longer valid, or the seed was edited; rebuild the ledger in full")
    if t.get_column("_code").sum() == 0:
        return t, pl.DataFrame(schema={"_r": pl.UInt32, "reason": pl.String}), portfolio_ids
    bad_rows = t.filter(pl.col("_code") > 0)
    words = pl.when(pl.col("_code") == 1).then(rules[0][1])
    for i, (_, what) in enumerate(rules[1:], start=2):
        words = words.when(pl.col("_code") == i).then(what)
    reasons = bad_rows.select(pl.col("_r"), reason=words)
    return t.filter(pl.col("_code") == 0), reasons, portfolio_ids


def _name_codes(s: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Integer codes of a (null-free) String column in name order, and the sorted names.

    An Enum of the sorted distinct names maps each name to its rank without a string sort or
    join over every row."""
    names = s.unique().sort()
    return s.cast(pl.Enum(names)).to_physical().to_numpy().astype(np.int64), names


@dataclass(frozen=True)
class _Events:
    """Valid trades in event order, as the numpy columns the replay kernel reads.

    ``row``: input row (``_r``); ``bk``: book key, numbered in (portfolio_id, instrument_id,
    LONG before SHORT) order (``pair index * 2 + is_short``), so books are contiguous and
    ascend; ``ts`` (µs) and ``day`` (UTC day number); ``method`` the portfolio's lot method
    code; ``wash``: TAXABLE and LONG; ``named``: for a close naming a ``lot_id``, the event
    position of that opening trade (-1 when it is not an opening trade of the book), else
    ``NO_LOT``; ``pair``: portfolio code * number of instruments + instrument code, codes into
    ``portfolio_ids`` and ``instrument_ids`` (see ``codes``); ``seed``: the kernel's seed
    arrays (``replay_books``), None when nothing is seeded.
    """

    row: np.ndarray
    bk: np.ndarray
    is_open: np.ndarray
    is_long: np.ndarray
    qty: np.ndarray
    price: np.ndarray
    fees: np.ndarray
    ts: np.ndarray
    day: np.ndarray
    method: np.ndarray
    wash: np.ndarray
    named: np.ndarray
    pair: np.ndarray
    portfolio_ids: pl.Series
    instrument_ids: pl.Series
    seed: tuple | None = None

    @property
    def is_seed(self) -> np.ndarray:
        """Per event: a seeded lot, not a trade."""
        return self.seed[0] if self.seed is not None else np.zeros(self.bk.size, np.bool_)

    def codes(self, events: np.ndarray) -> RowCodes:
        """The portfolio and instrument codes of the events at positions ``events``."""
        n_i = max(self.instrument_ids.len(), 1)
        pair = self.pair[events]
        return RowCodes(pair // n_i, pair % n_i, self.portfolio_ids, self.instrument_ids)


_US_PER_DAY = 86_400_000_000


def _events(t: pl.DataFrame, portfolio_ids: pl.Series, seed: pl.DataFrame | None = None) -> _Events:
    """The valid trades ``t`` (from ``_validate``, portfolios coded into ``portfolio_ids``) in
    event order; strings stay in the input, found by ``row``. With a ``seed`` (sorted in
    replay order), ``t``'s first ``seed.height`` rows are its lots, which lead their books in
    that order."""
    n = t.height
    n_seed = seed.height if seed is not None else 0
    side = t.get_column("side")
    is_long = ((side == "BUY") | (side == "SELL")).to_numpy()
    is_open = ((side == "BUY") | (side == "SELL_SHORT")).to_numpy()
    pc = t.get_column("_p").to_numpy()  # name order (``_validate``)
    ic, instrument_ids = _name_codes(t.get_column("instrument_id"))
    n_i = instrument_ids.len()
    pair = pc * n_i + ic
    ts = t.get_column("trade_ts").to_physical().to_numpy()
    # one integer sort key (pair, side of book, time, closes after opens) when it fits in 63
    # bits, exact ties (rare) ordered by trade_id; else a sort on the columns. Trades usually
    # arrive in time order: then the time is its rank among the distinct times (a running
    # count), which keeps the key of a large book (years in microseconds, many pairs) packed.
    # Seeded lots come first in their book, in their (replay) order: keys 0..n_seed-1
    tt, t_open = ts[n_seed:], is_open[n_seed:]
    if tt.size and bool((tt[1:] >= tt[:-1]).all()):
        tk = np.cumsum(np.append(0, tt[1:] != tt[:-1])) * 2 + ~t_open
    else:
        tk = time_offsets(tt) * 2 + ~t_open if tt.size else tt
    if n_seed:
        tk = np.concatenate([np.arange(n_seed), tk + n_seed])
    book = pair * 2 + ~is_long
    span = int(tk.max()) + 1 if n else 1
    if n and (int(book.max()) + 1) < (2**62) // span:
        order = order_by_key_then(book * span + tk, t.get_column("trade_id"))
    else:
        order = (
            pl.DataFrame({"b": book, "k": tk, "id": t.get_column("trade_id")})
            .select(pl.arg_sort_by("b", "k", "id"))
            .to_series()
            .to_numpy()
        )
    o_pair, o_long, o_open = pair[order], is_long[order], is_open[order]
    new_pair = np.ones(n, bool)
    new_pair[1:] = o_pair[1:] != o_pair[:-1]
    bk = (np.cumsum(new_pair) - 1) * 2 + ~o_long
    o_ts = ts[order]

    # named lots: resolve the few named closes against the opening trades by trade_id
    # (string columns are tested and gathered in input order: no gather of every string)
    named = np.full(n, NO_LOT, np.int64)
    lot_id = t.get_column("lot_id")
    named_pos = np.flatnonzero(~o_open & lot_id.is_not_null().to_numpy()[order])
    if named_pos.size:
        trade_id = t.get_column("trade_id")
        wanted = lot_id.gather(order[named_pos])
        in_wanted = trade_id.is_in(wanted.unique().implode()).to_numpy()[order]
        open_pos = np.flatnonzero(o_open & in_wanted)
        opens = pl.DataFrame(
            {"lot_id": trade_id.gather(order[open_pos]), "_nseq": open_pos,
             "_nbk": bk[open_pos]}
        ).unique("lot_id", keep="first", maintain_order=True)  # a seeded lot's pieces: its first event
        resolved = (
            pl.DataFrame({"lot_id": wanted, "seq": named_pos, "_bk": bk[named_pos]})
            .join(opens, on="lot_id", how="left", maintain_order="left")
            .select(
                pl.col("seq").cast(pl.Int64),
                _named=pl.when(pl.col("_nbk") == pl.col("_bk"))
                .then(pl.col("_nseq"))
                .otherwise(-1)
                .cast(pl.Int64),
            )
        )
        named[resolved.get_column("seq").to_numpy()] = resolved.get_column("_named").to_numpy()

    def column(name: str, dtype) -> np.ndarray:
        return t.get_column(name).to_numpy().astype(dtype, copy=False)[order]

    row = column("_r", np.int64)

    return _Events(
        row=row,
        bk=bk.astype(np.int64),
        is_open=o_open,
        is_long=o_long,
        qty=column("quantity", np.float64),
        price=column("price", np.float64),
        fees=t.get_column("fees").fill_null(0.0).to_numpy().astype(np.float64, copy=False)[order],
        ts=o_ts,
        day=o_ts // _US_PER_DAY,  # floor: the UTC date of a timestamp before 1970 too
        method=column("_mcode", np.int8),
        wash=column("_taxable", np.bool_) & o_long,
        named=named,
        pair=o_pair,
        portfolio_ids=portfolio_ids,
        instrument_ids=instrument_ids,
        seed=_seed_arrays(seed, row) if n_seed else None,
    )


def _seed_arrays(seed: pl.DataFrame, row: np.ndarray) -> tuple:
    """The kernel's ``(is_seed, seed_f, seed_i)`` per event from the ``seed`` lots, which are
    input rows ``0..seed.height-1`` (``row``: each event's input row, every seeded row among
    them)."""
    n_seed, n = seed.height, row.size
    is_seed = row < n_seed
    at = row[is_seed]  # the seed row of each seeded event, in event order
    event_of = np.empty(n_seed, np.int64)
    event_of[at] = np.flatnonzero(is_seed)
    # a lot's pieces refer to the first seeded lot of their open trade (rows sorted by it)
    first_row = seed.with_row_index("_i").select(pl.col("_i").min().over("open_trade_id")).to_series().to_numpy()
    seed_f = np.zeros((5, n), np.float64)
    for k, c in enumerate(("original_quantity", "quantity", "cost_basis", "wash_sale_adjustment", "unit_tax_basis")):
        seed_f[k, is_seed] = seed.get_column(c).to_numpy()[at]
    seed_i = np.zeros((5, n), np.int64)
    seed_i[0, is_seed] = seed.get_column("piece").to_numpy()[at]
    seed_i[1, is_seed] = seed.get_column("holding_start").to_physical().to_numpy()[at]
    seed_i[2, is_seed] = seed.get_column("pieces").to_numpy()[at]
    seed_i[3, is_seed] = seed.get_column("absorbed_loss").to_numpy()[at]
    seed_i[4, is_seed] = event_of[first_row[at]]
    return is_seed, seed_f, seed_i


def _book_starts(ev: _Events) -> np.ndarray:
    """The event position of each book's first event."""
    n = ev.bk.size
    return np.flatnonzero(np.append(True, ev.bk[1:] != ev.bk[:-1])) if n else np.empty(0, np.int64)


def _loss_arrays(open_losses: pl.DataFrame, ev: _Events) -> tuple[tuple, np.ndarray]:
    """The kernel's ``open_losses`` (``replay_books``) for the rows whose LONG book has events
    in ``ev``, ordered by book, sale (time, trade id) and loss shares before; and their row
    positions in ``open_losses``. Rows of other books are left as they are."""
    starts = _book_starts(ev)
    starts = starts[ev.is_long[starts]]
    codes = ev.codes(starts)
    books = pl.DataFrame({
        "portfolio_id": codes.portfolio_ids.gather(pl.Series(codes.portfolio)),
        "instrument_id": codes.instrument_ids.gather(pl.Series(codes.instrument)),
        "_book": starts.astype(np.int64),
    })
    rows = (
        open_losses.with_row_index("_o")
        .join(books, on=["portfolio_id", "instrument_id"])
        .sort("_book", "close_ts", "trade_id", "loss_shares_before")
    )
    sale_key = [pl.col("_book"), pl.col("close_ts"), pl.col("trade_id")]
    sale = rows.select(
        pl.any_horizontal([(c != c.shift()).fill_null(True) for c in sale_key]).cum_sum().cast(pl.Int64)
    ).to_series().to_numpy()
    ts = rows.get_column("close_ts").to_physical().to_numpy()
    loss_f = np.vstack([  # ``lot_kernel._P_*`` order
        rows.get_column(c).to_numpy().astype(np.float64)
        for c in ("quantity", "realized_pnl", "wash_sale_adjustment", "loss_shares_before",
                  "replacement_shares_paired", "disallowed_loss")
    ]) if rows.height else np.zeros((6, 0), np.float64)
    arrays = (
        rows.get_column("_book").to_numpy(), sale, ts // _US_PER_DAY,
        rows.get_column("holding_start").to_physical().to_numpy().astype(np.int64), np.ascontiguousarray(loss_f),
    )
    return arrays, rows.get_column("_o").to_numpy().astype(np.int64)


SPLIT_EVENTS = 20_000  # fewer events than this are replayed in one piece
REPLAY_PARTS = 8  # parts of a larger replay, shared by the two threads as each gets free


def _replay(ev: _Events, executor: Executor, losses: tuple) -> tuple:
    """``replay_books`` over the events, in parts cut at book boundaries when an executor other
    than ``InPlace`` can help (books are independent; the kernel releases the GIL).

    This thread and one task on ``executor`` take the next part as each gets free
    (``transforms.shards.run_shared``), so the replay finishes together on both however the
    parts' costs differ and whenever the other thread joins (in ``build_book`` it is still
    building the cash ledger when the replay starts; with two fixed halves this thread waited
    for it about 8 ms of a 100 ms build).
    The parts' outputs are concatenated in book order, their event positions and lot positions
    shifted to the whole, so the result is the one-piece replay's."""
    cols = (ev.bk, ev.is_open, ev.is_long, ev.qty, ev.price, ev.fees, ev.ts, ev.day, ev.method, ev.wash)
    n = ev.bk.size
    book_starts = np.flatnonzero(ev.bk[1:] != ev.bk[:-1]) + 1 if n >= SPLIT_EVENTS else np.empty(0, np.int64)
    if isinstance(executor, InPlace) or book_starts.size == 0:
        return replay_books(*cols, ev.named, ev.seed, losses)
    # the book start nearest after each k/REPLAY_PARTS of the events
    targets = np.arange(1, REPLAY_PARTS) * n // REPLAY_PARTS
    cuts = np.unique(book_starts[np.minimum(np.searchsorted(book_starts, targets), book_starts.size - 1)])
    bounds = [0, *cuts.tolist(), n]
    parts = list(zip(bounds[:-1], bounds[1:]))

    def replay_part(a: int, b: int) -> tuple:
        named = ev.named[a:b]
        seed = None
        if ev.seed is not None:  # event positions shift to the part's
            is_seed, seed_f, seed_i = ev.seed
            seed_i = seed_i[:, a:b].copy()
            seed_i[4] -= a
            seed = (is_seed[a:b], seed_f[:, a:b], seed_i)
        book, sale, day, hstart, loss_f = losses
        la, lb = np.searchsorted(book, [a, b])
        part_losses = (book[la:lb] - a, sale[la:lb], day[la:lb], hstart[la:lb], loss_f[:, la:lb].copy())
        return replay_books(*(c[a:b] for c in cols), np.where(named >= 0, named - a, named), seed, part_losses)

    results = run_shared([partial(replay_part, a, b) for a, b in parts], executor)
    lots_before = np.cumsum([0] + [r[0].shape[1] for r in results[:-1]])
    lot_i, real_i, rej_seq = [], [], []
    for (a, _), before, r in zip(parts, lots_before, results):
        li, ri = r[1].copy(), r[3].copy()
        li[0] += a  # opening event
        ri[0] += a  # closing event
        ri[1] += before  # lot output position
        lot_i.append(li)
        real_i.append(ri)
        rej_seq.append(r[4] + a)
    return (
        np.concatenate([r[0] for r in results], axis=1),
        np.concatenate(lot_i, axis=1),
        np.concatenate([r[2] for r in results], axis=1),
        np.concatenate(real_i, axis=1),
        np.concatenate(rej_seq),
        np.concatenate([r[5] for r in results]),
        np.concatenate([r[6] for r in results]),
        np.concatenate([r[7] for r in results], axis=1),
    )


# --- output -----------------------------------------------------------------------------------

def _long_term(hstart: np.ndarray, close_day: np.ndarray) -> np.ndarray:
    """``close date > holding_start.offset_by("1y")`` per realised row (day numbers in).

    Holding starts span a few thousand days, so the calendar offset is computed once per day
    of that range (Polars ``offset_by``: Feb 29 + 1y = Feb 28) and looked up by day number,
    rather than once per row."""
    if hstart.size == 0:
        return np.zeros(0, np.bool_)
    lo, hi = int(hstart.min()), int(hstart.max())
    table = (
        pl.int_range(lo, hi + 1, dtype=pl.Int32, eager=True)
        .cast(pl.Date)
        .dt.offset_by("1y")
        .to_physical()
        .to_numpy()
    )
    return close_day > table[hstart - lo]


def _dates(days: np.ndarray) -> pl.Series:
    return pl.Series(days.astype(np.int32)).cast(pl.Date)


def _times(us: np.ndarray) -> pl.Series:
    return pl.Series(us).cast(TS)


def _sides(is_long: np.ndarray) -> pl.Series:
    """"LONG" / "SHORT" per row (a categorical gather: no per-row string building)."""
    return pl.Series(["SHORT", "LONG"]).gather(pl.Series(is_long.astype(np.uint8)))


def _assemble(
    orig: pl.DataFrame, reasons: pl.DataFrame, ev: _Events, out: tuple, executor: Executor,
    open_losses: pl.DataFrame, loss_rows: np.ndarray,
) -> Ledger:
    """Contract-typed, deterministically ordered output frames from the kernel's arrays.

    Strings are gathered once per output column from the input (``orig``, one chunk) by input
    row: event position -> ``ev.row`` -> input row. With an ``executor``, the accepted /
    rejected trades are built on it while this thread makes the lot ids; then both threads
    build the columns of the lots and realised rows, each taking the next column as it gets
    free (``transforms.shards.run_shared``: a fixed split left this thread waiting about 7 ms
    of a 110 ms demo build)."""
    lot_f, lot_i, real_f, real_i, rej_seq, rej_code, rej_avail, loss_out = out
    # the accepted / rejected trades need nothing of the lots: started first
    rejected = executor.submit(_accepted_and_rejected, orig, reasons, ev, rej_seq, rej_code, rej_avail)
    trade_id = orig.get_column("trade_id").cast(pl.String)
    pid = orig.get_column("portfolio_id").cast(pl.String)
    iid = orig.get_column("instrument_id").cast(pl.String)
    strategy = (
        orig.get_column("strategy_id").cast(pl.String)
        if "strategy_id" in orig.columns
        else pl.Series([None] * orig.height, dtype=pl.String)
    )

    # lots: already in (book, event, piece) order
    oseq = lot_i[0]
    split = lot_i[1]
    r_open = pl.Series(ev.row[oseq])
    open_id = trade_id.gather(r_open)
    if split.any():  # wash-sale pieces are "<lot_id>~W<n>"
        # pieces are common in taxable books, and piece numbers few: one suffix string per
        # number, gathered and appended (a Series sum: 40% less than ``concat_str``), is
        # about a third of the cost of formatting one per row
        suffixes = pl.Series([""] + [f"~W{k}" for k in range(1, int(split.max()) + 1)])
        lot_id = open_id + suffixes.gather(pl.Series(split))
    else:
        lot_id = open_id
    cost, wadj, rem = lot_f[2], lot_f[3], lot_f[1]
    lots = {
        "portfolio_id": lambda: pid.gather(r_open),
        "instrument_id": lambda: iid.gather(r_open),
        "lot_id": lambda: lot_id,
        "position_type": lambda: _sides(ev.is_long[oseq]),
        "strategy_id": lambda: strategy.gather(r_open),
        "open_trade_id": lambda: open_id,
        "open_ts": lambda: _times(ev.ts[oseq]),
        "open_price": lambda: ev.price[oseq],
        "original_quantity": lambda: lot_f[0],
        "quantity": lambda: rem,
        "cost_basis": lambda: cost,
        "wash_sale_adjustment": lambda: wadj,
        "tax_basis": lambda: cost + wadj,
        "holding_start": lambda: _dates(lot_i[2]),
        "status": lambda: pl.Series(["CLOSED", "OPEN"]).gather(pl.Series((rem > 0).astype(np.uint8))),
        "closed_ts": lambda: _times(lot_i[4]).set(pl.Series(~lot_i[3].astype(np.bool_)), None),
    }
    realized = _realized_columns(real_f, real_i, ev, pid, iid, trade_id, lot_id)
    # the realised rows' columns first: more rows, and the string gathers lead each frame
    tasks = [*realized.values(), *lots.values(), partial(ev.codes, real_i[0]), partial(ev.codes, oseq)]
    built = run_shared(tasks, executor)
    realized_pnl = pl.DataFrame(dict(zip(realized, built)), schema=REALIZED_PNL_SCHEMA)
    lots_frame = pl.DataFrame(dict(zip(lots, built[len(realized):])), schema=LOTS_SCHEMA)
    accepted, rejected, accepted_codes = rejected.result()
    return Ledger(
        lots=lots_frame, realized_pnl=realized_pnl, accepted_trades=accepted, rejected_trades=rejected,
        realized_codes=built[-2], accepted_codes=accepted_codes, lot_codes=built[-1],
        state=_open_state(lots_frame, lot_f, lot_i), books=_books(ev),
        **_losses(ev, realized_pnl, real_f, open_losses, loss_rows, loss_out),
    )


def _open_state(lots: pl.DataFrame, lot_f: np.ndarray, lot_i: np.ndarray) -> pl.DataFrame:
    """``LEDGER_STATE_SCHEMA``: the OPEN lots with the kernel's working fields."""
    at = np.flatnonzero(lot_f[1] > 0)
    return (
        lots[pl.Series(at)]
        .with_columns(
            piece=pl.Series(lot_i[1][at], dtype=pl.Int32),
            unit_tax_basis=pl.Series(lot_f[4][at]),
            pieces=pl.Series(lot_i[5][at], dtype=pl.Int32),
            absorbed_loss=pl.Series(lot_i[6][at].astype(np.bool_)),
        )
        .select(list(LEDGER_STATE_SCHEMA))
    )


def _books(ev: _Events) -> pl.DataFrame:
    """``LEDGER_BOOKS_SCHEMA``: per book, the time of its last event."""
    starts = _book_starts(ev)
    codes = ev.codes(starts)
    return pl.DataFrame(
        {
            "portfolio_id": codes.portfolio_ids.gather(pl.Series(codes.portfolio)),
            "instrument_id": codes.instrument_ids.gather(pl.Series(codes.instrument)),
            "position_type": _sides(ev.is_long[starts]),
            "last_event_ts": _times(np.maximum.reduceat(ev.ts, starts) if starts.size else ev.ts),
        },
        schema=LEDGER_BOOKS_SCHEMA,
    )


def _losses(
    ev: _Events, realized: pl.DataFrame, real_f: np.ndarray, earlier: pl.DataFrame, loss_rows: np.ndarray,
    loss_out: np.ndarray,
) -> dict[str, pl.DataFrame]:
    """The ``open_losses`` and ``loss_updates`` of a ledger (``Ledger``).

    Open: a loss row whose sale's loss shares reach past the replacement shares it was paired
    with (``loss_shares_before + quantity > replacement_shares_paired``), and whose sale is no
    more than 30 days before the last new event of its book: a later BUY comes after that
    event, so an older sale's window is over. A book with no new event (only seeded lots, or
    none) keeps its rows as they were: their window is judged by the same last event as
    before."""
    before, paired = real_f[6], real_f[7]
    new_at = np.flatnonzero(~np.isnan(before) & (before + real_f[0] > paired))
    new = realized[pl.Series(new_at)].select(list(LEDGER_OPEN_LOSSES_SCHEMA)[:-2]).with_columns(
        loss_shares_before=pl.Series(before[new_at]), replacement_shares_paired=pl.Series(paired[new_at])
    )
    dis = earlier.get_column("disallowed_loss").to_numpy().copy()
    paired_then = earlier.get_column("replacement_shares_paired").to_numpy().copy()
    dis[loss_rows], paired_then[loss_rows] = loss_out[0], loss_out[1]
    changed = np.flatnonzero(dis != earlier.get_column("disallowed_loss").to_numpy())
    updated = earlier.with_columns(
        disallowed_loss=pl.Series(dis, dtype=pl.Float64), replacement_shares_paired=pl.Series(paired_then, dtype=pl.Float64)
    )
    loss_updates = updated[pl.Series(changed, dtype=pl.Int64)].select(
        "portfolio_id", "instrument_id", "trade_id", "lot_id", "disallowed_loss",
        taxable_pnl=pl.col("realized_pnl") - pl.col("wash_sale_adjustment") + pl.col("disallowed_loss"),
    )
    # the last new (not seeded) event day of each LONG book
    starts = _book_starts(ev)
    last_day = np.maximum.reduceat(np.where(ev.is_seed, np.iinfo(np.int64).min, ev.day), starts) if starts.size else starts
    long = ev.is_long[starts] & (last_day > np.iinfo(np.int64).min)
    codes = ev.codes(starts[long])
    last = pl.DataFrame({
        "portfolio_id": codes.portfolio_ids.gather(pl.Series(codes.portfolio)),
        "instrument_id": codes.instrument_ids.gather(pl.Series(codes.instrument)),
        "_last": _dates(last_day[long]),
    })
    open_losses = (
        pl.concat([updated, new.cast(LEDGER_OPEN_LOSSES_SCHEMA)])
        .filter(pl.col("loss_shares_before") + pl.col("quantity") > pl.col("replacement_shares_paired"))
        .join(last, on=["portfolio_id", "instrument_id"], how="left", maintain_order="left")
        .filter(
            pl.col("_last").is_null()
            | (pl.col("close_ts").dt.date() >= pl.col("_last") - pl.duration(days=WASH_WINDOW_DAYS))
        )
        .drop("_last")
    )
    return {"open_losses": open_losses, "loss_updates": loss_updates}


def _realized_columns(
    real_f: np.ndarray, real_i: np.ndarray, ev: _Events, pid: pl.Series, iid: pl.Series, trade_id: pl.Series,
    lot_id: pl.Series,
) -> dict:
    """How to build each ``REALIZED_PNL_SCHEMA`` column (a callable per column, in schema
    order) from the kernel's arrays, rows in (close event, allocation) order."""
    cseq = real_i[0]
    r_close = pl.Series(ev.row[cseq])
    hstart = real_i[2]
    c_day = ev.day[cseq]
    realized, wadj_rel, dis = real_f[3], real_f[4], real_f[5]
    return {
        "portfolio_id": lambda: pid.gather(r_close),
        "instrument_id": lambda: iid.gather(r_close),
        "trade_id": lambda: trade_id.gather(r_close),
        "lot_id": lambda: lot_id.gather(pl.Series(real_i[1])),
        "position_type": lambda: _sides(ev.is_long[cseq]),
        "close_ts": lambda: _times(ev.ts[cseq]),
        "quantity": lambda: real_f[0],
        "proceeds": lambda: real_f[1],
        "cost_basis": lambda: real_f[2],
        "realized_pnl": lambda: realized,
        "wash_sale_adjustment": lambda: wadj_rel,
        "disallowed_loss": lambda: dis,
        "taxable_pnl": lambda: realized - wadj_rel + dis,
        "holding_start": lambda: _dates(hstart),
        "holding_days": lambda: c_day - hstart,
        "term": lambda: pl.Series(["SHORT", "LONG"]).gather(pl.Series(_long_term(hstart, c_day).astype(np.uint8))),
    }


def _accepted_and_rejected(
    orig: pl.DataFrame, reasons: pl.DataFrame, ev: _Events, rej_seq: np.ndarray, rej_code: np.ndarray,
    rej_avail: np.ndarray,
) -> tuple[pl.DataFrame, pl.DataFrame, RowCodes]:
    """(accepted trades in event order, rejected trades with their ``reason``, the accepted
    trades' codes)."""
    n_rej = rej_seq.size
    # ledger rejections get their words here, from the few rejected rows only
    rej_r = pl.Series("_r", ev.row[rej_seq], dtype=pl.UInt32)
    book = pl.when(pl.col("is_long")).then(pl.lit("LONG")).otherwise(pl.lit("SHORT"))
    ledger_reasons = pl.DataFrame(
        {
            "_r": rej_r,
            "side": orig.get_column("side").cast(pl.String).gather(rej_r),
            "quantity": orig.get_column("quantity").cast(pl.Float64).gather(rej_r),
            "lot_id": orig.get_column("lot_id").cast(pl.String).gather(rej_r)
            if "lot_id" in orig.columns
            else pl.Series([None] * n_rej, dtype=pl.String),
            "is_long": ev.is_long[rej_seq],
            "_code": rej_code,
            "_avail": rej_avail,
        }
    ).select(
        "_r",
        reason=pl.when(pl.col("_code") == 1)
        .then(
            pl.format(
                "lot_id {} is not an open {} lot of this portfolio and instrument at "
                "the trade time",
                "lot_id",
                book,
            )
        )
        .otherwise(
            pl.format(
                "{} of {} exceeds open {} quantity {}",
                "side",
                "quantity",
                book,
                pl.col("_avail").round(9),
            )
        ),
    )
    # accepted: the input rows in event order (a plain gather of the one-chunk input)
    acc_seq = np.delete(np.arange(ev.row.size), rej_seq) if n_rej else np.arange(ev.row.size)
    if ev.seed is not None:  # seeded lots are not trades
        acc_seq = acc_seq[~ev.is_seed[acc_seq]]
    accepted = orig.drop("_r")[pl.Series(ev.row[acc_seq])]

    reasons = pl.concat([reasons.with_columns(pl.col("_r").cast(pl.UInt32)), ledger_reasons])
    rejected = (
        orig[reasons.get_column("_r")]
        .with_columns(reason=reasons.get_column("reason"))
        .sort(
            "portfolio_id",
            "instrument_id",
            "trade_ts",
            "trade_id",
            "_r",
            nulls_last=True,
        )
        .drop("_r")
    )
    return accepted, rejected, ev.codes(acc_seq)
