"""Market returns: every instrument's daily return in a base currency, and benchmark returns.

Instrument returns (``instrument_returns``). On the business calendar of ``transforms.prices``
(closes forward-filled), the value of one unit of instrument ``i`` on day ``d`` in base
currency ``c`` is ``close(i, d) * base_per_local(d)``, with fx as ``transforms.fx`` resolves it
(latest quote on or before the day). The day's return is ``value(d) / value(d - 1) - 1``: a
holding's return over the day in the base currency, price and currency together. The first
business day, and any day before an instrument's first close, have no return (null). A day
without a new close (a stale price) has a price return of 0 and only the currency moves.

Benchmark returns (``benchmark_returns``). A benchmark is a basket of weights with effective
dates. The basket effective on date ``e`` is bought at the close of the business day before
the first business day on or after ``e`` (units ``w_i / value_i``) and held, its weights
drifting with prices, until the next effective date: the return on day ``d`` is
``sum_i w_i * value_i(d) / value_i(e0) / sum_i w_i * value_i(d - 1) / value_i(e0) - 1`` where
``e0`` is the purchase close. A basket whose weights do not sum to one (tolerance
``WEIGHT_TOLERANCE``), holds a negative weight, or holds an instrument without a value on the
purchase close is not used: its days get a null return and a ``note`` saying why.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from transforms.fx import FxRates, cross_rates, usd_table
from transforms.prices import Prices, codes, day_numbers, price_table
from transforms.contract import BENCHMARK_RETURNS_SCHEMA  # noqa: F401 (published schemas, defined in the contract)

WEIGHT_TOLERANCE = 1e-6

INSTRUMENT_RETURNS_SCHEMA: dict[str, pl.DataType] = {
    "instrument_id": pl.String,
    "base_currency": pl.String,
    "date": pl.Date,
    "value": pl.Float64,  # close * fx: one unit in the base currency
    "daily_return": pl.Float64,  # value / previous value - 1; null on the first day
}


class UnitValues:
    """One unit of every instrument valued in one base currency on every business day.

    Attributes: ``instruments`` (sorted ids, rows), ``days`` (Date series, columns),
    ``value`` (float64 ``(instruments, days)``: NaN where unknown) and ``base_currency``.
    """

    def __init__(self, prices: Prices, fx_rates: FxRates, instruments: pl.DataFrame, base_currency: str) -> None:
        """``instruments`` gives each id's ``currency``; an instrument without one has no value."""
        table = price_table(prices)
        self.base_currency = base_currency
        self.instruments, self.days = table.instruments, table.days
        currency = (
            pl.DataFrame({"instrument_id": table.instruments})
            .join(instruments.select("instrument_id", "currency").unique("instrument_id", keep="first"), on="instrument_id", how="left")
            .get_column("currency")
        )
        names = sorted(set(currency.drop_nulls().to_list()) | {base_currency})
        local = codes(currency, pl.Series(names))
        base = np.full(local.size, names.index(base_currency), dtype=np.int64)
        n_i, n_d = table.close.shape
        day = day_numbers(table.days)
        # one (instrument, day) grid of rates, as flat gathers of the per-currency rows
        rates = cross_rates(usd_table(fx_rates), names, np.repeat(local, n_d), np.repeat(base, n_d), np.tile(day, n_i))
        self.value = table.close * rates.reshape(n_i, n_d)

    def returns(self) -> np.ndarray:
        """Daily returns ``(instruments, days)``: NaN on the first day and where unknown."""
        out = np.full(self.value.shape, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, 1:] = self.value[:, 1:] / self.value[:, :-1] - 1.0
        out[~np.isfinite(out)] = np.nan
        return out


def _long_frame(values: UnitValues) -> pl.DataFrame:
    n_i, n_d = values.value.shape
    returns = values.returns()
    return pl.DataFrame(
        {
            "instrument_id": values.instruments.gather(np.repeat(np.arange(n_i), n_d)),
            "base_currency": pl.Series([values.base_currency], dtype=pl.String).gather(np.zeros(n_i * n_d, dtype=np.int64)),
            "date": values.days.gather(np.tile(np.arange(n_d), n_i)),
            "value": values.value.ravel(),
            "daily_return": returns.ravel(),
        },
        nan_to_null=True,
    )


