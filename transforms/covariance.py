"""Covariance estimators and factor risk models: numpy matrices in, numpy matrices out, plus the
helper that turns a long frame of asset returns into a matrix.

Every covariance here is **per day** (the returns are daily); multiply by
``conventions.PERIODS_PER_YEAR`` to annualise (``FactorModel.annualised`` does it for a model).
``X`` is always a ``T x N`` float matrix: one row per day (oldest first), one column per
instrument, no NaN.

- **Return matrix** (``return_matrix``). The dates are those on which at least one kept
  instrument has a return. An instrument is kept when it has at least ``min_history`` returns
  and they cover at least ``min_coverage`` of the dates; the others are left out (the risk and
  stress transforms flag the holdings they leave out). The few gaps that remain (a missing row
  or a null) are filled with 0: a pairwise-complete covariance is not positive semi-definite
  and would break the optimiser, while a 0 on a missing day keeps every estimator below PSD at
  the cost of damping the variance of a gappy instrument by about the share of days missing.
- **Sample**: ``S = Xc' Xc / (T - DDOF)``, ``Xc = X - mean(X)`` (``DDOF`` = 1), as ``numpy.cov``.
- **EWMA** with half-life ``h``: ``lambda = 0.5 ** (1 / h)``; day ``t`` of ``T`` (0-based)
  weighs ``lambda ** (T - 1 - t)``, weights normalised to sum to 1; the mean is removed with the
  same weights, ``m = sum_t w_t x_t``, and ``S = sum_t w_t (x_t - m)(x_t - m)'`` (no small-sample
  correction). ``demean=False`` gives the RiskMetrics zero-mean form ``sum_t w_t x_t x_t'``.
- **Ledoit-Wolf** (Ledoit & Wolf 2004, "A well-conditioned estimator for large-dimensional
  covariance matrices", J. Multivariate Analysis 88, target: the scaled identity). With
  ``Xc`` centred by the column means, ``n = T`` rows, ``p = N`` columns and the paper's
  ``1/n`` sample covariance ``S = Xc' Xc / n``: ``mu = tr(S) / p``;
  ``d2 = ||S - mu I||_F^2 / p``; ``b2 = min(d2, (sum_t ||x_t||^4 / n - ||S||_F^2) / (p n))``;
  shrinkage ``s = b2 / d2`` (0 when ``d2`` = 0) and the estimate ``(1 - s) S + s mu I``. This
  is exactly ``sklearn.covariance.LedoitWolf`` (centred, ``1/n``): note it is ``(T-1)/T`` times
  the ``DDOF`` = 1 scale of ``sample_covariance`` before shrinkage.
- **Factor models** (``FactorModel``): exposures ``B`` (N x K), factor covariance ``F`` (K x K),
  specific variances ``D`` (N); the implied covariance is ``B F B' + diag(D)``, positive
  semi-definite because ``F`` is a covariance and ``D >= 0``.

  - ``sector_factor_model``: one factor per sector, ``B[i, k] = 1`` when instrument ``i`` is in
    sector ``k``. The factor returns are the daily cross-sectional least-squares fit of the
    returns on ``B``, which for 0/1 exposures is the equal-weighted mean return of the
    sector's members; ``F`` is their covariance and ``D`` the variance of each instrument's
    residual ``x - f B'`` (sample with ``DDOF``, or EWMA weights when ``half_life`` is given).
    A sector of one instrument has a residual of 0: all its risk is factor risk. A null sector
    is the factor ``UNCLASSIFIED``.
  - ``statistical_factor_model``: the first ``k`` principal components of the sample
    covariance (with ``Xc = U diag(s) V'``, the top ``k`` eigenpairs of the smaller of
    ``Xc' Xc`` and ``Xc Xc'``): ``B = V_k`` (each column's sign chosen so its loadings sum to
    >= 0), ``F = diag(s_k^2) / (T - DDOF)`` (uncorrelated factors) and
    ``D = diag(S) - diag(B F B')`` (the variance the k components leave out, >= 0). With ``k``
    = the rank of ``Xc`` the model reproduces the sample covariance.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import polars as pl

from transforms.contract import UNCLASSIFIED  # the sector factor of an instrument without one
from transforms.frame_checks import collected_with, require_finite, require_no_nulls, require_unique
from scipy.linalg import eigh

from transforms.conventions import DDOF, PERIODS_PER_YEAR

MIN_HISTORY = 20  # returns an instrument needs to be kept in a return matrix
MIN_COVERAGE = 0.9  # share of the matrix's dates its returns must cover


class ReturnMatrix(NamedTuple):
    """Daily returns as a matrix: ``ids`` (sorted instrument ids, the columns), ``dates``
    (sorted ``pl.Date`` series, the rows) and ``values`` (float64 ``T x N``, gaps filled with 0).
    Unpacks as ``ids, dates, X = return_matrix(...)``."""

    ids: tuple[str, ...]
    dates: pl.Series
    values: np.ndarray


# --- frame helpers (shared by transforms.risk and transforms.stress) --------------------------


def _matrix(X: np.ndarray, name: str = "X", min_rows: int = 1) -> np.ndarray:
    """``X`` as a finite float64 2-D array with at least ``min_rows`` rows, else ``ValueError``."""
    a = np.asarray(X, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D T x N matrix, got {a.ndim} dimension(s)")
    if a.shape[0] < min_rows:
        raise ValueError(f"{name} has {a.shape[0]} row(s) (days); at least {min_rows} needed")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return a


def _column_index(ids: Sequence[str]) -> pl.DataFrame:
    """(instrument_id, _col): each id's column number in a matrix whose columns are ``ids``."""
    return pl.DataFrame(
        {"instrument_id": list(ids), "_col": np.arange(len(ids), dtype=np.int64)},
        schema={"instrument_id": pl.String, "_col": pl.Int64},
    )


