"""The inputs of attribution: each portfolio's and its benchmark's holdings per day, with the
weight at the start of the day and the day's return, in the portfolio's base currency.

Portfolio side (``portfolio_holding_days``), holdings-based: on day ``d`` a position's weight is
its value at the previous close over the previous close's nav (``daily_valuations``), and its
return the unit value's change over the day (``transforms.valuations.unit_values``: price and
currency together); the holding is the one at the previous close (trades of the day count from
the next day). Cash is one row ``CASH`` of sector ``CASH`` with return 0. A position valued
before its instrument's first close (no unit value) is left out. So ``R_t = sum(w * r)`` is
the return of the previous close's portfolio held through the day: it differs from the
time-weighted return of ``returns_daily`` by the day's trading, fees and income.

Benchmark side (``benchmark_holding_days``): ``transforms.market_returns.benchmark_holdings``
of the portfolio's benchmark in its base currency, keyed by the portfolio.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from transforms.attribution import HOLDINGS_SCHEMA, brinson, contribution, link, link_summary, sector_inputs, total_returns
from transforms.contract import UNCLASSIFIED
from transforms.performance import period_starts
from transforms.valuations import Holdings, unit_values

HOLDING_DAYS_SCHEMA = HOLDINGS_SCHEMA  # what transforms.attribution reads
CASH = "CASH"


def portfolio_holding_days(h: Holdings, daily_valuations: pl.DataFrame, instruments: pl.DataFrame, first_day: int) -> pl.DataFrame:
    """``HOLDING_DAYS_SCHEMA`` rows for the business days from index ``first_day`` (>= 1) of
    ``h.days`` on (module rules); days whose previous nav is not positive are left out."""
    seg, n_i, n_days = h.seg, h.inst_ids.len(), h.cal.n
    first_day = max(first_day, 1)
    bases, slot_of_p = np.unique(h.base_of_p, return_inverse=True)
    table, _ = unit_values(bases, h.inst_ccy, h.close, h.last, h.usd2d)
    # a segment held on days [start, end) weighs on the days after: [start + 1, end + 1)
    lo = np.maximum(seg["start"] + 1, first_day)
    hi = np.minimum(seg["end"] + 1, n_days)
    lens = np.maximum(hi - lo, 0)
    k = np.repeat(np.arange(lens.size), lens)
    d = np.repeat(lo - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
    p, i = seg["p"][k], seg["i"][k]
    row = slot_of_p[p] * n_i + i
    before, today = table[row, d - 1], table[row, d]
    keep = before != 0  # 0: before the instrument's first close
    with np.errstate(invalid="ignore", divide="ignore"):
        returns = today / before - 1.0
    p, i, d, value, returns = p[keep], i[keep], d[keep], seg["q"][k][keep] * before[keep], returns[keep]
    sectors = (
        pl.DataFrame({"instrument_id": h.inst_ids})
        .join(instruments.select("instrument_id", "sector").unique("instrument_id", keep="first"), on="instrument_id",
              how="left", maintain_order="left")
        .get_column("sector")
        .fill_null(UNCLASSIFIED)
    )
    positions = pl.DataFrame({
        "portfolio_id": h.ports["portfolio_id"].gather(p), "date": h.days.gather(d),
        "previous": h.days.gather(d - 1), "instrument_id": h.inst_ids.gather(i), "sector": sectors.gather(i),
        "value": value, "return": returns,
    }, nan_to_null=True)
    navs = daily_valuations.select("portfolio_id", pl.col("date").alias("previous"), "nav", "cash")
    days = pl.DataFrame({"previous": h.days.slice(first_day - 1, n_days - first_day), "date": h.days.slice(first_day)})
    cash = (
        navs.join(days, on="previous")
        .select("portfolio_id", "date", "previous", pl.lit(CASH).alias("instrument_id"), pl.lit(CASH).alias("sector"),
                pl.col("cash").alias("value"), pl.lit(0.0).alias("return"))
    )
    return (
        pl.concat([positions, cash])
        .join(navs.select("portfolio_id", "previous", "nav"), on=["portfolio_id", "previous"], how="inner")
        .filter(pl.col("nav") > 0)
        .with_columns((pl.col("value") / pl.col("nav")).alias("weight"))
        .select(list(HOLDING_DAYS_SCHEMA))
        .cast(HOLDING_DAYS_SCHEMA)
        .drop_nulls(["weight", "return"])
        .sort("portfolio_id", "date", "instrument_id")
    )


def benchmark_holding_days(benchmark_holdings: pl.DataFrame, portfolios: pl.DataFrame, instruments: pl.DataFrame,
                           first_date) -> pl.DataFrame:
    """``HOLDING_DAYS_SCHEMA`` rows: each portfolio's benchmark constituents in its base currency
    (``benchmark_holdings`` rows) from ``first_date`` on, keyed by the portfolio; unusable
    baskets' days (null instrument) are left out, so those days have no benchmark side."""
    ports = portfolios.select("portfolio_id", "benchmark_id", pl.col("base_currency").fill_null("USD")).unique("portfolio_id", keep="first")
    return (
        benchmark_holdings.filter((pl.col("date") >= first_date) & pl.col("instrument_id").is_not_null())
        .join(ports, on=["benchmark_id", "base_currency"], how="inner")
        .join(instruments.select("instrument_id", "sector").unique("instrument_id", keep="first"), on="instrument_id", how="left")
        .with_columns(pl.col("sector").fill_null(UNCLASSIFIED), pl.col("daily_return").alias("return"))
        .select(list(HOLDING_DAYS_SCHEMA))
        .cast(HOLDING_DAYS_SCHEMA)
        .drop_nulls(["weight", "return"])
        .sort("portfolio_id", "date", "instrument_id")
    )


