"""One rebalance run: solve every portfolio the triggers chose, weigh the result against doing
nothing and against a full rebalance to target, and publish only what is worth doing and keeps
every hard constraint.

Per portfolio (``rebalance_portfolio``):

1. solve the problem (``optimizers.problem.solve``: compiled once per shape, re-solved);
2. round the trade to lots and the minimum trade size and repair it (``optimizers.rounding``);
3. three scenarios side by side (``REBALANCE_ANALYSIS_SCHEMA``): ``do_nothing`` (no cost, the
   drift and tracking error of today), ``full_rebalance`` (every sleeve to its targets, whatever it
   costs and whichever constraint it breaks) and ``optimised`` (the rounded trade). Costs are in the
   base currency: spread ``half_spread * |z| * NAV``, commission ``commission * |z| * NAV``,
   impact ``c |z|^{3/2} * NAV`` and the lots' tax. The risk benefit of a scenario is
   ``risk_aversion * (TE_now^2 - TE_after^2) * NAV``, the same trade-off the optimiser made, and
   its net benefit is that minus its total cost;
4. the decision: publish the optimised trade when its net benefit is positive, when today's book
   breaks a hard constraint (a breach is fixed whatever it costs), or when the portfolio is
   LIQUIDATING; otherwise publish nothing and say why. An infeasible problem or a rounded trade
   that still breaks a hard constraint publishes nothing either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import polars as pl

import transforms  # noqa: F401  (sets the Polars engine)
from optimizers.costs import IMPACT_EXPONENT, tax_by_instrument
from optimizers.inputs import OptimizerPolicy, ProblemMeta
from optimizers.problem import ProblemCache, RebalanceInputs, Solution, evaluate, factor_loadings, solve, violations
from optimizers.rounding import round_trades
from transforms.contract import RECOMMENDATIONS_SCHEMA, REBALANCE_ANALYSIS_SCHEMA

WEIGHT_EPSILON = 1e-9  # a sleeve weight change below this is solver noise, not a trade

OUTCOMES = ("REBALANCE", "NO_BENEFIT", "NOTHING_TO_TRADE", "INFEASIBLE", "REJECTED")


@dataclass
class PortfolioOutcome:
    """What the run did with one portfolio: ``outcome`` (one of ``OUTCOMES``), the published
    recommendations (empty unless REBALANCE), the three analysis rows, the signed share trade per
    instrument (for netting and lot selection), the solve time and a message."""

    portfolio_id: str
    outcome: str
    recommendations: pl.DataFrame
    analysis: pl.DataFrame
    trades: pl.DataFrame  # instrument_id, quantity (shares, signed), unit_value
    solve_seconds: float
    drift_before: float | None = None
    drift_after: float | None = None
    message: str = ""
    solution: Solution | None = field(default=None, repr=False)


def drift_of(x: RebalanceInputs, weights: np.ndarray) -> float:
    """``0.5 * (sum_i |w_i - t_i| + |c - c_t|)``: ``transforms.drift``'s figure on the total
    weights ``w`` and the cash after the trades ``c = cash - sum(w - w0)`` against the cash the
    targets leave, ``c_t = max(0, 1 - sum t)`` (0 for targets that sum to 1, all of it for a
    LIQUIDATING book). The pipeline's figure counts each cash currency apart; here the book's
    cash is one (base) number, so the two agree for cash held in one currency."""
    w, t = weights.sum(axis=1), x.target.sum(axis=1)
    cash_after = x.cash - float(w.sum() - x.current.sum())
    return float(0.5 * (np.abs(w - t).sum() + abs(cash_after - max(0.0, 1.0 - float(t.sum())))))


def _scenario(x: RebalanceInputs, G: np.ndarray, policy: OptimizerPolicy, nav: float, weights: np.ndarray, te_now: float,
              name: str) -> dict:
    e = evaluate(x, weights, G)
    turnover = e["turnover"]
    row = {
        "scenario": name, "nav": nav, "turnover": turnover,
        "spread": policy.half_spread * turnover * nav, "commission": policy.commission * turnover * nav,
        "impact": e["impact"] * nav, "tax": e["tax"] * nav,
    }
    row["total_cost"] = row["spread"] + row["commission"] + row["impact"] + row["tax"]
    row["drift_after"] = drift_of(x, weights)
    row["tracking_error_after"] = e["tracking_error"]
    row["risk_benefit"] = x.risk_aversion * (te_now**2 - e["tracking_error"] ** 2) * nav
    row["net_benefit"] = row["risk_benefit"] - row["total_cost"]
    broken = violations(x, weights, G)
    row["hard_violations"] = ", ".join(sorted(broken)) or None
    return row


def _analysis(rows: list[dict], run_id: str, portfolio_id: str, chosen: str, reason: str) -> pl.DataFrame:
    for row in rows:
        row |= {"run_id": run_id, "portfolio_id": portfolio_id, "chosen": row["scenario"] == chosen,
                "reason": reason if row["scenario"] == chosen else None, "drift_at_decision": None}  # the caller's figure
    return pl.DataFrame(rows, schema_overrides=REBALANCE_ANALYSIS_SCHEMA).select(list(REBALANCE_ANALYSIS_SCHEMA)).cast(REBALANCE_ANALYSIS_SCHEMA)


def _no_trades() -> pl.DataFrame:
    return pl.DataFrame(schema={"instrument_id": pl.String, "quantity": pl.Float64, "unit_value": pl.Float64})


def rebalance_portfolio(
    x: RebalanceInputs, meta: ProblemMeta, policy: OptimizerPolicy, cache: ProblemCache, *, run_id: str, as_of,
    trigger: str, forced_reason: str | None = None,
) -> PortfolioOutcome:
    """Solve, round, compare and decide for one portfolio (module docstring). ``forced_reason``
    (e.g. LIQUIDATING) publishes the optimised trade whatever its net benefit."""
    pid, nav = meta.portfolio_id, meta.nav
    G = factor_loadings(x.exposures, x.factor_covariance)
    started = time.perf_counter()
    sol = solve(x, cache)
    seconds = time.perf_counter() - started
    te_now = evaluate(x, x.current, G)["tracking_error"]
    nothing = _scenario(x, G, policy, nav, x.current, te_now, "do_nothing")
    full = _scenario(x, G, policy, nav, x.target, te_now, "full_rebalance")
    drift_before = nothing["drift_after"]

    def outcome(kind: str, reason: str, rows: list[dict]) -> PortfolioOutcome:
        return PortfolioOutcome(pid, kind, pl.DataFrame(schema=RECOMMENDATIONS_SCHEMA), _analysis(rows, run_id, pid, "do_nothing", reason),
                                _no_trades(), seconds, drift_before, drift_before, reason, sol)

    if not sol.ok:
        return outcome("INFEASIBLE", f"no trade: the problem is infeasible ({sol.message})", [nothing, full])
    unit_value = np.where(np.isfinite(meta.unit_value) & (meta.unit_value > 0), meta.unit_value, 1.0)
    rounded = round_trades(x, sol.weights, nav, unit_value, meta.lot_size, policy.min_trade_value)
    if rounded.status == "REJECTED":
        broken = ", ".join(sorted(rounded.violations))
        return outcome("REJECTED", f"no trade: after rounding to lots the trade breaks {broken} ({rounded.message})", [nothing, full])
    optimised = _scenario(x, G, policy, nav, rounded.weights, te_now, "optimised")
    rows = [nothing, full, optimised]
    if not np.any(rounded.quantity != 0):
        return outcome("NOTHING_TO_TRADE", "no trade: nothing is left to trade after rounding to lots and the minimum trade size", rows)
    if forced_reason:
        reason = forced_reason
    elif nothing["hard_violations"]:
        reason = f"rebalance: today's book breaks {nothing['hard_violations']}"
    elif optimised["net_benefit"] > 0:
        reason = (f"rebalance: risk benefit {optimised['risk_benefit']:,.2f} exceeds expected cost "
                  f"{optimised['total_cost']:,.2f}")
    else:
        reason = (f"no trade: expected cost {optimised['total_cost']:,.2f} exceeds the risk benefit "
                  f"{optimised['risk_benefit']:,.2f}")
        return outcome("NO_BENEFIT", reason, rows)
    recs = _recommendations(x, meta, policy, rounded.weights, rounded.quantity, run_id, as_of, trigger, sol, rounded.status)
    trades = pl.DataFrame({"instrument_id": list(x.instrument_ids), "quantity": rounded.quantity, "unit_value": unit_value}).filter(
        pl.col("quantity") != 0)
    return PortfolioOutcome(pid, "REBALANCE", recs, _analysis(rows, run_id, pid, "optimised", reason), trades, seconds,
                            drift_before, optimised["drift_after"], reason, sol)


def _recommendations(x: RebalanceInputs, meta: ProblemMeta, policy: OptimizerPolicy, weights: np.ndarray, quantity: np.ndarray,
                     run_id: str, as_of, trigger: str, sol: Solution, rounding_status: str) -> pl.DataFrame:
    """Rows per (sleeve, instrument) that are held, targeted or traded. An instrument's costs
    are shared over its sleeves in proportion to each sleeve's absolute weight change."""
    nav = meta.nav
    z = weights.sum(axis=1) - x.current.sum(axis=1)
    per_instrument = {
        "estimated_spread": policy.half_spread * np.abs(z) * nav,
        "estimated_commission": policy.commission * np.abs(z) * nav,
        "estimated_impact": x.impact * np.abs(z) ** IMPACT_EXPONENT * nav,
        "estimated_tax": (tax_by_instrument(-np.minimum(z, 0), x.tax_lengths, x.tax_slopes) * nav
                          if x.tax_lengths is not None else np.zeros(x.n)),
    }
    change = weights - x.current  # (n, S)
    moved = np.abs(change).sum(axis=1, keepdims=True)
    share = np.divide(np.abs(change), moved, out=np.zeros_like(change), where=moved > WEIGHT_EPSILON)
    unit = np.where(np.isfinite(meta.unit_value), meta.unit_value, np.nan)
    n, S = change.shape
    per_share = np.where(np.isfinite(unit), unit, 1.0)[:, None]
    sleeve_quantity = np.where(np.abs(change) > WEIGHT_EPSILON, change * nav / per_share, 0.0)
    # the sleeves' parts add up to the rounded instrument trade exactly
    total = sleeve_quantity.sum(axis=1, keepdims=True)
    scale = np.divide(quantity[:, None], total, out=np.zeros_like(total), where=np.abs(total) > 0)
    sleeve_quantity = np.where(np.abs(total) > 0, sleeve_quantity * scale, 0.0)
    frame = pl.DataFrame({
        "portfolio_id": meta.portfolio_id,
        "strategy_id": np.tile(np.array(meta.sleeves, dtype=object), n).tolist(),
        "instrument_id": np.repeat(np.array(x.instrument_ids, dtype=object), S).tolist(),
        "current_weight": x.current.ravel(), "target_weight": x.target.ravel(), "recommended_weight": weights.ravel(),
        "trade_quantity": sleeve_quantity.ravel(), "trade_value": (change * nav).ravel(),
        "unit_value": np.repeat(meta.unit_value, S),
        **{k: (v[:, None] * share).ravel() for k, v in per_instrument.items()},
        "note": np.repeat(np.array([note or None for note in meta.notes], dtype=object), S).tolist(),
    })
    keep = (np.abs(x.current) > WEIGHT_EPSILON) | (np.abs(x.target) > WEIGHT_EPSILON) | (np.abs(weights) > WEIGHT_EPSILON)
    return (
        frame.filter(pl.Series(keep.ravel()))
        .with_columns(
            pl.lit(run_id).alias("run_id"), pl.lit(as_of, dtype=pl.Date).alias("as_of"), pl.lit(trigger).alias("trigger"),
            pl.lit(sol.solver).alias("solver"), pl.lit(sol.status).alias("solver_status"), pl.lit(rounding_status).alias("rounding_status"),
        )
        .select(list(RECOMMENDATIONS_SCHEMA))
        .cast(RECOMMENDATIONS_SCHEMA)
    )
