"""The inputs of attribution: each portfolio's and its benchmark's holdings per day, with the
weight at the start of the day and the day's return, in the portfolio's base currency.

Portfolio side (``portfolio_days``), holdings-based: on day ``d`` a position's weight is
its value at the previous close over the previous close's nav (``daily_valuations``), and its
return the unit value's change over the day (``transforms.valuations.unit_values``: price and
currency together); the holding is the one at the previous close (trades of the day count from
the next day). Cash is one row ``CASH`` of sector ``CASH`` with return 0. A position valued
before its instrument's first close (no unit value) is left out. So ``R_t = sum(w * r)`` is
the return of the previous close's portfolio held through the day: it differs from the
time-weighted return of ``returns_daily`` by the day's trading, fees and income.

Benchmark side (``benchmark_sector_sums``): ``transforms.market_returns.benchmark_holdings`` of
the portfolio's benchmark in its base currency, summed by sector once per (benchmark, base
currency) and day (``transforms.attribution.sector_sums``) and only then copied to each
portfolio that uses it: a thousand portfolios on three benchmarks would otherwise copy every
constituent a thousand times.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from transforms.attribution import (
    HOLDINGS_SCHEMA,
    LINK_METHODS,
    SECTOR_SUMS_SCHEMA,
    brinson,
    contribution,
    link,
    link_summary,
    sector_inputs_from_sums,
    sector_sums,
    total_returns_from_sums,
)
from transforms.contract import UNCLASSIFIED
from transforms.performance import period_starts
from transforms.prices import codes
from transforms.valuations import Holdings, unit_values, valuation_cells

HOLDING_DAYS_SCHEMA = HOLDINGS_SCHEMA  # what transforms.attribution reads
CASH = "CASH"


def portfolio_days(h: Holdings, daily_valuations: pl.DataFrame, instruments: pl.DataFrame,
                   first_day: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The portfolio side for the business days from index ``first_day`` (>= 1) of ``h.days``
    on (module rules): (``HOLDING_DAYS_SCHEMA`` rows sorted by (portfolio_id, date,
    instrument_id), their ``SECTOR_SUMS_SCHEMA`` sums sorted by (portfolio_id, date, sector)).
    Days whose previous nav is not positive are left out, and so are rows whose weight or
    return is not a finite number.

    The rows are made in numpy and ordered by integer codes that sort as the strings do
    (portfolios, instruments and sectors are sorted ids; ``CASH`` takes its place among the
    instruments), and the sector sums are ``numpy.bincount`` over (portfolio, day, sector)
    cells, so tens of millions of rows need no string sort or hash: the same sums as
    ``transforms.attribution.sector_sums`` of the rows, in a fraction of its time."""
    seg, n_i, n_days = h.seg, h.inst_ids.len(), h.cal.n
    first_day = max(first_day, 1)
    bases, slot_of_p = np.unique(h.base_of_p, return_inverse=True)
    table, _ = unit_values(bases, h.inst_ccy, h.close, h.last, h.usd2d)
    cells = valuation_cells(daily_valuations, h, ("nav", "cash"))
    nav, cash = cells["nav"], cells["cash"]
    # a segment held on days [start, end) weighs on the days after: [start + 1, end + 1)
    lo = np.maximum(seg["start"] + 1, first_day)
    hi = np.minimum(seg["end"] + 1, n_days)
    lens = np.maximum(hi - lo, 0)
    k = np.repeat(np.arange(lens.size), lens)
    d = np.repeat(lo - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
    p, i = seg["p"][k], seg["i"][k]
    row = slot_of_p[p] * n_i + i
    before, today = table[row, d - 1], table[row, d]
    with np.errstate(invalid="ignore", divide="ignore"):
        returns = np.where(before != 0, today / before - 1.0, np.nan)  # 0: before the first close
        weight = seg["q"][k] * before / nav[p, d - 1]
    # cash: one row per (portfolio, day) of the window whose previous close has a nav
    cp, cd = np.nonzero(np.isfinite(nav[:, first_day - 1 : n_days - 1]))
    cd = cd + first_day
    with np.errstate(invalid="ignore", divide="ignore"):
        cash_weight = cash[cp, cd - 1] / nav[cp, cd - 1]
    # instrument i is id n_i of the extended ids below when cash; its rank among them: CASH
    # sorts after the ids before it, so ranks 2 i + 1 for instruments, 2 c for CASH
    ids = pl.concat([h.inst_ids.cast(pl.String), pl.Series([CASH])])
    cash_rank = 2 * int(np.searchsorted(h.inst_ids.cast(pl.String).to_numpy(), CASH))
    p, d = np.concatenate([p, cp]), np.concatenate([d, cd])
    i = np.concatenate([i, np.full(cp.size, n_i)])
    weight = np.concatenate([weight, cash_weight])
    returns = np.concatenate([returns, np.zeros(cp.size)])
    keep = (nav[p, d - 1] > 0) & np.isfinite(weight) & np.isfinite(returns)
    p, d, i, weight, returns = p[keep], d[keep], i[keep], weight[keep], returns[keep]
    rank = np.where(i == n_i, cash_rank, 2 * i + 1)
    order = np.argsort((p * n_days + d) * (2 * n_i + 2) + rank, kind="stable")
    p, d, i, weight, returns = p[order], d[order], i[order], weight[order], returns[order]

    sector_of = (
        pl.DataFrame({"instrument_id": ids})
        .join(instruments.select(pl.col("instrument_id").cast(pl.String), pl.col("sector").cast(pl.String))
              .unique("instrument_id", keep="first"), on="instrument_id", how="left", maintain_order="left")
        .get_column("sector")
        .fill_null(UNCLASSIFIED)
        .scatter(n_i, CASH)
    )
    sector_names = sector_of.unique().sort()
    s = codes(sector_of, sector_names)[i]
    rows = pl.DataFrame({
        "portfolio_id": h.ports["portfolio_id"].gather(p),
        "date": h.days.gather(d),
        "instrument_id": ids.gather(i),
        "sector": sector_of.gather(i),
        "weight": weight,
        "return": returns,
    }).cast(HOLDING_DAYS_SCHEMA)

    # (portfolio, window day, sector) cells, numbered in that order
    n_s, n_w = sector_names.len(), n_days - first_day
    cell = (p * n_w + (d - first_day)) * n_s + s
    n_cells = h.ports.height * n_w * n_s
    held = np.flatnonzero(np.bincount(cell, minlength=n_cells))
    sums = pl.DataFrame({
        "portfolio_id": h.ports["portfolio_id"].gather(held // (n_w * n_s)),
        "date": h.days.gather(first_day + held // n_s % n_w),
        "sector": sector_names.gather(held % n_s),
        "weight": np.bincount(cell, weights=weight, minlength=n_cells)[held],
        "earned": np.bincount(cell, weights=weight * returns, minlength=n_cells)[held],
    }).cast(SECTOR_SUMS_SCHEMA)
    return rows, sums


def benchmark_sector_sums(benchmark_holdings: pl.DataFrame, portfolios: pl.DataFrame, instruments: pl.DataFrame,
                          first_date) -> pl.DataFrame:
    """``SECTOR_SUMS_SCHEMA`` rows keyed by portfolio: the sector sums of each portfolio's
    benchmark in its base currency (``benchmark_holdings`` rows, from ``first_date`` on), summed
    once per (benchmark, base currency) and copied to every portfolio using it. Unusable
    baskets' days (null instrument) are left out, so those days have no benchmark side."""
    ports = portfolios.select("portfolio_id", "benchmark_id", pl.col("base_currency").fill_null("USD")).unique("portfolio_id", keep="first")
    # the (benchmark, base currency) pair stands in for the portfolio while the basket is summed
    pair = pl.concat_str(pl.col("benchmark_id"), pl.lit("\x00"), pl.col("base_currency")).alias("portfolio_id")
    baskets = (
        benchmark_holdings.filter((pl.col("date") >= first_date) & pl.col("instrument_id").is_not_null())
        .join(ports.select("benchmark_id", "base_currency").unique(), on=["benchmark_id", "base_currency"], how="semi")
        .join(instruments.select("instrument_id", "sector").unique("instrument_id", keep="first"), on="instrument_id", how="left")
        .select(pair, "date", "instrument_id", pl.col("sector").cast(pl.String).fill_null(UNCLASSIFIED), "weight",
                pl.col("daily_return").alias("return"))
        .drop_nulls(["weight", "return"])
        .sort("portfolio_id", "date", "instrument_id")
    )
    sums = sector_sums(baskets, "benchmark holdings").rename({"portfolio_id": "_pair"})
    return (
        ports.filter(pl.col("benchmark_id").is_not_null())
        .select("portfolio_id", pair.alias("_pair"))
        .join(sums, on="_pair", how="inner")
        .select(list(SECTOR_SUMS_SCHEMA))
        .sort("portfolio_id", "date", "sector")
    )


ATTRIBUTION_PERIODS = ("MTD", "QTD", "YTD", "1Y")


def attribution_report(portfolio: tuple[pl.DataFrame, pl.DataFrame], benchmark_sums: pl.DataFrame, as_of) -> dict[str, pl.DataFrame]:
    """Daily Brinson-Fachler by sector (``transforms.attribution.brinson``) of the portfolio side
    (``portfolio_days``: holdings and their sector sums) against ``benchmark_sector_sums``, for
    the portfolios with a benchmark side, and for each period of ``ATTRIBUTION_PERIODS`` ending ``as_of``
    (``transforms.performance.period_starts``) the effects linked by every method of
    ``transforms.attribution.LINK_METHODS``, their summary, and every portfolio's contribution to return by
    position (compound linking). Returns ``{"daily", "linked", "summary", "contribution"}``;
    the last three carry a ``period`` column after portfolio_id."""
    portfolio_days, mine = portfolio
    day = ["portfolio_id", "date"]
    # days on which both sides are known
    both = mine.select(day).unique().join(benchmark_sums.select(day).unique(), on=day)
    mine = mine.join(both, on=day, how="semi", maintain_order="left")
    theirs = benchmark_sums.join(both, on=day, how="semi", maintain_order="left")
    daily = brinson(sector_inputs_from_sums(mine, theirs))
    totals = total_returns_from_sums(mine, theirs)
    linked, summary, contributions = [], [], []
    starts = period_starts(as_of)
    for period in ATTRIBUTION_PERIODS:
        in_period = pl.col("date") >= starts[period]
        day_rows, total_rows = daily.filter(in_period), totals.filter(in_period)
        contributions.append(contribution(portfolio_days.filter(in_period)).with_columns(pl.lit(period).alias("period")))
        if total_rows.height == 0:
            continue
        for method in LINK_METHODS:
            effects = link(day_rows, total_rows, method)
            linked.append(effects.with_columns(pl.lit(period).alias("period")))
            summary.append(link_summary(effects, total_rows).with_columns(pl.lit(period).alias("period")))

    def stacked(parts: list[pl.DataFrame]) -> pl.DataFrame | None:
        if not parts:
            return None
        frame = pl.concat(parts)
        return frame.select("portfolio_id", "period", pl.exclude("portfolio_id", "period"))

    return {"daily": daily, "linked": stacked(linked), "summary": stacked(summary), "contribution": stacked(contributions)}