def instrument_returns(
    prices: Prices, fx_rates: FxRates, instruments: pl.DataFrame, base_currencies: list[str]
) -> pl.DataFrame:
    """``INSTRUMENT_RETURNS_SCHEMA`` rows: every priced instrument's unit value and daily
    return in each of ``base_currencies`` on every business day (module rules), sorted by
    (instrument_id, base_currency, date). Rows before an instrument's first close are left out.
    """
    table, fx = price_table(prices), usd_table(fx_rates)
    parts = [_long_frame(UnitValues(table, fx, instruments, c)) for c in sorted(set(base_currencies))]
    if not parts:
        return pl.DataFrame(schema=INSTRUMENT_RETURNS_SCHEMA)
    return (
        pl.concat(parts)
        .filter(pl.col("value").is_not_null())
        .sort("instrument_id", "base_currency", "date")
        .cast(INSTRUMENT_RETURNS_SCHEMA)
    )


def _basket_notes(benchmarks: pl.DataFrame) -> pl.DataFrame:
    """Per (benchmark_id, effective_date): the basket's weight sum and why it cannot be used."""
    return (
        benchmarks.group_by("benchmark_id", "effective_date")
        .agg(pl.col("weight").sum().alias("weight_sum"), (pl.col("weight") < 0).any().alias("negative"))
        .with_columns(
            pl.when(pl.col("negative"))
            .then(pl.lit("benchmark holds a negative weight"))
            .when((pl.col("weight_sum") - 1.0).abs() > WEIGHT_TOLERANCE)
            .then(pl.format("benchmark weights sum to {}, not 1", pl.col("weight_sum").round(6)))
            .alias("note")
        )
    )


BENCHMARK_HOLDINGS_SCHEMA: dict[str, pl.DataType] = {
    "benchmark_id": pl.String,
    "base_currency": pl.String,
    "date": pl.Date,
    "effective_date": pl.Date,  # of the basket held that day
    "instrument_id": pl.String,  # null on the days of an unusable basket (see note)
    "weight": pl.Float64,  # at the start of the day (the previous close), drifted with prices
    "daily_return": pl.Float64,  # the constituent's return that day in the base currency
    "note": pl.String,  # null, or why the basket is not used
}


