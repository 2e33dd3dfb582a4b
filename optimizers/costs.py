"""Trading-cost models of the rebalance, in weights (fractions of the portfolio's NAV).

A trade ``z_i`` is the change of instrument ``i``'s weight (``+`` buy, ``-`` sell). Its cost,
as cvxportfolio models it (Boyd et al., *Multi-Period Trading via Convex Optimization*, §2.3,
eq. 2.2, with the dollar trade ``x = z * NAV`` divided through by NAV), is

    linear:  a_i |z_i|                          a_i = half spread + commission (per unit traded)
    impact:  b sigma_i |z_i|^{3/2} / (V_i / NAV)^{1/2}
                                                sigma_i: daily volatility of i's returns,
                                                V_i: average daily traded value (shares x price,
                                                base currency), b ~ 1

and the tax of selling is a convex piecewise-linear function of the weight sold (lots sold in
ascending tax per unit of value; ``optimizers.tax``):

    tax(s_i) = sum_j slope_ij * min(max(s_i - start_ij, 0), length_ij)

This module holds the coefficients and the closed forms in numpy; ``optimizers.problem`` builds
the same terms as cvxpy expressions, and the tests check one against the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import transforms  # noqa: F401  (sets the Polars engine)

IMPACT_EXPONENT = 1.5


@dataclass(frozen=True)
class CostModel:
    """The firm's cost assumptions: ``half_spread`` and ``commission`` per unit of value traded
    (5 bps each by default) and ``impact`` (cvxportfolio's ``b``, of the order of 1)."""

    half_spread: float = 0.0005
    commission: float = 0.0005
    impact: float = 1.0

    def __post_init__(self) -> None:
        for name in ("half_spread", "commission", "impact"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"cost model: {name} must be a finite number >= 0, got {value}")

    @property
    def linear(self) -> float:
        """``a``: the half spread plus the commission, per unit of value traded."""
        return self.half_spread + self.commission


def impact_coefficients(sigma: np.ndarray, traded_value: np.ndarray, nav: float, impact: float) -> np.ndarray:
    """Per-instrument coefficient of ``|z|^{3/2}``: ``impact * sigma / sqrt(V / nav)``.

    ``sigma`` is the daily volatility, ``traded_value`` the average daily traded value ``V``
    (base currency), ``nav`` the portfolio's value. An instrument without volume or volatility
    (``V <= 0`` or not finite) gets 0 here: it must not be traded at all, which the liquidity
    bound (``optimizers.problem``) enforces, so no cost is needed to stop it.
    """
    sigma = np.asarray(sigma, dtype=float)
    traded_value = np.asarray(traded_value, dtype=float)
    if nav <= 0 or not np.isfinite(nav):
        raise ValueError(f"impact coefficients need a positive NAV, got {nav}")
    ok = np.isfinite(sigma) & np.isfinite(traded_value) & (traded_value > 0) & (sigma >= 0)
    out = np.zeros_like(sigma)
    out[ok] = impact * sigma[ok] / np.sqrt(traded_value[ok] / nav)
    return out


def linear_cost(z: np.ndarray, a: np.ndarray | float) -> float:
    """``sum_i a_i |z_i|``: spread and commission of trades ``z`` (weights), as a share of NAV."""
    return float(np.sum(np.asarray(a, dtype=float) * np.abs(z)))


def impact_cost(z: np.ndarray, coefficients: np.ndarray) -> float:
    """``sum_i c_i |z_i|^{3/2}``: market impact of trades ``z`` (weights), as a share of NAV."""
    return float(np.sum(np.asarray(coefficients, dtype=float) * np.abs(z) ** IMPACT_EXPONENT))


def tax_by_instrument(sold: np.ndarray, lengths: np.ndarray, slopes: np.ndarray) -> np.ndarray:
    """The tax of selling ``sold[i]`` (weight) of each instrument, per instrument, as shares of NAV.

    ``lengths`` and ``slopes`` are ``(n, J)``: instrument ``i``'s lots (or merged lots) in
    selling order, each ``lengths[i, j]`` of weight taxed at ``slopes[i, j]`` per unit sold.
    The pieces are filled in order: ``tax_i = sum_j slope_ij * clip(sold_i - start_ij, 0, length_ij)``
    with ``start_ij`` the summed length of the pieces before ``j``.
    """
    sold = np.maximum(np.asarray(sold, dtype=float), 0.0)
    lengths = np.asarray(lengths, dtype=float)
    starts = np.cumsum(lengths, axis=1) - lengths
    used = np.clip(sold[:, None] - starts, 0.0, lengths)
    return np.sum(used * np.asarray(slopes, dtype=float), axis=1)


def tax_cost(sold: np.ndarray, lengths: np.ndarray, slopes: np.ndarray) -> float:
    """``sum_i tax_by_instrument(...)_i``: the tax of the whole trade, as a share of NAV."""
    return float(tax_by_instrument(sold, lengths, slopes).sum())
