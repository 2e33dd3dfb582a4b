"""Closes prepared once per book: the business calendar and dense forward-filled closes.

Rules (shared by ``transforms.positions`` and ``transforms.valuations``):

- a close counts when its instrument, date and close are non-null and the close is finite; of
  two closes of one instrument on one date the later row wins;
- business days are the distinct dates of those closes;
- the close of an instrument on business day ``d`` is its latest close on or before ``d``
  (forward fill), with the date it was quoted; before its first close there is none.

``PriceTable`` holds this as two dense ``instrument x business day`` matrices (the forward-filled
close and the index of the day it was quoted), built once per book and shared by every shard of
portfolios: the prices of a book are the same for all of its portfolios, so building them per
shard repeated the largest part of the work. Like ``transforms.fx.UsdTable``, pass a table where
a prices frame is accepted and it is used as is.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from transforms.price_kernel import forward_filled_closes

PRICE_COLUMNS = {"instrument_id": pl.String, "date": pl.Date, "close": pl.Float64}


_PER_DAY = {"us": 86_400_000_000, "ns": 86_400_000_000_000, "ms": 86_400_000}


def day_numbers(dates: pl.Series) -> np.ndarray:
    """Days since 1970 (int64) of a non-null Date (or Datetime: its calendar day) series."""
    dtype = dates.dtype
    if isinstance(dtype, pl.Datetime) and dtype.time_zone in (None, "UTC") and not dates.null_count():
        # the calendar day of a UTC (or naive) instant is the floor of its epoch time in days:
        # a tenth of the cost of a cast to Date
        return dates.to_physical().to_numpy() // _PER_DAY[dtype.time_unit]
    return dates.cast(pl.Date).to_physical().cast(pl.Int64).to_numpy()


def codes(values: pl.Series, categories: pl.Series) -> np.ndarray:
    """Position (int64) of each value in the unique ``categories`` (e.g. sorted ids); -1 when
    null or absent."""
    if categories.len() == 0:
        return np.full(values.len(), -1, dtype=np.int64)
    # an Enum's physical code is the category's position; absent values cast to null
    code = values.cast(pl.String).cast(pl.Enum(categories), strict=False).to_physical()
    out = code.to_numpy()
    if code.null_count():
        out = np.where(np.isnan(out), -1, out)  # nulls come out of numpy as NaN
    return out.astype(np.int64)


def run_codes(values: pl.Series, categories: pl.Series) -> np.ndarray:
    """``codes(values, categories)``, looked up once per run of equal adjacent values.

    Ledger outputs come grouped by portfolio and instrument, so their ids form long runs and the
    look-up (a hash per string) runs over the runs only; any order gives the same answer."""
    if values.len() == 0:
        return np.empty(0, dtype=np.int64)
    run = values.rle_id().to_numpy()
    starts = np.flatnonzero(np.append(True, run[1:] != run[:-1]))
    return codes(values.gather(starts), categories)[run]


def _distinct_sorted(numbers: np.ndarray) -> np.ndarray:
    """The distinct values of ``numbers`` (int64, e.g. day numbers), ascending.

    Dates of a price history repeat once per instrument over a range of a few thousand days,
    so marking each day of the range is one pass (a third of a sort); a sparse range sorts."""
    if numbers.size == 0:
        return numbers
    lo = int(numbers.min())
    span = int(numbers.max()) - lo + 1
    if span > 4 * numbers.size + 1024:
        return np.unique(numbers)
    seen = np.zeros(span, dtype=np.bool_)
    seen[numbers - lo] = True
    return np.flatnonzero(seen) + lo


class Calendar:
    """Business days, and the index of the first business day on or after any date.

    The dates looked up (trades, ledger, settlement) fall in a range of a few hundred calendar
    days, so each calendar day of the business range is resolved once and rows are one gather.
    """

    def __init__(self, days: pl.Series) -> None:
        """``days``: sorted, distinct, non-empty Date series."""
        self.days = days
        self.n = days.len()
        num = day_numbers(days)
        self.numbers = num
        self.lo = int(num[0])
        span = np.arange(self.lo, int(num[-1]) + 1, dtype=np.int64)
        # slot 0: before the first day (index 0); last slot: after the last day (index n)
        self.table = np.concatenate([[0], np.searchsorted(num, span, side="left"), [self.n]]).astype(np.int64)

    def index(self, day_numbers: np.ndarray) -> np.ndarray:
        """Index of the first business day on or after each day number (n when after the last)."""
        return self.table[np.clip(day_numbers - self.lo, -1, self.table.size - 2) + 1]


def clean_prices(prices: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """The closes that count (module rules), typed as ``PRICE_COLUMNS``, in input order."""
    return (
        prices.lazy()
        .select([pl.col(c).cast(t) for c, t in PRICE_COLUMNS.items()])
        .filter(
            pl.col("instrument_id").is_not_null()
            & pl.col("date").is_not_null()
            & pl.col("close").is_not_null()
            & pl.col("close").is_finite()
        )
        .collect()
    )


class PriceTable:
    """Forward-filled closes of every instrument on every business day.

    Attributes: ``days`` (sorted Date series), ``calendar`` (a ``Calendar`` over them; None when
    there are no closes), ``instruments`` (sorted String series: row ``k`` of the matrices),
    ``close`` (float64 ``(instruments, days)``: the close in force, NaN before the first one) and
    ``quoted`` (int64, same shape: index of the day that close was quoted, -1 when none).
    """

    def __init__(self, prices: pl.DataFrame | pl.LazyFrame) -> None:
        """Build the table from a ``prices`` frame (landing columns; extra columns ignored)."""
        px = clean_prices(prices)
        number = day_numbers(px["date"])
        days = pl.Series("date", _distinct_sorted(number).astype(np.int32)).cast(pl.Date)
        instruments = px["instrument_id"].unique().sort()
        n_i, n_days = instruments.len(), days.len()
        calendar = Calendar(days) if n_days else None
        if calendar is None:  # no closes: no cells
            close, quoted = np.full((n_i, 0), np.nan), np.empty((n_i, 0), dtype=np.int64)
        else:
            # rows keep their order, so a duplicated (instrument, date) keeps the later close
            close, quoted = forward_filled_closes(
                codes(px["instrument_id"], instruments), calendar.index(number), px["close"].to_numpy(), n_i, n_days,
            )
        self._set(days, calendar, instruments, close, quoted)

    def _set(self, days: pl.Series, calendar: Calendar | None, instruments: pl.Series, close: np.ndarray,
             quoted: np.ndarray) -> None:
        self.days, self.calendar, self.instruments = days, calendar, instruments
        self.close, self.quoted = close, quoted

    @property
    def last_day(self) -> date | None:
        """The last business day (None without closes)."""
        return self.days[-1] if self.days.len() else None

    def day_index(self, day: date) -> int:
        """Index of the last business day on or before ``day``; -1 when there is none."""
        if self.calendar is None:
            return -1
        return int(np.searchsorted(self.calendar.numbers, day_numbers(pl.Series([day], dtype=pl.Date))[0], "right")) - 1

    def until(self, day: date) -> "PriceTable":
        """The table of the closes dated on or before ``day`` (the calendar ends there too).

        Forward filling only looks back, so this is the first columns of the matrices (views,
        no copy)."""
        k = self.day_index(day) + 1
        if k == self.days.len():
            return self
        table = object.__new__(PriceTable)
        days = self.days.head(k)
        table._set(days, Calendar(days) if k else None, self.instruments, self.close[:, :k], self.quoted[:, :k])
        return table

    def rows(self, instrument_ids: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """``(close, quoted)`` rows for ``instrument_ids`` (sorted or not, as given); an
        instrument without closes gets a NaN / -1 row."""
        k = codes(instrument_ids, self.instruments)
        if (k >= 0).all():
            return self.close[k], self.quoted[k]
        close = np.full((k.size, self.days.len()), np.nan)
        quoted = np.full((k.size, self.days.len()), -1, dtype=np.int64)
        close[k >= 0], quoted[k >= 0] = self.close[k[k >= 0]], self.quoted[k[k >= 0]]
        return close, quoted

    def latest(self, instrument_ids: pl.Series, day: date) -> tuple[np.ndarray, np.ndarray]:
        """Per row of ``instrument_ids``: ``(close, quoted)``, the latest close on or before
        ``day`` (float64; NaN when there is none) and the day number it was quoted (int64;
        meaningless where the close is NaN)."""
        k = codes(instrument_ids, self.instruments)
        d = self.day_index(day)
        close = np.full(k.size, np.nan)
        quoted = np.zeros(k.size, dtype=np.int64)
        if d >= 0:
            found = k >= 0
            when = self.quoted[k[found], d]
            close[found] = self.close[k[found], d]  # NaN when not quoted yet
            quoted[found] = self.calendar.numbers[np.maximum(when, 0)]
        return close, quoted


Prices = pl.DataFrame | pl.LazyFrame | PriceTable


def price_table(prices: Prices) -> PriceTable:
    """``prices`` as a ``PriceTable`` (an existing table is returned as is)."""
    return prices if isinstance(prices, PriceTable) else PriceTable(prices)
