"""Currency conversion helpers.

``fx_rates`` (landing kind) quotes every currency in USD per unit on a date. From it:

- ``usd_per_unit(ccy, d)`` is the latest quote on or before ``d`` (forward fill). When a currency
  has no quote on or before ``d`` the earliest quote is used (a back fill, so that values before
  the first fx date are not null); ``USD`` is ``1.0`` whenever it is not quoted at all.
- the rate that converts local money into a portfolio's base currency is

      base_per_local(local, base, d) = usd_per_unit(local, d) / usd_per_unit(base, d)

  so a EUR amount in a USD book is multiplied by ``usd_per_unit(EUR, d)``.

A currency that is never quoted (other than USD) has a null rate: the values it touches are null,
never a made-up 1.0.

Implementation: ``UsdTable`` cleans the (small) fx table once into per-currency sorted arrays;
rows are resolved with ``np.searchsorted`` per currency present (or per calendar day of the
range when rows outnumber days). Build one table per call site and pass it as ``fx_rates``.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import TypeVar

import numpy as np
import polars as pl

from transforms.contract import BASE_CURRENCY
from transforms.prices import codes, run_codes

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)

_FX_SCHEMA = {"date": pl.Date, "currency": pl.String, "usd_per_unit": pl.Float64}


def as_utc(moment: datetime) -> datetime:
    """Return ``moment`` as an aware UTC datetime (a naive one is taken to be UTC already)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def as_of_date(moment: datetime) -> date:
    """The UTC calendar day of ``moment``."""
    return as_utc(moment).date()