def _symmetric(a: np.ndarray) -> np.ndarray:
    # a product A'A is symmetric in exact arithmetic, not always in floating point
    return (a + a.T) / 2.0


# --- the return matrix ------------------------------------------------------------------------


def return_matrix(
    returns: pl.DataFrame | pl.LazyFrame,
    instruments: Collection[str] | None = None,
    min_history: int = MIN_HISTORY,
    *,
    min_coverage: float = MIN_COVERAGE,
    column: str = "return",
) -> ReturnMatrix:
    """Daily asset returns as a ``T x N`` matrix (``ReturnMatrix``).

    Input: ``returns`` rows instrument_id (str), date (date), ``column`` (f64, default
    ``return``; ``transforms.market_returns`` calls it ``daily_return``), at most one row per
    (instrument_id, date), returns finite and >= -1 where present (a null is a missing day);
    ``instruments`` restricts the columns (ids absent from ``returns`` are simply not columns).

    Rule: an instrument is kept when its non-null returns number at least ``min_history`` and
    cover at least ``min_coverage`` of the dates on which any instrument has a return; the dates
    are then those with a return of a kept instrument, and a kept instrument's missing days are
    0 (see the module docstring for why). Ids are sorted, dates ascending.
    """
    if min_history < 1 or not 0.0 <= min_coverage <= 1.0:
        raise ValueError(f"min_history must be >= 1 and min_coverage in [0, 1], got {min_history}, {min_coverage}")
    df = collected_with(returns, ("instrument_id", "date", column), "returns").select(
        pl.col("instrument_id").cast(pl.String), pl.col("date").cast(pl.Date), pl.col(column).cast(pl.Float64).alias("r")
    )
    if instruments is not None:
        df = df.filter(pl.col("instrument_id").is_in(list(set(instruments))))
    require_no_nulls(df, ("instrument_id", "date"), "returns")
    require_unique(df, ["instrument_id", "date"], "returns")
    require_finite(df, ("r",), "returns")
    if (df["r"] < -1.0).any():
        raise ValueError(f"returns has {int((df['r'] < -1.0).sum())} return(s) below -100%")
    df = df.filter(pl.col("r").is_not_null())
    n_dates = df["date"].n_unique()
    counts = df.group_by("instrument_id").len()
    kept = counts.filter((pl.col("len") >= min_history) & (pl.col("len") >= min_coverage * n_dates))["instrument_id"]
    df = df.filter(pl.col("instrument_id").is_in(kept.implode()))
    ids = df["instrument_id"].unique().sort()
    dates = df["date"].unique().sort().alias("date")
    values = np.zeros((dates.len(), ids.len()))
    rows, cols = dates.search_sorted(df["date"]).to_numpy(), ids.search_sorted(df["instrument_id"]).to_numpy()
    values[rows, cols] = df["r"].to_numpy()
    return ReturnMatrix(tuple(ids.to_list()), dates, values)


# --- estimators -------------------------------------------------------------------------------


def sample_covariance(X: np.ndarray) -> np.ndarray:
    """The sample covariance of the columns of ``X`` (T x N, T > ``DDOF``): N x N,
    ``Xc' Xc / (T - DDOF)`` with ``Xc = X - mean(X, axis=0)`` (``numpy.cov(X, rowvar=False)``)."""
    a = _matrix(X, min_rows=DDOF + 1)
    xc = a - a.mean(axis=0)
    return _symmetric(xc.T @ xc / (a.shape[0] - DDOF))


