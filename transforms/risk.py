"""Ex-ante risk of today's holdings: volatility, tracking error, VaR and CVaR (historical and
parametric) and the contributions of positions and sectors to volatility.

Inputs.

- ``holdings``: one row per (portfolio_id, instrument_id) with ``weight`` (f64, share of NAV,
  shorts negative), ``sector`` (str) and ``nav`` (f64, the portfolio's NAV in base currency,
  the same on each of its rows). **Cash** is a row whose ``sector`` is null: it is riskless
  (zero return, no covariance) and counts in no risk figure except through its weight.
- a covariance ``S`` (N x N, **per day**, any estimator of ``transforms.covariance``) with its
  instrument ``ids``, and for historical figures a ``ReturnMatrix`` (daily asset returns in
  the portfolios' base currency: call once per base currency).
- A non-cash holding whose instrument is not in ``ids`` (no return history, or too little to
  enter the return matrix) is **excluded**: it adds nothing to the risk figures, and the
  portfolio's rows say so (``note``, ``excluded_positions``, ``excluded_weight``). A portfolio
  whose every non-cash holding is excluded gets null risk figures, never a 0 it has not earned.

Formulas (``w`` the weights of the portfolio's covered positions, ``b`` the benchmark's):

- volatility ``sigma = sqrt(w' S w)`` per day; annualised ``sigma * sqrt(PERIODS_PER_YEAR)``;
  tracking error ``sqrt((w - b)' S (w - b))`` (instruments in either, absent ones weigh 0).
- marginal contribution ``(S w)_i / sigma``; component ``w_i (S w)_i / sigma``, summing to
  ``sigma`` over positions (Euler); share = component / sigma. A sector sums its positions'
  weights and components; its marginal is component / weight of its covered positions (the
  change in sigma per unit of weight when they all grow in proportion). Contributions are per
  day.
- VaR and CVaR are positive loss amounts (a negative VaR is a gain at that confidence), in base
  currency and as a fraction of NAV (amount = fraction * nav; nav must be > 0).

  - **parametric** (normal, zero mean, ``z = norm.ppf(c)``): ``sigma_h = sigma * sqrt(h)``
    (square-root-of-time scaling of the daily sigma); ``VaR = z * sigma_h``;
    ``CVaR = sigma_h * norm.pdf(z) / (1 - c)``.
  - **historical**: the portfolio's return on each past day from today's weights,
    ``r_t = w' x_t`` (P&L ``r_t * nav``); for a horizon ``h`` > 1 the overlapping ``h``-day
    windows, each asset's return **compounded** over the window (``prod(1 + x) - 1``: the
    positions are held, not rebalanced) then weighted. ``VaR = -quantile(r, 1 - c)`` with
    numpy's default ``linear`` interpolation (Hyndman & Fan type 7); ``CVaR = -mean(r_t for
    r_t <= -VaR)``. It needs at least ``ceil(1 / (1 - c))`` windows (one in the tail), else the
    row is null with a note.

Outputs (the schemas below): ``RISK_SCHEMA`` one row per portfolio; ``VAR_SCHEMA`` a long
frame, one row per (portfolio, method, confidence, horizon), easier to query in a warehouse
than sixteen columns; ``RISK_CONTRIBUTIONS_SCHEMA`` one row per position and per sector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view
from scipy.stats import norm

from transforms.contract import RISK_SCHEMA, VAR_SCHEMA, RISK_CONTRIBUTIONS_SCHEMA  # noqa: F401 (published schemas, defined in the contract)
from transforms.conventions import PERIODS_PER_YEAR
from transforms.frame_checks import collected_with, require_finite, require_no_nulls, require_unique
from transforms.covariance import (
    ReturnMatrix,
    _column_index,
    sample_covariance,
)

CONFIDENCES: tuple[float, ...] = (0.95, 0.99)
HORIZONS: tuple[int, ...] = (1, 10)
METHODS = ("historical", "parametric")
CASH_KEY = "CASH"  # the sector key of cash rows in the contributions
HOLDINGS_COLUMNS = ("portfolio_id", "instrument_id", "weight", "sector", "nav")

NO_HISTORY = "no return history: excluded from risk"
CASH_NOTE = "cash: riskless"
ZERO_VOLATILITY = "portfolio volatility is zero"
NO_COVERED = "no position with return history"
NO_BENCHMARK = "no benchmark weights"
NAV_UNKNOWN = "nav unknown"
NAV_NOT_POSITIVE = "nav is zero or negative"
TOO_FEW = "too few return windows for the confidence"


# --- numpy: one portfolio, or many along an axis -------------------------------------------------


def portfolio_volatility(w: np.ndarray, covariance: np.ndarray) -> float:
    """``sqrt(w' S w)`` for weights ``w`` (N) and covariance ``S`` (N x N); a rounding-error
    negative variance counts as 0."""
    w = np.asarray(w, dtype=np.float64)
    return math.sqrt(max(float(w @ np.asarray(covariance) @ w), 0.0))


def risk_contributions_of(w: np.ndarray, covariance: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(sigma, marginal, component) of weights ``w`` under covariance ``S``: ``sigma =
    sqrt(w' S w)``, marginal ``S w / sigma``, component ``w * S w / sigma`` (sums to sigma).
    With ``sigma`` = 0 the contributions are undefined: ``ValueError``."""
    w = np.asarray(w, dtype=np.float64)
    sw = np.asarray(covariance) @ w
    sigma = math.sqrt(max(float(w @ sw), 0.0))
    if sigma == 0.0:
        raise ValueError("risk contributions are undefined for a portfolio of zero volatility")
    return sigma, sw / sigma, w * sw / sigma


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"a confidence must be strictly between 0 and 1, got {confidence}")


