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
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import TypeVar

import polars as pl

from transforms.contract import BASE_CURRENCY

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


def _clean_rates(fx_rates: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """Typed, de-duplicated, null-free quotes sorted by date (USD added as 1.0 when absent)."""
    rates = (
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
    )
    usd_missing = pl.LazyFrame(
        {"date": [date(1900, 1, 1)], "currency": [BASE_CURRENCY], "usd_per_unit": [1.0]},
        schema=_FX_SCHEMA,
    ).join(rates.filter(pl.col("currency") == BASE_CURRENCY), on="currency", how="anti")
    return pl.concat([rates, usd_missing]).sort("date", "currency")


def usd_per_unit_on(
    frame: Frame,
    fx_rates: pl.DataFrame | pl.LazyFrame,
    *,
    date_col: str,
    currency_col: str,
    out: str = "usd_per_unit",
) -> Frame:
    """Add column ``out`` = USD per unit of ``currency_col`` on ``date_col`` (forward filled).

    Rows keep their order (a null date or currency gives a null rate). See the module docstring
    for the fallback rules.
    """
    rates = _clean_rates(fx_rates)
    first = rates.group_by("currency").agg(pl.col("usd_per_unit").sort_by("date").first().alias("_first"))
    lf = frame.lazy().with_columns(
        pl.col(date_col).cast(pl.Date).alias("_d"), pl.col(currency_col).cast(pl.String).alias("_c")
    )
    # resolve each distinct (date, currency) once, then join back (keeping the row order)
    keys = (
        lf.select("_d", "_c")
        .unique()
        .filter(pl.col("_d").is_not_null())
        .sort("_d")
        .join_asof(
            rates.rename({"date": "_fd", "currency": "_c", "usd_per_unit": "_r"}),
            left_on="_d",
            right_on="_fd",
            by="_c",
            strategy="backward",
            check_sortedness=False,
        )
        .join(first.rename({"currency": "_c"}), on="_c", how="left")
        .select("_d", "_c", pl.coalesce("_r", "_first").alias(out))
    )
    result = lf.join(keys, on=["_d", "_c"], how="left", nulls_equal=True, maintain_order="left").drop("_d", "_c")
    return result.collect() if isinstance(frame, pl.DataFrame) else result


def base_per_local_on(
    frame: Frame,
    fx_rates: pl.DataFrame | pl.LazyFrame,
    *,
    date_col: str,
    local_col: str,
    base_col: str,
    out: str = "fx_rate",
) -> Frame:
    """Add column ``out`` = base ccy per unit of the local ccy on ``date_col`` (forward filled).

    ``base_per_local = usd_per_unit(local) / usd_per_unit(base)``; 1.0 when local == base.
    """
    lf = frame.lazy()
    lf = usd_per_unit_on(lf, fx_rates, date_col=date_col, currency_col=local_col, out="_usd_local")
    lf = usd_per_unit_on(lf, fx_rates, date_col=date_col, currency_col=base_col, out="_usd_base")
    lf = lf.with_columns(
        pl.when(pl.col(local_col) == pl.col(base_col))
        .then(pl.lit(1.0))
        .otherwise(pl.col("_usd_local") / pl.col("_usd_base"))
        .alias(out)
    ).drop("_usd_local", "_usd_base")
    return lf.collect() if isinstance(frame, pl.DataFrame) else lf


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