def ewma_weights(T: int, half_life: float) -> np.ndarray:
    """The ``T`` EWMA weights, oldest first: ``lambda ** (T - 1 - t)`` with
    ``lambda = 0.5 ** (1 / half_life)``, normalised to sum to 1 (the newest day weighs most)."""
    if not half_life > 0 or not math.isfinite(half_life):
        raise ValueError(f"half_life must be a positive number of days, got {half_life}")
    lam = 0.5 ** (1.0 / half_life)
    w = lam ** np.arange(T - 1, -1, -1, dtype=np.float64)
    return w / w.sum()


def _weighted_covariance(a: np.ndarray, w: np.ndarray, demean: bool = True) -> np.ndarray:
    m = w @ a if demean else np.zeros(a.shape[1])
    y = (a - m) * np.sqrt(w)[:, None]
    return _symmetric(y.T @ y)


def ewma_covariance(X: np.ndarray, half_life: float, demean: bool = True) -> np.ndarray:
    """The exponentially weighted covariance of the columns of ``X`` (T x N): N x N,
    ``sum_t w_t (x_t - m)(x_t - m)'`` with the ``ewma_weights`` ``w`` and the weighted mean
    ``m = sum_t w_t x_t`` (``m = 0`` when ``demean`` is False, the RiskMetrics form)."""
    a = _matrix(X)
    return _weighted_covariance(a, ewma_weights(a.shape[0], half_life), demean)


def ledoit_wolf(X: np.ndarray) -> tuple[np.ndarray, float]:
    """(covariance N x N, shrinkage in [0, 1]) of Ledoit & Wolf (2004) towards the scaled
    identity, on ``X`` (T x N) centred by its column means with the paper's ``1/T`` sample
    covariance; the formula is in the module docstring. Equal to
    ``sklearn.covariance.LedoitWolf().fit(X)`` (``covariance_``, ``shrinkage_``)."""
    a = _matrix(X)
    n, p = a.shape
    xc = a - a.mean(axis=0)
    s = _symmetric(xc.T @ xc / n)
    if p == 1:
        return s, 0.0  # one variable: every shrinkage gives the same estimate
    mu = np.trace(s) / p
    s_norm2 = float(np.sum(s * s))
    d2 = (s_norm2 - 2.0 * mu * np.trace(s) + p * mu**2) / p
    # sum_t ||x_t||^4: the sum of the squared norms of the rank-one terms x_t x_t'
    b2_bar = (float(np.sum(np.sum(xc * xc, axis=1) ** 2)) / n - s_norm2) / (p * n)
    b2 = min(b2_bar, d2)
    shrinkage = float(b2 / d2) if d2 > 0 and b2 > 0 else 0.0
    shrunk = (1.0 - shrinkage) * s
    shrunk[np.diag_indices(p)] += shrinkage * mu
    return shrunk, shrinkage


# --- factor models ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FactorModel:
    """A factor risk model, per day: exposures ``B`` (N x K), factor covariance ``F`` (K x K)
    and specific variances ``D`` (N), as plain numpy arrays for the optimiser, with the
    ``instrument_ids`` (the rows of ``B``) and ``factor_names`` (its columns) alongside."""

    instrument_ids: tuple[str, ...]
    factor_names: tuple[str, ...]
    exposures: np.ndarray
    factor_covariance: np.ndarray
    specific_variance: np.ndarray

    def __post_init__(self) -> None:
        n, k = len(self.instrument_ids), len(self.factor_names)
        if self.exposures.shape != (n, k) or self.factor_covariance.shape != (k, k) or self.specific_variance.shape != (n,):
            raise ValueError(
                f"factor model shapes disagree: {n} instruments, {k} factors, B {self.exposures.shape}, "
                f"F {self.factor_covariance.shape}, D {self.specific_variance.shape}"
            )

    def covariance(self) -> np.ndarray:
        """The implied N x N covariance ``B F B' + diag(D)``."""
        b = self.exposures
        out = _symmetric(b @ self.factor_covariance @ b.T)
        out[np.diag_indices_from(out)] += self.specific_variance
        return out

    def annualised(self) -> FactorModel:
        """The same model per year: ``F`` and ``D`` times ``PERIODS_PER_YEAR``."""
        return FactorModel(
            self.instrument_ids,
            self.factor_names,
            self.exposures,
            self.factor_covariance * PERIODS_PER_YEAR,
            self.specific_variance * PERIODS_PER_YEAR,
        )