def _check_horizon(horizon: int) -> None:
    if int(horizon) != horizon or horizon < 1:
        raise ValueError(f"a horizon must be a whole number of days >= 1, got {horizon}")


def parametric_var(sigma: float | np.ndarray, confidence: float, horizon: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(VaR, CVaR) of a normal, zero-mean loss with daily standard deviation ``sigma`` over
    ``horizon`` days: ``sigma_h = sigma * sqrt(horizon)``, ``VaR = norm.ppf(c) * sigma_h``,
    ``CVaR = sigma_h * norm.pdf(norm.ppf(c)) / (1 - c)``; in the units of ``sigma``."""
    _check_confidence(confidence)
    _check_horizon(horizon)
    z = norm.ppf(confidence)
    s = np.asarray(sigma, dtype=np.float64) * math.sqrt(horizon)
    return z * s, s * norm.pdf(z) / (1.0 - confidence)


def historical_var(pnl: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """(VaR, CVaR) of the P&L (or returns) ``pnl`` along axis 0 (a series, or one column per
    portfolio): ``VaR = -numpy.quantile(pnl, 1 - c)`` (``linear`` interpolation),
    ``CVaR = -mean(pnl[pnl <= -VaR])``. Needs at least one observation."""
    _check_confidence(confidence)
    x = np.asarray(pnl, dtype=np.float64)
    if x.shape[0] == 0:
        raise ValueError("historical VaR needs at least one observation")
    q = np.quantile(x, 1.0 - confidence, axis=0)
    tail = x <= q
    # the smallest observation is always <= the quantile, so the tail is never empty
    cvar = -np.sum(np.where(tail, x, 0.0), axis=0) / np.sum(tail, axis=0)
    return 0.0 - q, cvar + 0.0  # 0.0 - x: no -0.0 for a riskless portfolio


def horizon_returns(X: np.ndarray, horizon: int) -> np.ndarray:
    """The overlapping ``horizon``-day compounded returns of each column of ``X`` (T x N):
    row ``t`` is ``prod(1 + X[t : t + horizon]) - 1``; ``T - horizon + 1`` rows (none when
    ``T < horizon``). ``horizon`` = 1 returns ``X``."""
    _check_horizon(horizon)
    a = np.asarray(X, dtype=np.float64)
    if horizon == 1:
        return a
    if a.shape[0] < horizon:
        return np.zeros((0, a.shape[1]))
    return sliding_window_view(1.0 + a, horizon, axis=0).prod(axis=-1) - 1.0


# --- frames ------------------------------------------------------------------------------------


def _holdings(holdings: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Validated holdings (the ``HOLDINGS_COLUMNS``), sorted by portfolio and instrument."""
    df = collected_with(holdings, HOLDINGS_COLUMNS, "holdings").select(
        pl.col("portfolio_id").cast(pl.String),
        pl.col("instrument_id").cast(pl.String),
        pl.col("weight").cast(pl.Float64),
        pl.col("sector").cast(pl.String),
        pl.col("nav").cast(pl.Float64),
    )
    require_no_nulls(df, ("portfolio_id", "instrument_id", "weight"), "holdings")
    require_unique(df, ["portfolio_id", "instrument_id"], "holdings")
    require_finite(df, ("weight", "nav"), "holdings")
    navs = df.group_by("portfolio_id").agg(pl.col("nav").n_unique().alias("n"))
    if (navs["n"] > 1).any():
        raise ValueError(f"holdings give portfolio {navs.filter(pl.col('n') > 1)['portfolio_id'][0]!r} more than one nav")
    return df.sort("portfolio_id", "instrument_id")


def _universe(ids: Sequence[str], covariance: np.ndarray) -> tuple[pl.DataFrame, np.ndarray]:
    """The instrument -> column frame (instrument_id, _col) and the validated covariance."""
    s = np.asarray(covariance, dtype=np.float64)
    n = len(ids)
    if s.shape != (n, n):
        raise ValueError(f"covariance is {s.shape}, expected {n} x {n} for {n} ids")
    if not np.isfinite(s).all():
        raise ValueError("covariance has NaN or infinite values")
    if len(set(ids)) != n:
        raise ValueError("ids has duplicates")
    return _column_index(ids), s


class _Book:
    """Holdings laid out for numpy: portfolios (sorted) as rows, the covered instruments they
    hold (a subset of the universe) as columns."""

    def __init__(self, holdings: pl.DataFrame, universe: pl.DataFrame, extra_cols: np.ndarray | None = None) -> None:
        rows = holdings.join(universe, on="instrument_id", how="left").with_columns(
            pl.col("sector").is_null().alias("cash"),
        )
        rows = rows.with_columns(
            (pl.col("_col").is_null() & ~pl.col("cash")).alias("excluded"),
            pl.when(pl.col("cash")).then(None).otherwise(pl.col("_col")).alias("_col"),
        )
        self.portfolios = rows["portfolio_id"].unique().sort()
        self.rows = rows.with_columns(self.portfolios.search_sorted(rows["portfolio_id"]).cast(pl.Int64).alias("_p"))
        covered = self.rows.filter(pl.col("_col").is_not_null())
        held = covered["_col"].to_numpy()
        self.cols = np.unique(held if extra_cols is None else np.concatenate([held, extra_cols]))
        self.weights = self.matrix(covered["_p"].to_numpy(), covered["_col"].to_numpy(), covered["weight"].to_numpy())
        stats = (
            self.rows.group_by("_p")
            .agg(
                pl.col("nav").first(),
                (~pl.col("cash")).sum().cast(pl.Int64).alias("positions"),
                pl.col("excluded").sum().cast(pl.Int64).alias("excluded_positions"),
                pl.col("weight").filter(pl.col("excluded")).sum().alias("excluded_weight"),
                (pl.col("_col").is_not_null()).sum().cast(pl.Int64).alias("covered"),
            )
            .sort("_p")
        )
        self.stats = stats.with_columns(pl.Series("portfolio_id", self.portfolios))

    def matrix(self, p: np.ndarray, col: np.ndarray, w: np.ndarray) -> np.ndarray:
        """A portfolios x columns matrix with ``w`` at (p, col) (universe column numbers)."""
        out = np.zeros((self.portfolios.len(), self.cols.size))
        np.add.at(out, (p, np.searchsorted(self.cols, col)), w)
        return out

    def no_risk_data(self) -> np.ndarray:
        """True for portfolios with non-cash holdings none of which is covered."""
        return ((self.stats["covered"] == 0) & (self.stats["positions"] > 0)).to_numpy()

    def exclusion_note(self) -> pl.Expr:
        return pl.when(pl.col("excluded_positions") > 0).then(_excluded_note(pl.col("excluded_positions")))


def _excluded_note(count: pl.Expr) -> pl.Expr:
    return pl.format("{} position(s) without return history excluded", count)


def _join_notes(*notes: pl.Expr) -> pl.Expr:
    joined = pl.concat_str(list(notes), separator="; ", ignore_nulls=True)
    return pl.when(joined == "").then(None).otherwise(joined)


def _cast(frame: pl.DataFrame, schema: dict[str, pl.DataType], keys: list[str]) -> pl.DataFrame:
    return frame.select([pl.col(c).cast(t) for c, t in schema.items()]).sort(keys)


def ex_ante_risk(
    holdings: pl.DataFrame | pl.LazyFrame,
    ids: Sequence[str],
    covariance: np.ndarray,
    benchmark: pl.DataFrame | pl.LazyFrame | None = None,
) -> pl.DataFrame:
    """Ex-ante volatility and tracking error per portfolio (``RISK_SCHEMA``), sorted by
    portfolio_id.

    Input: ``holdings`` (``HOLDINGS_COLUMNS``: portfolio_id, instrument_id, weight, sector,
    nav), the daily covariance ``covariance`` of the instruments ``ids``, and optionally
    ``benchmark`` rows portfolio_id, instrument_id, weight (benchmark or target weights; the
    part not invested is riskless). Rule: ``sigma = sqrt(w' S w)``, tracking error
    ``sqrt((w - b)' S (w - b))``, both per day and times ``sqrt(PERIODS_PER_YEAR)``; cash is
    riskless; holdings (and benchmark rows) without return history are excluded and noted; a
    portfolio with none of its positions covered gets null figures; tracking error is null
    for a portfolio without benchmark rows.
    """
    universe, s = _universe(ids, covariance)
    h = _holdings(holdings)
    bench = None
    extra = None
    if benchmark is not None:
        bench = collected_with(benchmark, ("portfolio_id", "instrument_id", "weight"), "benchmark").select(
            pl.col("portfolio_id").cast(pl.String),
            pl.col("instrument_id").cast(pl.String),
            pl.col("weight").cast(pl.Float64),
        )
        require_no_nulls(bench, ("portfolio_id", "instrument_id", "weight"), "benchmark")
        require_unique(bench, ["portfolio_id", "instrument_id"], "benchmark")
        require_finite(bench, ("weight",), "benchmark")
        bench = bench.filter(pl.col("portfolio_id").is_in(h["portfolio_id"].unique().implode())).join(
            universe, on="instrument_id", how="left"
        )
        extra = bench["_col"].drop_nulls().to_numpy()
    book = _Book(h, universe, extra)
    sub = s[np.ix_(book.cols, book.cols)]
    w = book.weights
    sigma = np.sqrt(np.maximum(np.sum(w * (w @ sub), axis=1), 0.0))
    sigma = np.where(book.no_risk_data(), np.nan, sigma)
    te = np.full(book.portfolios.len(), np.nan)
    bench_note = pl.lit(NO_BENCHMARK) if benchmark is not None else pl.lit(None, pl.String)
    out = book.stats
    if bench is not None and bench.height:
        bp = book.portfolios.search_sorted(bench["portfolio_id"]).to_numpy()
        cov_b = bench.filter(pl.col("_col").is_not_null())
        b_rows = book.portfolios.search_sorted(cov_b["portfolio_id"]).to_numpy()
        b = book.matrix(b_rows, cov_b["_col"].to_numpy(), cov_b["weight"].to_numpy())
        a = w - b
        has_bench = np.zeros(book.portfolios.len(), dtype=bool)
        has_bench[bp] = True
        te = np.where(has_bench, np.sqrt(np.maximum(np.sum(a * (a @ sub), axis=1), 0.0)), np.nan)
        missing = (
            bench.group_by("portfolio_id")
            .agg(pl.col("_col").is_null().sum().cast(pl.Int64).alias("_bench_excluded"))
        )
        out = out.join(missing, on="portfolio_id", how="left")
        bench_note = (
            pl.when(pl.col("_bench_excluded").is_null())
            .then(pl.lit(NO_BENCHMARK))
            .when(pl.col("_bench_excluded") > 0)
            .then(pl.format("{} benchmark instrument(s) without return history excluded", pl.col("_bench_excluded")))
        )
    te = np.where(book.no_risk_data(), np.nan, te)
    annual = math.sqrt(PERIODS_PER_YEAR)
    out = out.with_columns(
        pl.Series("volatility", sigma, nan_to_null=True),
        pl.Series("annualised_volatility", sigma * annual, nan_to_null=True),
        pl.Series("tracking_error", te, nan_to_null=True),
        pl.Series("annualised_tracking_error", te * annual, nan_to_null=True),
    ).with_columns(
        _join_notes(
            pl.when(pl.col("covered") == 0).then(pl.when(pl.col("positions") > 0).then(pl.lit(NO_COVERED))),
            book.exclusion_note(),
            bench_note,
        ).alias("note")
    )
    return _cast(out, RISK_SCHEMA, ["portfolio_id"])


def value_at_risk(
    holdings: pl.DataFrame | pl.LazyFrame,
    matrix: ReturnMatrix,
    covariance: np.ndarray | None = None,
    confidences: Sequence[float] = CONFIDENCES,
    horizons: Sequence[int] = HORIZONS,
) -> pl.DataFrame:
    """Historical and parametric VaR and CVaR per portfolio, confidence and horizon
    (``VAR_SCHEMA``, long), sorted by (portfolio_id, method, confidence, horizon_days).

    Input: ``holdings`` (``HOLDINGS_COLUMNS``), ``matrix`` the daily asset returns
    (``covariance.return_matrix``) and ``covariance`` the daily covariance of ``matrix.ids``
    for the parametric figures (default: ``sample_covariance(matrix.values)``). Rule: the
    formulas of the module docstring, computed as fractions of NAV from the weights and
    multiplied by nav; holdings without return history are excluded (noted); a portfolio with
    none covered, an unknown or non-positive nav, or too few windows gets null figures and a
    note. A cash-only portfolio has VaR and CVaR 0.
    """
    for c in confidences:
        _check_confidence(c)
    for hz in horizons:
        _check_horizon(hz)
    x = np.asarray(matrix.values, dtype=np.float64)
    if x.shape != (matrix.dates.len(), len(matrix.ids)) or not np.isfinite(x).all():
        expected = f"{matrix.dates.len()} x {len(matrix.ids)}"
        raise ValueError(f"the return matrix values must be a finite {expected} array, got {x.shape}")
    if covariance is None:
        covariance = sample_covariance(x)
    universe, s = _universe(matrix.ids, covariance)
    book = _Book(_holdings(holdings), universe)
    w = book.weights
    sub = s[np.ix_(book.cols, book.cols)]
    xs = x[:, book.cols]
    sigma = np.sqrt(np.maximum(np.sum(w * (w @ sub), axis=1), 0.0))
    n_p = book.portfolios.len()
    pieces = []
    for hz in horizons:
        port = horizon_returns(xs, hz) @ w.T  # windows x portfolios
        n_obs = port.shape[0]
        for c in confidences:
            pv, pc = parametric_var(sigma, c, hz)
            pieces.append(_var_rows(book, "parametric", c, hz, None, pv, pc, None))
            enough = n_obs >= math.ceil(1.0 / (1.0 - c) - 1e-9)
            if enough:
                hv, hc = historical_var(port, c)
            else:
                hv = hc = np.full(n_p, np.nan)
            pieces.append(_var_rows(book, "historical", c, hz, n_obs, hv, hc, None if enough else TOO_FEW))
    if not pieces or n_p == 0:
        return pl.DataFrame(schema=VAR_SCHEMA)
    out = pl.concat(pieces)
    nav = pl.col("nav")
    nav_note = pl.when(nav.is_null()).then(pl.lit(NAV_UNKNOWN)).when(nav <= 0).then(pl.lit(NAV_NOT_POSITIVE))
    ok = nav.is_not_null() & (nav > 0)
    out = out.with_columns(
        pl.when(ok).then(pl.col("var_pct_nav") * nav).alias("var"),
        pl.when(ok).then(pl.col("cvar_pct_nav") * nav).alias("cvar"),
        pl.when(ok).then(pl.col("var_pct_nav")).alias("var_pct_nav"),
        pl.when(ok).then(pl.col("cvar_pct_nav")).alias("cvar_pct_nav"),
        _join_notes(
            pl.when((pl.col("covered") == 0) & (pl.col("positions") > 0)).then(pl.lit(NO_COVERED)),
            pl.col("_note"),
            nav_note,
            book.exclusion_note(),
        ).alias("note"),
    )
    return _cast(out, VAR_SCHEMA, ["portfolio_id", "method", "confidence", "horizon_days"])


def _var_rows(
    book: _Book, method: str, c: float, hz: int, n_obs: int | None, v: np.ndarray, cv: np.ndarray, note: str | None
) -> pl.DataFrame:
    blank = book.no_risk_data()
    return book.stats.with_columns(
        pl.lit(method).alias("method"),
        pl.lit(c, pl.Float64).alias("confidence"),
        pl.lit(hz, pl.Int64).alias("horizon_days"),
        pl.lit(n_obs, pl.Int64).alias("observations"),
        pl.Series("var_pct_nav", np.where(blank, np.nan, v), nan_to_null=True),
        pl.Series("cvar_pct_nav", np.where(blank, np.nan, cv), nan_to_null=True),
        pl.lit(note, pl.String).alias("_note"),
    )


def risk_contributions(holdings: pl.DataFrame | pl.LazyFrame, ids: Sequence[str], covariance: np.ndarray) -> pl.DataFrame:
    """Marginal and component contributions to the daily volatility, per position and per
    sector (``RISK_CONTRIBUTIONS_SCHEMA``), sorted by (portfolio_id, level, key).

    Input: ``holdings`` (``HOLDINGS_COLUMNS``) and the daily ``covariance`` of ``ids``. Rule:
    for a covered position ``marginal = (S w)_i / sigma``, ``component = w_i * marginal``,
    ``share = component / sigma`` (components sum to sigma); cash rows have marginal and
    component 0 (key ``CASH`` at sector level); a position without return history has null
    figures and a note; in a portfolio of zero volatility the contributions of its risky
    positions are undefined (null, noted). A sector row sums the weights and the components of
    its positions (the non-null ones; null when none), marginal = component / the weight of
    its positions with return history (null when that is 0), share = component / sigma.
    """
    universe, s = _universe(ids, covariance)
    book = _Book(_holdings(holdings), universe)
    w = book.weights
    sw = w @ s[np.ix_(book.cols, book.cols)]
    sigma = np.sqrt(np.maximum(np.sum(w * sw, axis=1), 0.0))
    rows = book.rows
    p = rows["_p"].to_numpy()
    col = rows["_col"].fill_null(-1).to_numpy()
    covered = col >= 0
    m = np.full(rows.height, np.nan)
    j = np.searchsorted(book.cols, col[covered])
    sig = sigma[p[covered]]
    with np.errstate(divide="ignore", invalid="ignore"):
        m[covered] = np.where(sig > 0, sw[p[covered], j] / sig, np.nan)
    cash = rows["cash"].to_numpy()
    m[cash] = 0.0
    sig_row = sigma[p]
    positions = rows.with_columns(
        pl.Series("_sigma", sig_row),
        pl.Series("marginal", m, nan_to_null=True),
        pl.lit("position").alias("level"),
        pl.col("instrument_id").alias("key"),
        pl.when(pl.col("sector").is_null()).then(pl.lit(CASH_KEY)).otherwise(pl.col("sector")).alias("_sector"),
    ).with_columns(
        (pl.col("weight") * pl.col("marginal")).alias("component"),
    )
    zero_note = pl.when(pl.col("_sigma") == 0).then(pl.lit(ZERO_VOLATILITY))
    positions = positions.with_columns(
        pl.when(pl.col("_sigma") > 0).then(pl.col("component") / pl.col("_sigma")).alias("share"),
        pl.when(pl.col("cash"))
        .then(pl.lit(CASH_NOTE))
        .when(pl.col("excluded"))
        .then(pl.lit(NO_HISTORY))
        .otherwise(zero_note)
        .alias("note"),
    )
    sectors = (
        positions.group_by("portfolio_id", "_sector")
        .agg(
            pl.col("weight").sum(),
            pl.col("weight").filter(~pl.col("excluded")).sum().alias("_weight_covered"),
            pl.when(pl.col("component").is_not_null().any()).then(pl.col("component").sum()).alias("component"),
            pl.col("_sigma").first(),
            pl.col("excluded").sum().alias("_excluded"),
            (pl.col("_col").is_not_null()).sum().alias("_covered"),
        )
        .with_columns(
            pl.lit("sector").alias("level"),
            pl.col("_sector").alias("key"),
            pl.when(pl.col("_weight_covered") != 0).then(pl.col("component") / pl.col("_weight_covered")).alias("marginal"),
            pl.when(pl.col("_sigma") > 0).then(pl.col("component") / pl.col("_sigma")).alias("share"),
            _join_notes(
                pl.when(pl.col("_sector") == CASH_KEY).then(pl.lit(CASH_NOTE)),
                pl.when((pl.col("_sigma") == 0) & (pl.col("_covered") > 0)).then(pl.lit(ZERO_VOLATILITY)),
                pl.when(pl.col("_excluded") > 0).then(_excluded_note(pl.col("_excluded"))),
            ).alias("note"),
        )
    )
    cols = list(RISK_CONTRIBUTIONS_SCHEMA)
    out = pl.concat([positions.select(cols), sectors.select(cols)], how="vertical_relaxed")
    return _cast(out, RISK_CONTRIBUTIONS_SCHEMA, ["portfolio_id", "level", "key"])
