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

import numpy as np
import polars as pl

from transforms.contract import RETURNS_DAILY_SCHEMA
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


def _none_if_not_finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def max_drawdown(returns: np.ndarray) -> tuple[float, int]:
    """(maximum drawdown, its longest duration in periods) of a daily return series.

    Wealth starts at 1 and compounds: ``W_t = prod(1 + r_1..t)``. The drawdown on day t is
    ``W_t / max(1, W_1..t) - 1`` (<= 0; empyrical's ``max_drawdown`` is its minimum). The
    duration is the longest run of consecutive days spent below an earlier peak (a drawdown
    still open at the end counts up to the last day)."""
    if returns.size == 0:
        return 0.0, 0
    wealth = np.cumprod(1.0 + returns)
    peak = np.maximum.accumulate(np.maximum(wealth, 1.0))
    drawdown = wealth / peak - 1.0
    under = drawdown < 0
    # lengths of the runs of days under water
    edges = np.diff(np.concatenate(([0], under.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    longest = int((ends - starts).max()) if starts.size else 0
    return float(drawdown.min()), longest


def return_statistics(
    returns: np.ndarray, benchmark: np.ndarray | None = None, risk_free: float = 0.0
) -> dict[str, float | int | None]:
    """Statistics of one daily return series (no nulls; ``benchmark`` aligned day by day).

    ``risk_free`` is the per-period rate (``conventions.risk_free_per_period``). With ``n``
    returns, ``A`` = ``PERIODS_PER_YEAR`` and ``x = r - risk_free``:

    - cumulative_return = prod(1 + r) - 1; annualised_return = (1 + cumulative) ** (A / n) - 1;
    - volatility = std(r, ddof=1) * sqrt(A);
    - sharpe = mean(x) / std(x, ddof=1) * sqrt(A);
    - sortino = mean(x) * A / (sqrt(mean(min(x, 0) ** 2)) * sqrt(A));
    - max_drawdown and drawdown_days: ``max_drawdown``; calmar = annualised / |max_drawdown|;
    - with a benchmark ``b`` (``y = b - risk_free``): beta = cov(x, y) / var(y);
      alpha = (1 + mean(x - beta * y)) ** A - 1; tracking_error = std(r - b, ddof=1) * sqrt(A);
      information_ratio = mean(r - b) * A / tracking_error.

    A statistic that cannot be computed (too few days, a zero deviation or drawdown) is None,
    never NaN or an infinity.
    """
    r = np.asarray(returns, dtype=np.float64)
    n = r.size
    a = PERIODS_PER_YEAR
    out: dict[str, float | int | None] = {"days": n}
    cumulative = float(np.prod(1.0 + r) - 1.0) if n else None
    out["cumulative_return"] = cumulative
    out["annualised_return"] = (
        _none_if_not_finite((1.0 + cumulative) ** (a / n) - 1.0) if n and cumulative > -1.0 else None
    )
    enough = n > DDOF
    out["volatility"] = _none_if_not_finite(np.std(r, ddof=DDOF) * math.sqrt(a)) if enough else None
    x = r - risk_free
    sd = np.std(x, ddof=DDOF) if enough else 0.0
    out["sharpe"] = _none_if_not_finite(np.mean(x) / sd * math.sqrt(a)) if sd > 0 else None
    downside = math.sqrt(np.mean(np.minimum(x, 0.0) ** 2)) * math.sqrt(a) if n else 0.0
    out["sortino"] = _none_if_not_finite(np.mean(x) * a / downside) if downside > 0 else None
    mdd, days = max_drawdown(r)
    out["max_drawdown"], out["drawdown_days"] = mdd, days
    annual = out["annualised_return"]
    out["calmar"] = _none_if_not_finite(annual / abs(mdd)) if mdd < 0 and annual is not None else None
    for key in ("beta", "alpha", "tracking_error", "information_ratio"):
        out[key] = None
    if benchmark is None:
        return out
    b = np.asarray(benchmark, dtype=np.float64)
    if b.size != n:
        raise ValueError(f"benchmark has {b.size} returns, the series {n}")
    y = b - risk_free
    var_y = np.mean((y - y.mean()) ** 2) if n else 0.0
    if var_y > 0:
        beta = float(np.mean((x - x.mean()) * (y - y.mean())) / var_y)
        out["beta"] = beta
        out["alpha"] = _none_if_not_finite((1.0 + np.mean(x - beta * y)) ** a - 1.0)
    active = r - b
    te = np.std(active, ddof=DDOF) * math.sqrt(a) if enough else 0.0
    if te > 0:
        out["tracking_error"] = float(te)
        out["information_ratio"] = _none_if_not_finite(np.mean(active) * a / te)
    return out
