"""Performance: daily time-weighted returns and the statistics built on a return series.

Conventions (day count, ddof, risk-free rate, external flows) are those of
``transforms.conventions``; the formulas below state them again where they are used.

- ``returns_daily(daily_valuations)``: one row per portfolio and business day
  (``RETURNS_DAILY_SCHEMA``), flows removed, chain-linked.
- ``return_statistics(returns, benchmark, risk_free)``: cumulative and annualised return,
  volatility, Sharpe, Sortino, maximum drawdown and its duration, Calmar and, against a
  benchmark, beta, alpha, tracking error and information ratio. Where empyrical defines the
  same statistic the formula is empyrical's (the tests compare to 1e-8).
"""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import polars as pl
from scipy.optimize import brentq

from transforms.contract import PERFORMANCE_SCHEMA, RETURNS_DAILY_SCHEMA
from transforms.conventions import DDOF, PERIODS_PER_YEAR

NO_CAPITAL = "no capital: previous nav + flows is zero or negative"
NAV_UNKNOWN = "nav unknown (a value without an fx rate)"
PREVIOUS_NAV_UNKNOWN = "previous nav unknown"


def returns_daily(daily_valuations: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Daily time-weighted returns per portfolio (``RETURNS_DAILY_SCHEMA``), sorted by
    (portfolio_id, date).

    Input: ``DAILY_VALUATIONS_SCHEMA`` rows (at least portfolio_id, date, base_currency, nav,
    net_flows). Per portfolio, in date order:

    - ``capital`` = previous day's nav (0 on the first valued day) + ``net_flows`` (null flows
      count 0): external flows arrive at the start of the day;
    - ``daily_return`` = ``nav / capital - 1`` where nav and capital are known and capital > 0;
      otherwise null, and ``return_note`` says why (no capital, nav unknown, previous nav
      unknown);
    - ``growth`` = product of ``1 + daily_return`` up to the day (a day without a return
      counts as 0), the value of 1 invested at the start.
    """
    nav, flows = pl.col("nav"), pl.col("net_flows").fill_null(0.0)
    previous = nav.shift(1, fill_value=0.0).over("portfolio_id")
    capital = previous + flows
    frame = (
        daily_valuations.lazy()
        .select("portfolio_id", "date", "base_currency", "nav", "net_flows")
        .sort("portfolio_id", "date")
        .with_columns(capital.alias("capital"), previous.is_null().alias("_no_previous"))
        .with_columns(
            pl.when(nav.is_null())
            .then(pl.lit(NAV_UNKNOWN))
            .when(pl.col("_no_previous"))
            .then(pl.lit(PREVIOUS_NAV_UNKNOWN))
            .when(pl.col("capital") <= 0)
            .then(pl.lit(NO_CAPITAL))
            .alias("return_note")
        )
        .with_columns(
            pl.when(pl.col("return_note").is_null()).then(nav / pl.col("capital") - 1.0).alias("daily_return")
        )
        .with_columns((pl.col("daily_return").fill_null(0.0) + 1.0).cum_prod().over("portfolio_id").alias("growth"))
    )
    return frame.select([pl.col(c).cast(t) for c, t in RETURNS_DAILY_SCHEMA.items()]).collect()


def _finite(x: pl.Expr) -> pl.Expr:
    """``x`` where finite, else null: a statistic is never NaN or an infinity."""
    return pl.when(x.is_finite()).then(x)


def _positive(x: pl.Expr) -> pl.Expr:
    return pl.when(x > 0).then(x)


def period_statistics(returns: pl.DataFrame | pl.LazyFrame, keys: list[str], risk_free: float = 0.0) -> pl.DataFrame:
    """Statistics of each group's daily return series, one row per group of ``keys``.

    Input columns: ``keys``, ``date``, ``daily_return`` and optionally ``benchmark_return``
    (per day; null where unknown). Null returns are left out; the benchmark statistics use the
    days where both returns are known. ``risk_free`` is the per-period rate
    (``conventions.risk_free_per_period``). With ``n`` returns, ``A`` = ``PERIODS_PER_YEAR``,
    ``x = r - risk_free``, and on the paired days ``y = b - risk_free``:

    - cumulative_return = prod(1 + r) - 1; annualised_return = (1 + cumulative) ** (A / n) - 1;
    - volatility = std(r, ddof=1) * sqrt(A);
    - sharpe = mean(x) / std(x, ddof=1) * sqrt(A);
    - sortino = mean(x) * A / (sqrt(mean(min(x, 0) ** 2)) * sqrt(A));
    - max_drawdown = min over days of ``W_t / max(1, W_1..t) - 1`` with wealth
      ``W_t = prod(1 + r_1..t)`` (empyrical's ``max_drawdown``); drawdown_days = the longest run
      of consecutive days below an earlier peak (one still open at the end counts to the last
      day); calmar = annualised_return / |max_drawdown|;
    - beta = cov(x, y) / var(y); alpha = (1 + mean(x - beta * y)) ** A - 1;
      tracking_error = std(r - b, ddof=1) * sqrt(A); information_ratio = mean(r - b) * A /
      tracking_error; benchmark_cumulative_return = prod(1 + b) - 1 on the paired days.

    A statistic that cannot be computed (too few days, a zero deviation or drawdown, no
    benchmark) is null, never NaN or an infinity. Output columns: ``keys``, days, first_date,
    last_date, then the statistics above; sorted by ``keys``.
    """
    a = float(PERIODS_PER_YEAR)
    frame = returns.lazy()
    if "benchmark_return" not in frame.collect_schema().names():
        frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("benchmark_return"))
    r, b = pl.col("daily_return"), pl.col("benchmark_return")
    frame = (
        frame.select(*keys, "date", r.cast(pl.Float64), b.cast(pl.Float64))
        .filter(r.is_not_null())
        .sort(*keys, "date")
    )
    wealth = (1.0 + r).cum_prod().over(keys)
    frame = frame.with_columns(
        (wealth / pl.max_horizontal(wealth.cum_max().over(keys), pl.lit(1.0)) - 1.0).alias("_drawdown")
    ).with_columns((pl.col("_drawdown") < 0).alias("_under"))
    # runs of consecutive days under water, numbered per group
    runs = (
        frame.with_columns((pl.col("_under") != pl.col("_under").shift(1).over(keys)).fill_null(True).cum_sum().over(keys).alias("_run"))
        .filter(pl.col("_under"))
        .group_by(*keys, "_run")
        .agg(pl.len().alias("_length"))
        .group_by(keys)
        .agg(pl.col("_length").max().cast(pl.Int64).alias("drawdown_days"))
    )
    x = r - risk_free
    paired = b.is_not_null()
    xp, yp = x.filter(paired), (b - risk_free).filter(paired)
    active = (r - b).filter(paired)
    n = pl.len().cast(pl.Int64)
    stats = frame.group_by(keys).agg(
        n.alias("days"),
        pl.col("date").min().alias("first_date"),
        pl.col("date").max().alias("last_date"),
        ((1.0 + r).product() - 1.0).alias("cumulative_return"),
        (r.std(ddof=DDOF) * math.sqrt(a)).alias("volatility"),
        (x.mean() / _positive(x.std(ddof=DDOF)) * math.sqrt(a)).alias("sharpe"),
        (x.mean() * a / _positive(x.clip(upper_bound=0.0).pow(2).mean().sqrt() * math.sqrt(a))).alias("sortino"),
        pl.col("_drawdown").min().alias("max_drawdown"),
        (pl.cov(xp, yp, ddof=0) / _positive(yp.var(ddof=0))).alias("beta"),
        xp.mean().alias("_mean_x"),
        yp.mean().alias("_mean_y"),
        ((1.0 + b.filter(paired)).product() - 1.0).alias("benchmark_cumulative_return"),
        paired.sum().cast(pl.Int64).alias("_paired"),
        (active.std(ddof=DDOF) * math.sqrt(a)).alias("_te"),
        active.mean().alias("_mean_active"),
    )
    cumulative = pl.col("cumulative_return")
    annualised = _finite(pl.when(cumulative > -1.0).then((1.0 + cumulative).pow(a / pl.col("days")) - 1.0))
    te = _positive(pl.col("_te"))
    out = (
        stats.join(runs, on=keys, how="left")
        .with_columns(
            annualised.alias("annualised_return"),
            pl.col("drawdown_days").fill_null(0),
            pl.when(pl.col("_paired") > 0).then(pl.col("benchmark_cumulative_return")).alias("benchmark_cumulative_return"),
            te.alias("tracking_error"),
            (pl.col("_mean_active") * a / te).alias("information_ratio"),
            (1.0 + pl.col("_mean_x") - pl.col("beta") * pl.col("_mean_y")).pow(a).sub(1.0).alias("alpha"),
        )
        .with_columns((pl.col("annualised_return") / _positive(-pl.col("max_drawdown"))).alias("calmar"))
    )
    columns = [
        "days", "first_date", "last_date", "cumulative_return", "annualised_return", "volatility", "sharpe",
        "sortino", "max_drawdown", "drawdown_days", "calmar", "benchmark_cumulative_return", "beta", "alpha",
        "tracking_error", "information_ratio",
    ]
    floats = [c for c in columns if c not in ("days", "first_date", "last_date", "drawdown_days")]
    return (
        out.select(*keys, *columns)
        .with_columns([_finite(pl.col(c)).alias(c) for c in floats])
        .sort(keys)
        .collect()
    )


def return_statistics(
    returns: np.ndarray, benchmark: np.ndarray | None = None, risk_free: float = 0.0
) -> dict[str, float | int | None]:
    """``period_statistics`` of one daily return series (``benchmark`` aligned day by day), as
    a dict: days, cumulative_return, annualised_return, volatility, sharpe, sortino,
    max_drawdown, drawdown_days, calmar, beta, alpha, tracking_error, information_ratio.
    Raises ``ValueError`` when the benchmark's length differs."""
    r = np.asarray(returns, dtype=np.float64)
    # consecutive stand-in dates: only their order matters
    frame = pl.DataFrame({"date": pl.Series(np.arange(r.size, dtype=np.int32)).cast(pl.Date), "daily_return": r})
    if benchmark is not None:
        b = np.asarray(benchmark, dtype=np.float64)
        if b.size != r.size:
            raise ValueError(f"benchmark has {b.size} returns, the series {r.size}")
        frame = frame.with_columns(pl.Series("benchmark_return", b))
    stats = period_statistics(frame.with_columns(pl.lit(0).alias("_series")), ["_series"], risk_free)
    keys = ("days", "cumulative_return", "annualised_return", "volatility", "sharpe", "sortino", "max_drawdown",
            "drawdown_days", "calmar", "beta", "alpha", "tracking_error", "information_ratio")
    if stats.height == 0:
        return {k: (0 if k in ("days", "drawdown_days") else 0.0 if k == "max_drawdown" else None) for k in keys}
    row = stats.row(0, named=True)
    return {k: row[k] for k in keys}


# --- periods, benchmark alignment, money-weighted return and the performance table ----------
PERIODS = ("MTD", "QTD", "YTD", "1Y", "3Y", "ITD")
NO_RETURNS = "no returns in the period"
SHORT_HISTORY = "history shorter than the period"
NO_IRR = "no money-weighted return solves the flows"


def _years_back(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def period_starts(as_of: date) -> dict[str, date | None]:
    """The first calendar day of each of ``PERIODS`` ending on ``as_of`` (None: since inception).

    MTD, QTD, YTD start on the first day of the month, quarter, year of ``as_of``; 1Y and 3Y on
    the day after the same date one and three years earlier (a period of 365 or 366 days)."""
    quarter = date(as_of.year, 3 * ((as_of.month - 1) // 3) + 1, 1)
    return {
        "MTD": as_of.replace(day=1),
        "QTD": quarter,
        "YTD": date(as_of.year, 1, 1),
        "1Y": _years_back(as_of, 1) + timedelta(days=1),
        "3Y": _years_back(as_of, 3) + timedelta(days=1),
        "ITD": None,
    }


def with_benchmark_returns(returns: pl.DataFrame, portfolios: pl.DataFrame, benchmark_returns: pl.DataFrame) -> pl.DataFrame:
    """``returns`` (``RETURNS_DAILY_SCHEMA``) plus ``benchmark_id`` (the portfolio's) and
    ``benchmark_return``: its benchmark's return that day in the portfolio's base currency
    (``transforms.market_returns.benchmark_returns``); null without a benchmark or a return."""
    bench = benchmark_returns.select(
        "benchmark_id", "base_currency", "date", pl.col("daily_return").alias("benchmark_return")
    )
    return (
        returns.join(portfolios.select("portfolio_id", "benchmark_id").unique("portfolio_id"), on="portfolio_id", how="left")
        .join(bench, on=["benchmark_id", "base_currency", "date"], how="left")
        .sort("portfolio_id", "date")
    )


def xirr(times: np.ndarray, amounts: np.ndarray, end_time: float, end_value: float) -> float | None:
    """The annual rate ``x`` at which ``amounts`` invested at ``times`` (years from the start)
    grow to ``end_value`` at ``end_time``: ``sum_i a_i (1 + x) ** (end_time - t_i) = end_value``
    (money put in is positive). Solved with ``scipy.optimize.brentq`` on a bracket widened
    until the sign changes; None when no rate in (-100%, 10^6) solves it (no money in, or
    flows that no single rate explains)."""
    if end_time <= 0 or not np.any(amounts):
        return None
    horizon = end_time - times

    def gap(rate: float) -> float:
        return float(np.sum(amounts * (1.0 + rate) ** horizon) - end_value)

    lo, hi = -0.999, 1.0
    f_lo, f_hi = gap(lo), gap(hi)
    while f_lo * f_hi > 0 and hi < 1e6:
        hi *= 10.0
        f_hi = gap(hi)
    if not (np.isfinite(f_lo) and np.isfinite(f_hi)) or f_lo * f_hi > 0:
        return None
    return float(brentq(gap, lo, hi, xtol=1e-14, rtol=1e-12, maxiter=200))


def money_weighted_returns(periods: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """The money-weighted return (XIRR) of each group of ``keys``.

    Input rows: one per day of the group, with ``date``, ``nav``, ``net_flows`` and ``capital``
    (``RETURNS_DAILY_SCHEMA``). The start value is the nav before the first day
    (``capital - net_flows`` of that day; 0 at inception), invested at time 0 = the start of
    the first day; each day's external flows are invested at the start of their day; the end
    value is the last day's nav at the end of that day. Times are calendar days / 365. Output:
    ``keys``, money_weighted_return (over the period: ``(1 + x) ** (days / 365) - 1``),
    money_weighted_return_annualised (``x``), mwr_note. A group with a null nav or flow, or no
    solution, has null returns and a note.
    """
    rows = periods.sort(*keys, "date").select(
        *keys,
        "date",
        pl.col("net_flows").fill_null(0.0),
        "nav",
        (pl.col("capital") - pl.col("net_flows").fill_null(0.0)).first().over(keys).alias("_start_value"),
    )
    out: dict[str, list] = {k: [] for k in keys} | {"money_weighted_return": [], "money_weighted_return_annualised": [], "mwr_note": []}
    # one small root-finding problem per group (a portfolio's flows over a period): scipy's
    # brentq takes one scalar function at a time
    for key, part in rows.group_by(keys, maintain_order=True):
        days = part["date"].to_physical().cast(pl.Int64).to_numpy()
        day_offsets = (days - days[0]).astype(np.float64)
        end_time = (days[-1] - days[0] + 1) / 365.0
        start_value = part["_start_value"][0]
        nav = part["nav"][-1]
        x, note = None, None
        if start_value is None or nav is None or part["nav"].null_count():
            note = NAV_UNKNOWN
        else:
            amounts = np.concatenate([[start_value], part["net_flows"].to_numpy()])
            times = np.concatenate([[0.0], day_offsets / 365.0])
            x = xirr(times, amounts, end_time, nav)
            note = None if x is not None else NO_IRR
        for k, v in zip(keys, key):
            out[k].append(v)
        out["money_weighted_return_annualised"].append(x)
        out["money_weighted_return"].append(None if x is None else (1.0 + x) ** end_time - 1.0)
        out["mwr_note"].append(note)
    schema = {k: periods.schema[k] for k in keys} | {
        "money_weighted_return": pl.Float64, "money_weighted_return_annualised": pl.Float64, "mwr_note": pl.String
    }
    return pl.DataFrame(out, schema=schema)


def performance(
    returns: pl.DataFrame,
    portfolios: pl.DataFrame,
    benchmark_returns: pl.DataFrame,
    as_of: date | None = None,
    risk_free: float = 0.0,
) -> pl.DataFrame:
    """``PERFORMANCE_SCHEMA``: one row per portfolio with returns and period of ``PERIODS``
    ending on ``as_of`` (default: the last date of ``returns``), sorted by portfolio and period.

    ``returns`` are ``returns_daily`` rows, ``benchmark_returns`` those of
    ``transforms.market_returns.benchmark_returns``, ``risk_free`` the per-period rate. Each
    row holds ``period_statistics`` of the period's days (against the portfolio's benchmark in
    its base currency) and the ``money_weighted_returns``. Rules:

    - a period covers the valued days from its start (``period_starts``) to ``as_of``; a
      portfolio valued only from later (incepted within the period) is measured from its first
      valued day, except for 1Y and 3Y: a history shorter than the period has no figures and the
      note ``SHORT_HISTORY``;
    - returns are not annualised over less than a year (GIPS): annualised_return, calmar and
      the annualised money-weighted return are null when the period spans under 365 days;
    - ``days_without_return`` counts the period's days whose return is null (``return_note``);
      a period with no return at all has the note ``NO_RETURNS``.
    """
    daily = with_benchmark_returns(returns, portfolios, benchmark_returns)
    if as_of is None:
        as_of = daily["date"].max()
    keys = ["portfolio_id", "period"]
    grid_periods = pl.DataFrame(
        {"period": list(PERIODS), "period_start": [period_starts(as_of)[p] for p in PERIODS] if as_of else [None] * len(PERIODS)},
        schema={"period": pl.String, "period_start": pl.Date},
    )
    daily = daily.filter(pl.col("date") <= as_of) if as_of else daily.clear()
    ids = daily.group_by("portfolio_id").agg(
        pl.col("base_currency").first(), pl.col("benchmark_id").first(), pl.col("date").min().alias("inception")
    )
    rows = daily.join(grid_periods, how="cross").filter(
        pl.col("period_start").is_null() | (pl.col("date") >= pl.col("period_start"))
    )
    stats = period_statistics(rows, keys, risk_free)
    mwr = money_weighted_returns(rows, keys) if rows.height else None
    missing = rows.group_by(keys).agg(pl.col("daily_return").null_count().cast(pl.Int64).alias("days_without_return"))
    start = pl.coalesce(pl.max_horizontal("period_start", "inception"), "inception")
    out = (
        ids.join(grid_periods, how="cross")
        .join(stats, on=keys, how="left")
        .join(missing, on=keys, how="left")
        .with_columns(
            start.alias("start_date"),
            pl.lit(as_of, dtype=pl.Date).alias("end_date"),
            pl.col("days").fill_null(0),
            pl.col("days_without_return").fill_null(0),
        )
    )
    if mwr is not None:
        out = out.join(mwr, on=keys, how="left")
    else:
        out = out.with_columns(
            pl.lit(None, dtype=pl.Float64).alias("money_weighted_return"),
            pl.lit(None, dtype=pl.Float64).alias("money_weighted_return_annualised"),
            pl.lit(None, dtype=pl.String).alias("mwr_note"),
        )
    short = pl.col("period").is_in(["1Y", "3Y"]) & (pl.col("inception") > pl.col("period_start"))
    under_a_year = (pl.col("end_date") - pl.col("start_date")).dt.total_days() + 1 < 365
    figures = [c for c, t in PERFORMANCE_SCHEMA.items() if t == pl.Float64]
    out = out.with_columns(
        pl.when(short).then(pl.lit(SHORT_HISTORY)).when(pl.col("days") == 0).then(pl.lit(NO_RETURNS))
        .otherwise(pl.col("mwr_note")).alias("note"),
    ).with_columns(
        [pl.when(~short).then(pl.col(c)).alias(c) for c in figures]
    ).with_columns(
        [pl.when(~under_a_year).then(pl.col(c)).alias(c) for c in ("annualised_return", "calmar", "money_weighted_return_annualised")]
    )
    order = pl.DataFrame({"period": list(PERIODS)}).with_row_index("_order")
    return (
        out.join(order, on="period")
        .sort("portfolio_id", "_order")
        .select([pl.col(c).cast(t) for c, t in PERFORMANCE_SCHEMA.items()])
    )