def benchmark_holdings(
    benchmarks: pl.DataFrame, prices: Prices, fx_rates: FxRates, instruments: pl.DataFrame, base_currencies: list[str]
) -> pl.DataFrame:
    """``BENCHMARK_HOLDINGS_SCHEMA`` rows: each benchmark's constituents on each day in each base
    currency, with the weight at the start of the day (module rules: units bought at the close
    before the basket's first day, ``w_i(d) = units_i * value_i(d - 1) / sum_j units_j *
    value_j(d - 1)``) and the day's return; the days of an unusable basket have one row with a
    null instrument and the note. Sorted by (benchmark_id, base_currency, date, instrument_id).

    ``benchmarks`` is the landing kind (benchmark_id, instrument_id, weight, effective_date).
    """
    out = []
    benchmarks = benchmarks.select("benchmark_id", "instrument_id", "weight", "effective_date").drop_nulls()
    table, fx = price_table(prices), usd_table(fx_rates)
    if benchmarks.height == 0 or table.calendar is None:
        return pl.DataFrame(schema=BENCHMARK_HOLDINGS_SCHEMA)
    notes = _basket_notes(benchmarks)
    for base in sorted(set(base_currencies)):
        values = UnitValues(table, fx, instruments, base)
        n_d = values.days.len()
        baskets = benchmarks.join(notes, on=["benchmark_id", "effective_date"])
        baskets = baskets.with_columns(
            row=pl.Series(codes(baskets["instrument_id"], values.instruments)),
            first=pl.Series(table.calendar.index(day_numbers(baskets["effective_date"]))),
        )
        # one (benchmark, basket) at a time: a handful of baskets of tens to hundreds of names
        for (bid, eff), basket in baskets.sort("benchmark_id", "effective_date").group_by(
            ["benchmark_id", "effective_date"], maintain_order=True
        ):
            later = baskets.filter((pl.col("benchmark_id") == bid) & (pl.col("effective_date") > eff))
            first = int(basket["first"][0])
            last = int(later["first"].min()) if later.height else n_d  # exclusive
            if first >= n_d or last <= first:
                continue
            days = np.arange(max(first, 1), last)
            note = basket["note"][0]
            rows = basket["row"].to_numpy()
            bought = max(first - 1, 0)
            if note is None and ((rows < 0).any() or not np.isfinite(values.value[np.maximum(rows, 0), bought]).all()):
                note = "a benchmark constituent has no value when the basket is bought"
            if note is not None:
                out.append(pl.DataFrame({
                    "benchmark_id": bid, "base_currency": base, "date": values.days.gather(days), "effective_date": eff,
                    "instrument_id": None, "weight": None, "daily_return": None, "note": note,
                }, schema=BENCHMARK_HOLDINGS_SCHEMA))
                continue
            held = values.value[rows][:, bought:last]  # (constituents, days from the purchase close)
            units = basket["weight"].to_numpy() / held[:, 0]
            worth = units[:, None] * held
            level = worth.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                weight = worth[:, :-1] / level[None, :-1]
                ret = held[:, 1:] / held[:, :-1] - 1.0
            j = days - bought - 1  # column of the previous close
            k = rows.size
            out.append(pl.DataFrame({
                "benchmark_id": bid, "base_currency": base,
                "date": values.days.gather(np.tile(days, k)), "effective_date": eff,
                "instrument_id": basket["instrument_id"].gather(np.repeat(np.arange(k), days.size)),
                "weight": weight[:, j].ravel(), "daily_return": ret[:, j].ravel(), "note": None,
            }, schema_overrides={"note": pl.String}, nan_to_null=True))
    if not out:
        return pl.DataFrame(schema=BENCHMARK_HOLDINGS_SCHEMA)
    return (
        pl.concat([f.select(list(BENCHMARK_HOLDINGS_SCHEMA)).cast(BENCHMARK_HOLDINGS_SCHEMA) for f in out])
        .sort("benchmark_id", "base_currency", "date", "instrument_id", nulls_last=True)
    )


def benchmark_returns(
    benchmarks: pl.DataFrame, prices: Prices, fx_rates: FxRates, instruments: pl.DataFrame, base_currencies: list[str]
) -> pl.DataFrame:
    """``BENCHMARK_RETURNS_SCHEMA`` rows: each benchmark's daily return in each base currency
    from its first basket's first day to the last business day, sorted by (benchmark_id,
    base_currency, date): ``sum_i w_i(d) * r_i(d)`` over ``benchmark_holdings`` (the basket's
    value at the close over its value at the previous close, minus 1); null with the basket's
    note on the days of an unusable basket."""
    return basket_returns(benchmark_holdings(benchmarks, prices, fx_rates, instruments, base_currencies))


def basket_returns(holdings: pl.DataFrame) -> pl.DataFrame:
    """``BENCHMARK_RETURNS_SCHEMA`` from ``benchmark_holdings`` rows: per benchmark, base
    currency and day, ``sum(weight * daily_return)``; null with the note on an unusable
    basket's days or when a constituent's return is unknown."""
    return (
        holdings.group_by("benchmark_id", "base_currency", "date", "effective_date")
        .agg(
            pl.when(pl.col("note").is_null().all() & pl.col("daily_return").is_not_null().all())
            .then((pl.col("weight") * pl.col("daily_return")).sum())
            .alias("daily_return"),
            pl.col("note").drop_nulls().first().alias("note"),
        )
        .select(list(BENCHMARK_RETURNS_SCHEMA))
        .cast(BENCHMARK_RETURNS_SCHEMA)
        .sort("benchmark_id", "base_currency", "date")
    )