ATTRIBUTION_PERIODS = ("MTD", "QTD", "YTD", "1Y")
LINKING_METHODS = ("carino", "menchero", "grap", "frongello")


def attribution_report(portfolio_days: pl.DataFrame, benchmark_days: pl.DataFrame, as_of) -> dict[str, pl.DataFrame]:
    """Daily Brinson-Fachler by sector (``transforms.attribution.brinson``) for the portfolios
    with a benchmark side, and for each period of ``ATTRIBUTION_PERIODS`` ending ``as_of``
    (``transforms.performance.period_starts``) the effects linked by every method of
    ``LINKING_METHODS``, their summary, and every portfolio's contribution to return by
    position (compound linking). Returns ``{"daily", "linked", "summary", "contribution"}``;
    the last three carry a ``period`` column after portfolio_id."""
    benchmarked = benchmark_days["portfolio_id"].unique().implode()
    mine = portfolio_days.filter(pl.col("portfolio_id").is_in(benchmarked))
    # days on which both sides are known
    both = mine.select("portfolio_id", "date").unique().join(benchmark_days.select("portfolio_id", "date").unique(), on=["portfolio_id", "date"])
    mine = mine.join(both, on=["portfolio_id", "date"])
    theirs = benchmark_days.join(both, on=["portfolio_id", "date"])
    daily = brinson(sector_inputs(mine, theirs))
    totals = total_returns(mine, theirs)
    linked, summary, contributions = [], [], []
    starts = period_starts(as_of)
    for period in ATTRIBUTION_PERIODS:
        in_period = pl.col("date") >= starts[period]
        day_rows, total_rows = daily.filter(in_period), totals.filter(in_period)
        contributions.append(contribution(portfolio_days.filter(in_period)).with_columns(pl.lit(period).alias("period")))
        if total_rows.height == 0:
            continue
        for method in LINKING_METHODS:
            effects = link(day_rows, total_rows, method)
            linked.append(effects.with_columns(pl.lit(period).alias("period")))
            summary.append(link_summary(effects, total_rows).with_columns(pl.lit(period).alias("period")))

    def stacked(parts: list[pl.DataFrame]) -> pl.DataFrame | None:
        if not parts:
            return None
        frame = pl.concat(parts)
        return frame.select("portfolio_id", "period", pl.exclude("portfolio_id", "period"))

    return {"daily": daily, "linked": stacked(linked), "summary": stacked(summary), "contribution": stacked(contributions)}