def _ids_and_values(X: np.ndarray | ReturnMatrix, ids: Sequence[str] | None) -> tuple[tuple[str, ...], np.ndarray]:
    if isinstance(X, ReturnMatrix):
        return X.ids, _matrix(X.values)
    a = _matrix(X)
    names = tuple(str(i) for i in range(a.shape[1])) if ids is None else tuple(ids)
    if len(names) != a.shape[1] or len(set(names)) != len(names):
        raise ValueError(f"ids must be {a.shape[1]} distinct instrument ids (one per column), got {len(names)}")
    return names, a


def sector_factor_model(
    X: np.ndarray | ReturnMatrix,
    sectors: Sequence[str | None] | Mapping[str, str | None],
    ids: Sequence[str] | None = None,
    half_life: float | None = None,
) -> FactorModel:
    """A one-factor-per-sector risk model of ``X`` (T x N daily returns, or a ``ReturnMatrix``
    whose ids are used).

    ``sectors``: the sector of each column (a sequence in column order, or a mapping
    instrument id -> sector; a null or unmapped sector is ``UNCLASSIFIED``). ``ids`` name the
    columns of a plain matrix (default "0".."N-1"). Factors are the sorted sector names;
    ``B`` is the 0/1 membership, factor returns the equal-weighted sector means each day,
    ``F`` their covariance and ``D`` the residual variances: sample (``DDOF``) estimates, or
    EWMA ones (``ewma_covariance`` weights, weighted means removed) when ``half_life`` is set.
    """
    names, a = _ids_and_values(X, ids)
    if isinstance(sectors, Mapping):
        labels = [sectors.get(i) for i in names]
    else:
        labels = list(sectors)
        if len(labels) != len(names):
            raise ValueError(f"sectors has {len(labels)} entries for {len(names)} instruments")
    labels = [UNCLASSIFIED if s is None else str(s) for s in labels]
    factors, member = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
    b = np.zeros((len(names), len(factors)))
    b[np.arange(len(names)), member] = 1.0
    f = a @ b / b.sum(axis=0)
    resid = a - f @ b.T
    if half_life is None:
        fcov = sample_covariance(f)
        d = np.var(resid, axis=0, ddof=DDOF)
    else:
        w = ewma_weights(a.shape[0], half_life)
        fcov = _weighted_covariance(f, w)
        d = np.diag(_weighted_covariance(resid, w)).copy()
    return FactorModel(names, tuple(str(x) for x in factors), b, fcov, np.maximum(d, 0.0))


def statistical_factor_model(X: np.ndarray | ReturnMatrix, k: int, ids: Sequence[str] | None = None) -> FactorModel:
    """A ``k``-factor principal-component risk model of ``X`` (T x N daily returns, or a
    ``ReturnMatrix``): ``B`` the first ``k`` eigenvectors of the sample covariance (sign: the
    loadings of each sum to >= 0), ``F = diag(eigenvalues)``, ``D`` the sample variances the
    ``k`` components leave out. Factors are named "PC1".."PCk"; ``1 <= k <= min(T, N)``."""
    names, a = _ids_and_values(X, ids)
    t, n = a.shape
    if t <= DDOF:
        raise ValueError(f"X has {t} row(s) (days); at least {DDOF + 1} needed")
    if not 1 <= k <= min(t, n):
        raise ValueError(f"k must be between 1 and min(T, N) = {min(t, n)}, got {k}")
    xc = a - a.mean(axis=0)
    # only the top k eigenpairs, of the smaller Gram matrix: a full SVD of 1,300 x 2,000 costs
    # seconds, this a fraction of one
    if n <= t:
        s2, v = eigh(xc.T @ xc, subset_by_index=[n - k, n - 1])
        s2, v = np.maximum(s2[::-1], 0.0), v[:, ::-1]
    else:
        s2, u = eigh(xc @ xc.T, subset_by_index=[t - k, t - 1])
        s2, u = np.maximum(s2[::-1], 0.0), u[:, ::-1]
        # v_j = Xc' u_j / s_j; a component of (numerically) zero variance gets no loadings
        live = s2 > s2[0] * max(t, n) * np.finfo(np.float64).eps
        s2 = np.where(live, s2, 0.0)
        v = (xc.T @ u) / np.where(live, np.sqrt(s2), np.inf)
    v *= np.where(v.sum(axis=0) < 0, -1.0, 1.0)
    eig = s2 / (t - DDOF)
    total = np.sum(xc * xc, axis=0) / (t - DDOF)
    d = np.maximum(total - (v * v) @ eig, 0.0)
    return FactorModel(names, tuple(f"PC{j + 1}" for j in range(k)), v, np.diag(eig), d)
