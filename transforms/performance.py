"""Performance: daily time-weighted returns and the statistics built on a return series.

Conventions (day count, ddof, risk-free rate, external flows) are those of
``transforms.conventions``; the formulas below state them again where they are used.

- ``returns_daily(daily_valuations)``: one row per portfolio and business day
  (``RETURNS_DAILY_SCHEMA``), flows removed, chain-linked.
- ``return_statistics(returns, benchmark, risk_free)``: cumulative and annualised return,
  volatility, Sharpe, Sortino, maximum drawdown and its duration, Calmar and, against a
  benchmark, beta, alpha, tracking error and information ratio. Where empyrical defines the
  same statistic the formula is empyrical's (the tests compare to 1e-8).
  ``period_statistics(returns, keys, risk_free)``: the same, per group, in one query.
- ``money_weighted_returns(rows, keys)``: the money-weighted return (XIRR) per group, the rate
  ``x`` with ``sum_i a_i (1 + x) ** (T - t_i) = nav_T`` (``xirr`` for one series), every group
  solved in one vectorised call.
- ``performance(...)``: both, per portfolio and period (MTD .. ITD), in ``PERFORMANCE_SCHEMA``.
"""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import polars as pl
from scipy.optimize import brentq
from scipy.optimize.elementwise import find_root

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
    r, b, g = pl.col("daily_return"), pl.col("benchmark_return"), pl.col("_g")
    rows = _in_group_order(
        frame.select(*keys, "date", r.cast(pl.Float64), b.cast(pl.Float64)).filter(r.is_not_null()).collect(), keys
    )
    # each cumulative window is its own step over the sorted integer group id, so that only
    # the cumulative operation runs group by group (and on slices, not on hashed keys)
    frame = (
        rows.lazy()
        .with_columns((1.0 + r).cum_prod().over(g).alias("_wealth"))
        .with_columns(pl.col("_wealth").cum_max().over(g).alias("_peak"))
        .with_columns((pl.col("_wealth") / pl.max_horizontal(pl.col("_peak"), pl.lit(1.0)) - 1.0).alias("_drawdown"))
    )
    # runs of consecutive days under water: a run-length encoding of (group, under water)
    # never lets a run cross from one group to the next
    runs = (
        frame.select(pl.struct(g, (pl.col("_drawdown") < 0).alias("_under")).rle().alias("_rle"))
        .unnest("_rle")
        .unnest("value")
        .filter(pl.col("_under"))
        .group_by(g)
        .agg(pl.col("len").max().cast(pl.Int64).alias("drawdown_days"))
    )
    x, y = r - risk_free, b - risk_free
    series_stats = [
        *[pl.col(k).first() for k in keys],
        pl.len().cast(pl.Int64).alias("days"),
        pl.col("date").min().alias("first_date"),
        pl.col("date").max().alias("last_date"),
        # the wealth's last value is prod(1 + r), multiplied in the same order
        (pl.col("_wealth").last() - 1.0).alias("cumulative_return"),
        (r.std(ddof=DDOF) * math.sqrt(a)).alias("volatility"),
        (x.mean() / _positive(x.std(ddof=DDOF)) * math.sqrt(a)).alias("sharpe"),
        (x.mean() * a / _positive(x.clip(upper_bound=0.0).pow(2).mean().sqrt() * math.sqrt(a))).alias("sortino"),
        pl.col("_drawdown").min().alias("max_drawdown"),
    ]
    benchmark_stats = [
        (pl.cov(x, y, ddof=0) / _positive(y.var(ddof=0))).alias("beta"),
        x.mean().alias("_mean_x"),
        y.mean().alias("_mean_y"),
        ((1.0 + b).product() - 1.0).alias("benchmark_cumulative_return"),
        ((r - b).std(ddof=DDOF) * math.sqrt(a)).alias("_te"),
        (r - b).mean().alias("_mean_active"),
    ]
    if rows["benchmark_return"].null_count():
        # the benchmark statistics over the paired days: filtering the rows once costs far
        # less than a filter within each group and aggregation (a group without paired days
        # is absent from them)
        stats = frame.group_by(g).agg(series_stats).join(
            frame.filter(b.is_not_null()).group_by(g).agg(benchmark_stats), on="_g", how="left"
        )
    else:  # every day paired: one pass over the groups
        stats = frame.group_by(g).agg(*series_stats, *benchmark_stats)
    cumulative = pl.col("cumulative_return")
    annualised = _finite(pl.when(cumulative > -1.0).then((1.0 + cumulative).pow(a / pl.col("days")) - 1.0))
    te = _positive(pl.col("_te"))
    out = (
        stats.join(runs, on="_g", how="left")
        .with_columns(
            annualised.alias("annualised_return"),
            pl.col("drawdown_days").fill_null(0),
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


def _in_group_order(frame: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """``frame`` with each group of ``keys`` in consecutive rows in date order, and ``_g``: an
    integer id per group (a run id of the keys), flagged as sorted.

    The frame is sorted by (keys, date) only when it is not in such an order already: callers
    usually pass rows sorted by portfolio and date, and the check costs a fraction of the sort.
    The order holds when the dates rise (or stay) within each run of equal keys and no key
    comes back in a later run. A sorted integer id lets ``over`` and ``group_by`` slice the
    groups instead of hashing the keys.
    """
    key = pl.col(keys[0]) if len(keys) == 1 else pl.struct(keys)
    g, day = pl.col("_g"), pl.col("date")
    # one chunk per column (a concatenation has many): the windows and groups run on it faster
    frame = frame.rechunk().with_columns(key.rle_id().set_sorted().alias("_g"))
    new_run = (g != g.shift(1)).fill_null(True)
    ordered = frame.height == 0 or (
        frame["date"].null_count() == 0
        and frame.select((new_run | (day >= day.shift(1))).all()).item()
        and not frame.filter(new_run).select(keys).is_duplicated().any()
    )
    if ordered:
        return frame
    return frame.sort(*keys, "date").with_columns(key.rle_id().set_sorted().alias("_g"))


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


# the bracket xirr searches and brentq's tolerances, shared by the one-series and the
# vectorised solver so that both stop at the same places
_LOWEST_RATE, _FIRST_HIGH_RATE, _HIGHEST_RATE = -0.999, 1.0, 1e6
_XTOL, _RTOL = 1e-14, 1e-12


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

    lo, hi = _LOWEST_RATE, _FIRST_HIGH_RATE
    f_lo, f_hi = gap(lo), gap(hi)
    while f_lo * f_hi > 0 and hi < _HIGHEST_RATE:
        hi *= 10.0
        f_hi = gap(hi)
    if not (np.isfinite(f_lo) and np.isfinite(f_hi)) or f_lo * f_hi > 0:
        return None
    return float(brentq(gap, lo, hi, xtol=_XTOL, rtol=_RTOL, maxiter=200))


def _only_rate(
    group: np.ndarray, times: np.ndarray, amounts: np.ndarray, end_time: np.ndarray, end_value: np.ndarray, rate: np.ndarray
) -> np.ndarray:
    """Per group (the arguments of ``_xirr_groups``; ``rate`` a root of each group's equation,
    NaN where there is none): True where the equation has no other root in (-100%, inf), so
    that every bracketing solver, brentq included, finds this one.

    The rule (the project balance, or Norstrom's criterion, taken at the rate): with the cash
    flows ``c_0..c_m`` in time order (the amounts, then ``-end_value`` at ``end_time``) at times
    ``t_k``, the equation is ``sum c_k (1 + x) ** -t_k = 0``. Let ``P_k`` be the running sums of
    the flows' present values at ``rate``, ``sum_{j<=k} c_j (1 + rate) ** -t_j`` (``P_m`` is 0
    up to rounding). Summed by parts, the equation at a rate above ``rate`` is a Laplace
    transform of the step function of the ``P_k``, and at a rate below it one of the sums still
    to come, ``P_m - P_(k-1)``; a Laplace transform has no more zeros than its function has
    sign changes (Descartes' rule of signs for Laplace transforms). When every ``P_k`` before
    the end has the same sign and exceeds ``|P_m|`` (by 1e-9 of the flows, far above rounding),
    each side has at most one sign change between them, and ``rate`` is the only root.
    """
    n = rate.size
    growth = 1.0 + rate
    with np.errstate(all="ignore"):  # an infinite present value certifies nothing (NaN below)
        present = amounts * growth[group] ** -times
        end_present = -end_value * growth ** -end_time
    # running sums within each group, in time order: a cumulative sum over all the groups would
    # round each group's sums to the size of all the flows before it
    running = pl.DataFrame({"g": group, "pv": present}).select(pl.col("pv").cum_sum().over("g"))["pv"].to_numpy()
    counts = np.bincount(group, minlength=n)
    first = np.cumsum(counts) - counts
    last = np.add.reduceat(present, first)  # P_(m-1)
    scale = np.add.reduceat(np.abs(present), first) + np.abs(end_present)
    margin = np.abs(last + end_present) + 1e-9 * scale
    low, high = np.minimum.reduceat(running, first), np.maximum.reduceat(running, first)
    return (low > margin) | (high < -margin)


def _xirr_groups(
    group: np.ndarray, times: np.ndarray, amounts: np.ndarray, end_time: np.ndarray, end_value: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``xirr`` of many groups at once: (rate per group, NaN where ``xirr`` is None; True per
    group left for ``xirr`` to solve).

    ``group`` numbers each flow's group (0..n-1, sorted, each group's flows in time order, at
    least one per group), ``times`` and ``amounts`` are the flows (years from the start, money
    in positive), ``end_time`` and ``end_value`` per group. The bracket is widened as in
    ``xirr``, all groups together, with the same None where no bracket is found; inside a
    bracket ``scipy.optimize.elementwise.find_root`` (Chandrupatla's bracketing method, every
    group in one vectorised call) finds a root to brentq's tolerances. Where that root is the
    only one (``_only_rate``: the usual case) brentq would find it too; a group whose equation
    may have other roots, or that find_root does not solve, is NaN and flagged, so that the
    rate chosen among several stays brentq's.
    """
    n = end_time.size
    counts = np.bincount(group, minlength=n)
    first = np.cumsum(counts) - counts
    horizon = end_time[group] - times

    def gap(rate: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``sum_i a_i (1 + rate) ** h_i - end_value`` of groups ``ids`` (one rate each)."""
        if ids.size == 0:
            return np.empty(0)
        c = counts[ids]
        start = np.cumsum(c) - c
        # positions of the flows of groups ids, group after group
        at = np.repeat(first[ids] - start, c) + np.arange(int(c.sum()))
        terms = amounts[at] * (1.0 + np.repeat(rate, c)) ** horizon[at]
        return np.add.reduceat(terms, start) - end_value[ids]

    everyone = np.arange(n)
    lo, hi = np.full(n, _LOWEST_RATE), np.full(n, _FIRST_HIGH_RATE)
    rate = np.full(n, np.nan)
    with np.errstate(all="ignore"):  # overflowing growth is an infinite gap: no rate, as in xirr
        f_lo, f_hi = gap(lo, everyone), gap(hi, everyone)
        widen = np.flatnonzero((f_lo * f_hi > 0) & (hi < _HIGHEST_RATE))
        while widen.size:
            hi[widen] *= 10.0
            f_hi[widen] = gap(hi[widen], widen)
            widen = widen[(f_lo[widen] * f_hi[widen] > 0) & (hi[widen] < _HIGHEST_RATE)]
        bracketed = np.isfinite(f_lo) & np.isfinite(f_hi) & ~(f_lo * f_hi > 0)
        # brentq returns an end of the bracket where the gap is exactly 0, the lower first
        rate[bracketed & (f_lo == 0)] = _LOWEST_RATE
        at_hi = bracketed & (f_lo != 0) & (f_hi == 0)
        rate[at_hi] = hi[at_hi]
        inside = bracketed & (f_lo != 0) & (f_hi != 0)
        ids = np.flatnonzero(inside)
        if ids.size:
            found = find_root(gap, (lo[ids], hi[ids]), args=(ids,), tolerances={"xatol": _XTOL, "xrtol": _RTOL})
            rate[ids] = np.where(found.status == 0, found.x, np.nan)
    unsure = inside & ~_only_rate(group, times, amounts, end_time, end_value, rate)
    rate[unsure] = np.nan
    return rate, unsure


def money_weighted_returns(periods: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """The money-weighted return (XIRR) of each group of ``keys``, sorted by ``keys``.

    Input rows: one per day of the group, with ``date``, ``nav``, ``net_flows`` and ``capital``
    (``RETURNS_DAILY_SCHEMA``). The start value is the nav before the first day
    (``capital - net_flows`` of that day; 0 at inception), invested at time 0 = the start of
    the first day; each day's external flows are invested at the start of their day; the end
    value is the last day's nav at the end of that day. Times are calendar days / 365. Output:
    ``keys``, money_weighted_return (over the period: ``(1 + x) ** (days / 365) - 1``),
    money_weighted_return_annualised (``x``), mwr_note. A group with a null nav or flow, or no
    solution, has null returns and a note.

    The rate ``x`` is ``xirr``'s for each group (the same bracket and tolerances): all groups
    are solved together (``_xirr_groups``), and a group whose flows may admit several rates
    is solved by ``xirr`` itself, so that the rate chosen among several is brentq's.
    """
    flows = pl.col("net_flows").fill_null(0.0)
    rows = _in_group_order(periods.select(*keys, "date", flows, "nav", "capital"), keys)
    g = pl.col("_g")
    groups = (
        rows.group_by(g)
        .agg(
            *[pl.col(k).first() for k in keys],
            pl.len().alias("_rows"),
            pl.col("date").first().to_physical().cast(pl.Int64).alias("_first_day"),
            pl.col("date").last().to_physical().cast(pl.Int64).alias("_last_day"),
            (pl.col("capital") - pl.col("net_flows")).first().alias("_start_value"),
            pl.col("nav").last().alias("_end_value"),
            pl.col("nav").null_count().alias("_nav_nulls"),
        )
        .sort(g)
    )
    n = groups.height
    first_day, last_day = groups["_first_day"].to_numpy(), groups["_last_day"].to_numpy()
    end_time = (last_day - first_day + 1) / 365.0
    known = (groups["_start_value"].is_not_null() & groups["_end_value"].is_not_null() & (groups["_nav_nulls"] == 0)).to_numpy()
    start_value = groups["_start_value"].fill_null(0.0).to_numpy()
    end_value = groups["_end_value"].fill_null(0.0).to_numpy()
    # the cash flows: each group's start value at time 0, then its days' flows; a zero amount
    # adds nothing to the equation and is left out (and xirr finds no rate without money in)
    row_group = rows["_g"].to_numpy().astype(np.int64)
    row_days = rows["date"].to_physical().cast(pl.Int64).to_numpy()
    row_flows = rows["net_flows"].to_numpy()
    moved = np.flatnonzero(known[row_group] & (row_flows != 0))
    started = np.flatnonzero(known & (start_value != 0))
    group = np.concatenate([started, row_group[moved]])
    order = np.argsort(group, kind="stable")  # each group: the start value, then its days in order
    group = group[order]
    times = np.concatenate([np.zeros(started.size), (row_days[moved] - first_day[row_group[moved]]) / 365.0])[order]
    amounts = np.concatenate([start_value[started], row_flows[moved]])[order]
    solve = np.bincount(group, minlength=n) > 0
    number = np.cumsum(solve) - 1  # the groups to solve, numbered 0..
    rate = np.full(n, np.nan)
    ask_xirr = np.zeros(n, dtype=bool)
    if solve.any():
        rate[solve], ask_xirr[solve] = _xirr_groups(number[group], times, amounts, end_time[solve], end_value[solve])
    # the few groups whose flows may admit several rates: xirr on all their days, as before
    row_count = groups["_rows"].to_numpy()
    row_first = np.cumsum(row_count) - row_count
    for j in np.flatnonzero(ask_xirr):
        part = slice(row_first[j], row_first[j] + row_count[j])
        one = xirr(
            np.concatenate([[0.0], (row_days[part] - first_day[j]).astype(np.float64) / 365.0]),
            np.concatenate([[start_value[j]], row_flows[part]]),
            end_time[j],
            end_value[j],
        )
        rate[j] = np.nan if one is None else one
    schema = {k: periods.schema[k] for k in keys} | {
        "money_weighted_return": pl.Float64, "money_weighted_return_annualised": pl.Float64, "mwr_note": pl.String
    }
    x = pl.col("money_weighted_return_annualised")
    return (
        groups.select(*keys)
        .with_columns(
            pl.Series("money_weighted_return_annualised", rate).fill_nan(None),
            pl.Series("_known", known),
            pl.Series("_end_time", end_time),
        )
        .with_columns(
            ((1.0 + x).pow(pl.col("_end_time")) - 1.0).alias("money_weighted_return"),
            pl.when(~pl.col("_known")).then(pl.lit(NAV_UNKNOWN)).when(x.is_null()).then(pl.lit(NO_IRR)).alias("mwr_note"),
        )
        .select([pl.col(c).cast(t) for c, t in schema.items()])
        .sort(keys)
    )


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
    # the periods' rows one period after the other: each (portfolio, period) is then a run of
    # rows in date order (daily is sorted by portfolio and date), which period_statistics and
    # money_weighted_returns take as they are, where a cross join would interleave the periods
    # of each day and have them sort millions of rows
    columns = ["portfolio_id", "date", "daily_return", "benchmark_return", "nav", "net_flows", "capital"]
    rows = pl.concat(
        [
            daily.lazy()
            .select(columns)
            .filter(pl.lit(True) if start is None else pl.col("date") >= start)
            .with_columns(pl.lit(period).alias("period"))
            for period, start in grid_periods.iter_rows()
        ]
    ).collect()
    stats = period_statistics(rows, keys, risk_free)
    mwr = money_weighted_returns(rows, keys) if rows.height else None
    missing = daily.group_by("portfolio_id").agg(
        (pl.col("daily_return").is_null() & (pl.lit(True) if start is None else pl.col("date") >= start)).sum().alias(period)
        for period, start in grid_periods.iter_rows()
    ).unpivot(index="portfolio_id", variable_name="period", value_name="days_without_return")
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