def _clean_rates(fx_rates: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Typed, de-duplicated (last quote wins), null-free, positive quotes sorted by date."""
    return (
        fx_rates.lazy()
        .select(
            pl.col("date").cast(pl.Date),
            pl.col("currency").cast(pl.String),
            pl.col("usd_per_unit").cast(pl.Float64),
        )
        .filter(
            pl.col("date").is_not_null()
            & pl.col("currency").is_not_null()
            & pl.col("usd_per_unit").is_not_null()
            & pl.col("usd_per_unit").is_finite()
            & (pl.col("usd_per_unit") > 0)
        )
        .unique(subset=["date", "currency"], keep="last")
        .sort("currency", "date")
        .collect()
    )


class UsdTable:
    """Per-currency quote arrays (day numbers ascending, USD per unit) for vectorised look-ups.

    The fx table is small (one quote per currency and day), so it is cleaned once per call and
    every row is resolved with one ``np.searchsorted`` per currency present in the rows.
    """

    def __init__(self, fx_rates: pl.DataFrame | pl.LazyFrame) -> None:
        """Clean ``fx_rates`` (landing kind) once; build it once per call site and reuse it."""
        rates = _clean_rates(fx_rates)
        self.quotes: dict[str, tuple[np.ndarray, np.ndarray]] = {
            str(key[0]): (
                part["date"].to_physical().cast(pl.Int64).to_numpy(),
                part["usd_per_unit"].to_numpy(),
            )
            for key, part in rates.partition_by("currency", as_dict=True, maintain_order=True).items()
        }
        if BASE_CURRENCY not in self.quotes:  # USD is 1.0 whenever it is not quoted at all
            self.quotes[BASE_CURRENCY] = (np.zeros(1, dtype=np.int64), np.ones(1))

    def until(self, day: date) -> "UsdTable":
        """The table of the quotes dated on or before ``day`` (what ``fx_rates`` filtered to
        those dates would give: a currency first quoted later is never quoted)."""
        cut = int(pl.Series([day], dtype=pl.Date).to_physical()[0])
        table = object.__new__(UsdTable)
        table.quotes = {}
        for ccy, (days, values) in self.quotes.items():
            k = int(np.searchsorted(days, cut, side="right"))
            if k:
                table.quotes[ccy] = (days[:k], values[:k])
        if BASE_CURRENCY not in table.quotes:
            table.quotes[BASE_CURRENCY] = (np.zeros(1, dtype=np.int64), np.ones(1))
        return table

    def usd_per_unit(self, dates: pl.Series, currencies: pl.Series) -> np.ndarray:
        """USD per unit for each (date, currency) row; NaN when null or never quoted."""
        dates = dates.cast(pl.Date)
        currencies = currencies.cast(pl.String)
        day = dates.to_physical().cast(pl.Int64).fill_null(0).to_numpy()
        out = np.full(dates.len(), np.nan)
        for ccy in currencies.drop_nulls().unique().to_list():
            if ccy not in self.quotes:
                continue
            mask = (currencies == ccy).fill_null(False).to_numpy()
            out[mask] = self.lookup(ccy, day[mask])
        out[dates.is_null().to_numpy()] = np.nan
        return out

    def lookup(self, ccy: str, day: np.ndarray) -> np.ndarray:
        """USD per unit of ``ccy`` on each day number (days since 1970); NaN if never quoted."""
        if ccy not in self.quotes:
            return np.full(day.size, np.nan)
        quote_days, values = self.quotes[ccy]
        if day.size == 0:
            return np.empty(0)
        lo, hi = int(day.min()), int(day.max())
        if hi - lo + 1 < day.size:
            # many rows over few days: resolve each calendar day of the range once, then gather
            return self.lookup(ccy, np.arange(lo, hi + 1, dtype=np.int64))[day - lo]
        # latest quote on or before the day; before the first quote, the first one (back fill)
        return values[np.maximum(np.searchsorted(quote_days, day, side="right") - 1, 0)]


FxRates = pl.DataFrame | pl.LazyFrame | UsdTable


def usd_table(fx_rates: FxRates) -> UsdTable:
    """``fx_rates`` as a ``UsdTable`` (cleaned once; an existing table is returned as is)."""
    return fx_rates if isinstance(fx_rates, UsdTable) else UsdTable(fx_rates)


def cross_rates(
    fx: UsdTable, currencies: list[str], local: np.ndarray, base: np.ndarray, day: np.ndarray
) -> np.ndarray:
    """Base per local currency per row (float64; NaN when a rate is unknown).

    ``local`` and ``base`` are codes into ``currencies`` (any other code: no currency), ``day``
    day numbers. ``base_per_local = usd_per_unit(local, day) / usd_per_unit(base, day)``, and
    1.0 when both are the same currency (as ``base_per_local_on``). For many rows over few
    currencies: each currency is looked up once per day of the rows' range, rows are gathers.
    """
    if day.size == 0:
        return np.full(0, np.nan)
    n = len(currencies)
    lo = int(day.min())
    span = np.arange(lo, int(day.max()) + 1, dtype=np.int64)
    usd = np.full((n + 1, span.size), np.nan)  # row n: no currency
    for k, name in enumerate(currencies):
        usd[k] = fx.lookup(name, span)
    # negative codes wrap to large unsigned ones: one test maps every other code to n
    local = np.where(local.astype(np.uint64) < n, local, n)
    base = np.where(base.astype(np.uint64) < n, base, n)
    # a (days of the range) row of rates per (local, base) pair present; rows are one flat
    # gather from it, cheaper than two two-dimensional look-ups and a division per row
    pair = local * (n + 1) + base
    present = np.flatnonzero(np.bincount(pair, minlength=(n + 1) ** 2))
    slot = np.zeros((n + 1) ** 2, dtype=np.int64)
    slot[present] = np.arange(present.size)
    pair_local, pair_base = present // (n + 1), present % (n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        table = usd[pair_local] / usd[pair_base]
    table[(pair_local == pair_base) & (pair_local < n)] = 1.0
    return table.ravel()[slot[pair] * span.size + (day - lo)]


class Currencies:
    """Each instrument's currency and each portfolio's base currency as integer codes, for
    converting many ledger rows (lots, realised rows) at once.

    ``instruments``: ``instrument_id``, ``currency`` (one row per id, the first; sorted);
    ``portfolios``: ``portfolio_id``, ``base_currency`` (null: USD; one row per id, the first;
    sorted). A row of an unknown portfolio converts to USD; of an unknown instrument, to null.
    """

    def __init__(self, instruments: pl.DataFrame | pl.LazyFrame, portfolios: pl.DataFrame | pl.LazyFrame) -> None:
        def first_per_id(frame, key: str, value: pl.Expr) -> pl.DataFrame:
            return (
                frame.lazy()
                .select(pl.col(key).cast(pl.String), value)
                .filter(pl.col(key).is_not_null())
                .unique(key, keep="first")
                .sort(key)
                .collect()
            )

        self.instruments = first_per_id(instruments, "instrument_id", pl.col("currency").cast(pl.String))
        self.portfolios = first_per_id(
            portfolios, "portfolio_id", pl.col("base_currency").cast(pl.String).fill_null(BASE_CURRENCY)
        )
        self.names = sorted(
            set(self.instruments["currency"].drop_nulls()) | set(self.portfolios["base_currency"]) | {BASE_CURRENCY}
        )
        names = pl.Series(self.names, dtype=pl.String)
        self._local = np.append(codes(self.instruments["currency"], names), -1)  # last: unknown
        self._base = np.append(codes(self.portfolios["base_currency"], names), self.names.index(BASE_CURRENCY))

    def portfolio_codes(self, portfolio_ids: pl.Series) -> np.ndarray:
        """Row of each id in ``self.portfolios`` (-1: unknown), looked up per run of equal ids."""
        return run_codes(portfolio_ids, self.portfolios["portfolio_id"])

    def instrument_codes(self, instrument_ids: pl.Series) -> np.ndarray:
        """Row of each id in ``self.instruments`` (-1: unknown), looked up per run of equal ids."""
        return run_codes(instrument_ids, self.instruments["instrument_id"])

    def recode(self, portfolio: np.ndarray, portfolio_ids: pl.Series, instrument: np.ndarray,
               instrument_ids: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """(``portfolio_codes``, ``instrument_codes``) of rows already coded elsewhere: row k is
        ``portfolio_ids[portfolio[k]]`` and ``instrument_ids[instrument[k]]``. Only the (few)
        ids are looked up; the rows are gathers."""
        to_portfolio = np.append(codes(portfolio_ids, self.portfolios["portfolio_id"]), -1)
        to_instrument = np.append(codes(instrument_ids, self.instruments["instrument_id"]), -1)
        return to_portfolio[portfolio], to_instrument[instrument]

    def base_per_local(self, fx: UsdTable, portfolio: np.ndarray, instrument: np.ndarray, day: np.ndarray) -> np.ndarray:
        """``cross_rates`` per row: from the currency of the instrument (``instrument_codes``) to
        the base currency of the portfolio (``portfolio_codes``) on each day number; NaN when
        unknown."""
        return cross_rates(fx, self.names, self._local[instrument], self._base[portfolio], day)

    def currency_of(self, instrument: np.ndarray) -> pl.Series:
        """The currency of each instrument (``instrument_codes``; null when unknown)."""
        return self.instruments["currency"].gather(pl.Series(instrument).set(pl.Series(instrument < 0), None))

    def base_per_currency(self, fx: UsdTable, portfolio: np.ndarray, currencies: pl.Series, day: np.ndarray) -> np.ndarray:
        """``cross_rates`` per row: from ``currencies`` (any currency, e.g. of cash; null: NaN)
        to the base currency of the portfolio (``portfolio_codes``) on each day number."""
        extra = sorted(set(currencies.drop_nulls().cast(pl.String).unique().to_list()) - set(self.names))
        names = self.names + extra  # base codes index the first part
        return cross_rates(fx, names, codes(currencies, pl.Series(names, dtype=pl.String)), self._base[portfolio], day)


    def balance_rates(self, fx: UsdTable, balances: pl.DataFrame, day: date) -> np.ndarray:
        """``base_per_currency`` of each cash balance row (``portfolio_id``, ``currency``, as
        ``transforms.cash.cash_balances`` gives them) on the date ``day``: the rate the positions'
        CASH rows and the portfolio state's settled / pending cash convert at."""
        on = pl.Series([day], dtype=pl.Date).to_physical().cast(pl.Int64)[0]
        return self.base_per_currency(
            fx, self.portfolio_codes(balances["portfolio_id"]), balances["currency"], np.full(balances.height, on)
        )

def _to_rate(values: np.ndarray, name: str) -> pl.Series:
    # a missing rate is null, never NaN (quotes themselves are finite and positive)
    return pl.Series(name, values, dtype=pl.Float64).fill_nan(None)


def usd_per_unit_on(
    frame: Frame,
    fx_rates: FxRates,
    *,
    date_col: str,
    currency_col: str,
    out: str = "usd_per_unit",
) -> Frame:
    """Add column ``out`` = USD per unit of ``currency_col`` on ``date_col`` (forward filled).

    Rows keep their order (a null date or currency gives a null rate). See the module docstring
    for the fallback rules.
    """
    table = usd_table(fx_rates)

    def resolve(s: pl.Series) -> pl.Series:
        return _to_rate(table.usd_per_unit(s.struct.field("d"), s.struct.field("c")), out)

    expr = (
        pl.struct(pl.col(date_col).alias("d"), pl.col(currency_col).alias("c"))
        .map_batches(resolve, return_dtype=pl.Float64, is_elementwise=True)
        .alias(out)
    )
    return frame.with_columns(expr)


def base_per_local_on(
    frame: Frame,
    fx_rates: FxRates,
    *,
    date_col: str,
    local_col: str,
    base_col: str,
    out: str = "fx_rate",
) -> Frame:
    """Add column ``out`` = base ccy per unit of the local ccy on ``date_col`` (forward filled).

    ``base_per_local = usd_per_unit(local) / usd_per_unit(base)``; 1.0 when local == base.
    Rows keep their order.
    """
    table = usd_table(fx_rates)
    same = pl.col(local_col).cast(pl.String) == pl.col(base_col).cast(pl.String)
    if isinstance(frame, pl.DataFrame):
        # eager: resolve the columns directly (no per-batch Python call inside the engine)
        d = frame[date_col]
        rate = table.usd_per_unit(d, frame[local_col]) / table.usd_per_unit(d, frame[base_col])
        return frame.with_columns(pl.when(same).then(pl.lit(1.0)).otherwise(_to_rate(rate, out)).alias(out))

    def resolve(s: pl.Series) -> pl.Series:
        d = s.struct.field("d")
        rate = table.usd_per_unit(d, s.struct.field("l")) / table.usd_per_unit(d, s.struct.field("b"))
        return _to_rate(rate, out)

    ratio = pl.struct(pl.col(date_col).alias("d"), pl.col(local_col).alias("l"), pl.col(base_col).alias("b"))
    ratio = ratio.map_batches(resolve, return_dtype=pl.Float64, is_elementwise=True)
    return frame.with_columns(pl.when(same).then(pl.lit(1.0)).otherwise(ratio).alias(out))


def usd_per_unit_grid(
    fx_rates: pl.DataFrame | pl.LazyFrame, days: pl.Series, currencies: list[str]
) -> pl.DataFrame:
    """Dense table (currency, day_idx, usd_per_unit): one row per currency and per ``days`` entry.

    ``days`` must be sorted ascending; ``day_idx`` is the position in ``days``. Rates follow the
    module's rules (forward fill, back fill before the first quote, USD 1.0 when absent).
    """
    grid = pl.DataFrame({"currency": pl.Series(currencies, dtype=pl.String)}).join(
        pl.DataFrame({"date": days.cast(pl.Date)}).with_row_index("day_idx"), how="cross"
    )
    grid = usd_per_unit_on(grid, fx_rates, date_col="date", currency_col="currency")
    return grid.select("currency", pl.col("day_idx").cast(pl.Int64), "usd_per_unit")
