"""The rebalance problem: cost terms against their closed forms, minimum variance against
skfolio on real prices, hard constraints on random problems, DPP re-solves, diagnosis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizers.costs import CostModel, impact_coefficients, impact_cost, linear_cost, tax_cost
from optimizers.problem import (
    ProblemCache,
    RebalanceInputs,
    evaluate,
    factor_loadings,
    shape_of,
    solve,
    tracking_error,
    violations,
)


def make_inputs(n: int = 12, k: int = 3, seed: int = 0, sleeves: int = 1, tax: bool = False, **overrides) -> RebalanceInputs:
    """A random, feasible-looking long-only book: 97% invested today, targets 98% invested."""
    r = np.random.default_rng(seed)
    current = r.dirichlet(np.ones(n), size=sleeves).T * 0.97 / sleeves
    target = r.dirichlet(np.ones(n), size=sleeves).T * 0.98 / sleeves
    x = RebalanceInputs(
        instrument_ids=tuple(f"I{i}" for i in range(n)), sleeves=tuple(f"S{j}" for j in range(sleeves)),
        current=current, target=target, cash=1 - current.sum(),
        exposures=r.normal(0, 0.3, (n, k)), factor_covariance=np.diag(r.uniform(0.01, 0.04, k)),
        specific_variance=r.uniform(0.02, 0.09, n),
        lower=np.zeros(n), upper=np.full(n, 0.4), buy_cap=np.full(n, 0.3), sell_cap=np.full(n, 0.3),
        linear=np.full(n, 0.001), impact=r.uniform(0.001, 0.01, n),
        sector=r.integers(0, 3, n), asset_class=r.integers(0, 2, n), cash_min=0.01,
    )
    if tax:
        held = current.sum(axis=1)
        x.tax_lengths = np.stack([held / 2, held / 2], axis=1)
        x.tax_slopes = np.sort(r.uniform(-0.05, 0.1, (n, 2)), axis=1)
        x.buy_cap[x.tax_slopes[:, 0] < 0] = 0.0  # harvesting a loss forbids buying it back (a wash sale)
    for key, value in overrides.items():
        setattr(x, key, value)
    return x


# --- cost terms: closed forms ------------------------------------------------------------------------------------------

def test_cost_closed_forms_by_hand():
    z = np.array([0.02, -0.01, 0.0])
    # 10 bps on 3% traded
    assert linear_cost(z, 0.001) == pytest.approx(0.001 * 0.03, abs=1e-15)
    # c |z|^1.5: 0.5 * 0.02^1.5 + 2 * 0.01^1.5 = 0.5 * 0.0028284 + 2 * 0.001
    assert impact_cost(z, np.array([0.5, 2.0, 9.0])) == pytest.approx(0.5 * 0.02**1.5 + 2 * 0.001, rel=1e-12)
    # a piece of 1% at -10% (a loss lot), then 2% at +5%: selling 2% = -0.001 + 0.0005
    lengths, slopes = np.array([[0.01, 0.02]]), np.array([[-0.1, 0.05]])
    assert tax_cost(np.array([0.02]), lengths, slopes) == pytest.approx(-0.001 + 0.0005, abs=1e-15)
    assert tax_cost(np.array([0.5]), lengths, slopes) == pytest.approx(-0.001 + 0.001, abs=1e-15)  # capped at what is held


def test_impact_coefficients_follow_cvxportfolio():
    # cvxportfolio: b * sigma / (V / NAV)^(1/2), here b = 1, sigma 2%, V = 4M, NAV = 1M -> 0.02 / 2
    c = impact_coefficients(np.array([0.02, 0.02, np.nan]), np.array([4e6, 0.0, 4e6]), 1e6, CostModel().impact)
    np.testing.assert_allclose(c, [0.01, 0.0, 0.0])
    # the dollar cost of trading x = 1e5: b sigma |x|^1.5 / V^0.5 = 0.02 * 1e5^1.5 / 2000 = 316.23
    assert impact_cost(np.array([0.1]), c[:1]) * 1e6 == pytest.approx(0.02 * 1e5**1.5 / 4e6**0.5, rel=1e-12)
    with pytest.raises(ValueError, match="NAV"):
        impact_coefficients(np.ones(1), np.ones(1), 0.0, 1.0)
    with pytest.raises(ValueError, match="half_spread"):
        CostModel(half_spread=-1e-4)


def test_solver_cost_terms_equal_the_closed_forms():
    x = make_inputs(n=15, seed=3, tax=True)
    cache = ProblemCache()
    sol = solve(x, cache)
    assert sol.ok
    problem = cache.get(shape_of(x))
    # the solver's own expressions, evaluated at its solution, against numpy on z = w - w0
    assert problem.linear_term.value == pytest.approx(sol.costs["linear"], abs=1e-7)
    assert problem.impact_term.value == pytest.approx(sol.costs["impact"], abs=1e-7)
    assert problem.tax_term.value == pytest.approx(sol.costs["tax"], abs=1e-7)
    G = factor_loadings(x.exposures, x.factor_covariance)
    active = sol.weights.sum(axis=1) - x.target.sum(axis=1)
    # factor model tracking error against the dense covariance X F X' + diag(specific)
    cov = x.exposures @ x.factor_covariance @ x.exposures.T + np.diag(x.specific_variance)
    assert tracking_error(active, G, x.specific_variance) == pytest.approx(np.sqrt(active @ cov @ active), rel=1e-12)


# --- minimum variance against skfolio --------------------------------------------------------------------------------

def test_minimum_variance_matches_skfolio_on_sp500():
    from skfolio import RiskMeasure
    from skfolio.datasets import load_sp500_dataset
    from skfolio.optimization import MeanRisk, ObjectiveFunction
    from skfolio.preprocessing import prices_to_returns

    returns = prices_to_returns(load_sp500_dataset()).iloc[-756:]  # the last three years, 20 stocks
    peer = MeanRisk(objective_function=ObjectiveFunction.MINIMIZE_RISK, risk_measure=RiskMeasure.VARIANCE).fit(returns)
    X = returns.to_numpy()
    n = X.shape[1]
    cov = np.cov(X, rowvar=False) * 252
    # no costs, long-only, fully invested from all cash, targets 0: min w' S w, sum w = 1, w >= 0
    x = RebalanceInputs(
        instrument_ids=tuple(returns.columns), sleeves=("all",), current=np.zeros((n, 1)), target=np.zeros((n, 1)), cash=1.0,
        exposures=np.eye(n), factor_covariance=cov, specific_variance=np.zeros(n), lower=np.zeros(n), upper=np.ones(n),
        buy_cap=np.ones(n), sell_cap=np.ones(n), linear=np.zeros(n), impact=np.zeros(n),
        sector=np.zeros(n, dtype=int), asset_class=np.zeros(n, dtype=int), cash_min=0.0, cash_max=0.0, risk_aversion=1.0,
    )
    sol = solve(x)
    assert sol.ok
    np.testing.assert_allclose(sol.weights[:, 0], peer.weights_, atol=1e-4)
    assert sol.weights.sum() == pytest.approx(1.0, abs=1e-6)


# --- hard constraints, DPP, diagnosis ---------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000), n=st.integers(2, 30), sleeves=st.integers(1, 2), tax=st.booleans(),
    turnover=st.one_of(st.none(), st.floats(0.05, 1.0)), te=st.one_of(st.none(), st.floats(0.01, 0.2)),
    caps=st.booleans(), risk_aversion=st.floats(0.5, 100.0),
)
def test_solutions_keep_every_hard_constraint(seed, n, sleeves, tax, turnover, te, caps, risk_aversion):
    x = make_inputs(n=n, seed=seed, sleeves=sleeves, tax=tax, turnover_max=turnover, te_max=te, risk_aversion=risk_aversion,
                    sector_cap=np.full(3, 0.5) if caps else None, class_cap=np.full(2, 0.8) if caps else None,
                    sector_risk_budget=np.full(3, 0.08) if caps else None)
    sol = solve(x)
    if sol.ok:
        assert violations(x, sol.weights) == {}
    else:  # an infeasible draw must say so and name what relaxes it (or that nothing single does)
        assert sol.status in ("infeasible", "inaccurate", "error") and sol.message


def test_compiled_once_per_shape_and_dpp():
    cache = ProblemCache()
    for seed in range(4):
        assert solve(make_inputs(n=10, seed=seed), cache).ok
    for seed in range(3):  # a different size inside the same padded bucket shares the compile
        assert solve(make_inputs(n=14, seed=seed), cache).ok
    assert cache.builds == 1
    problem = next(iter(cache.problems.values())).problem
    assert problem.is_dpp()


def _compiled_for(problem) -> str | None:
    """The solver cvxpy holds a compilation of ``problem`` for (cvxpy 1.9 keeps it in the private
    ``_cache``, keyed by solver first; there is no public way to ask)."""
    cache = problem._cache
    return cache.key[0] if cache.param_prog is not None else None


def test_warm_compiles_every_shape_before_any_solve_and_a_fallback_keeps_it():
    books = [make_inputs(n=10, seed=0), make_inputs(n=14, seed=1), make_inputs(n=20, seed=2, tax=True),
             make_inputs(n=10, seed=3, sleeves=2)]
    cache = ProblemCache()
    assert cache.warm(books) == 3 == len({shape_of(x) for x in books})  # n 10 and 14 share a padded shape
    assert cache.warm(books) == 0 and cache.builds == 3 and set(cache.compile_seconds) == set(cache.problems)
    assert all(_compiled_for(p.problem) == "CLARABEL" for p in cache.problems.values())
    for x in books:  # the same answers as a cold cache, to the solver's accuracy (a cold first solve
        # takes cvxpy's full compile path, whose matrices can keep other explicit zeros)
        np.testing.assert_allclose(solve(x, cache).weights, solve(x, ProblemCache()).weights, atol=1e-6)
    assert cache.builds == 3
    # a fallback solve goes to its own cvxpy problem over the same variables: the default
    # solver's compilation is kept, and its answer lands in the shared variables
    x = books[0]
    problem = cache.get(shape_of(x))
    status, weights, _ = problem.solve(x, factor_loadings(x.exposures, x.factor_covariance), "SCS")
    assert status == "optimal" and problem.for_solver("SCS") is not problem.problem
    assert _compiled_for(problem.problem) == "CLARABEL" and _compiled_for(problem.for_solver("SCS")) == "SCS"
    np.testing.assert_allclose(weights, solve(x, cache).weights, atol=1e-4)


def test_re_solving_equals_a_fresh_build():
    cache = ProblemCache()
    solve(make_inputs(n=12, seed=1), cache)
    x = make_inputs(n=12, seed=2, te_max=0.05)
    again = solve(x, cache)
    fresh = solve(make_inputs(n=12, seed=2, te_max=0.05), ProblemCache())
    np.testing.assert_allclose(again.weights, fresh.weights, atol=1e-7)


def test_without_costs_the_solution_is_the_target():
    x = make_inputs(n=8, seed=5, linear=np.zeros(8), impact=np.zeros(8), cash_min=0.0, upper=np.ones(8), buy_cap=np.ones(8),
                    sell_cap=np.ones(8))
    sol = solve(x)
    np.testing.assert_allclose(sol.weights, x.target, atol=1e-6)
    assert sol.tracking_error == pytest.approx(0.0, abs=1e-5)


def test_costs_leave_a_no_trade_band():
    # a 0.1% deviation with 1% costs per unit traded is not worth trading away at low risk aversion
    x = make_inputs(n=5, seed=1, linear=np.full(5, 0.01), impact=np.zeros(5), risk_aversion=1.0, upper=np.ones(5))
    x.target = x.current.copy()
    x.target[0, 0] += 0.001
    x.target[1, 0] -= 0.001
    sol = solve(x)
    np.testing.assert_allclose(sol.weights, x.current, atol=1e-6)


def test_sleeves_trade_toward_their_own_targets_and_transfer_for_free():
    n = 4
    current = np.array([[0.30, 0.00], [0.00, 0.30], [0.20, 0.0], [0.0, 0.18]])
    target = np.array([[0.00, 0.30], [0.30, 0.00], [0.20, 0.0], [0.0, 0.18]])  # the sleeves swap two holdings
    x = make_inputs(n=n, sleeves=2, current=current, target=target, cash=0.02, cash_min=0.0)
    sol = solve(x)
    np.testing.assert_allclose(sol.weights, target, atol=1e-5)
    assert sol.costs["turnover"] == pytest.approx(0.0, abs=1e-5)  # nothing is bought or sold


def test_wash_sale_block_and_liquidity_cap_bind():
    x = make_inputs(n=6, seed=2, linear=np.zeros(6), impact=np.zeros(6))
    x.buy_cap[0] = 0.0  # a wash-sale window: no purchase
    x.target[0, 0] = x.current[0, 0] + 0.05
    x.sell_cap[1] = 0.001
    x.target[1, 0] = 0.0
    sol = solve(x)
    z = sol.weights.sum(axis=1) - x.current.sum(axis=1)
    assert z[0] <= 1e-7
    assert -z[1] <= 0.001 + 1e-7


def test_liquidating_moves_to_cash_within_liquidity():
    x = make_inputs(n=6, seed=4, cash_min=0.0)
    x.target = np.zeros_like(x.target)
    x.sell_cap = np.full(6, 0.05)
    sol = solve(x)
    z = sol.weights.sum(axis=1) - x.current.sum(axis=1)
    assert np.all(z <= 1e-7) and np.all(-z <= 0.05 + 1e-7)  # only sells, within the daily liquidity
    assert sol.tracking_error < tracking_error(x.current[:, 0], factor_loadings(x.exposures, x.factor_covariance), x.specific_variance)
    # without costs and without factor risk (no position hedges another), every position is
    # sold as far as liquidity allows
    free = solve(make_inputs(n=6, seed=4, cash_min=0.0, target=np.zeros((6, 1)), sell_cap=np.full(6, 0.05), linear=np.zeros(6),
                             impact=np.zeros(6), exposures=np.zeros((6, 3))))
    z = free.weights.sum(axis=1) - x.current.sum(axis=1)
    np.testing.assert_allclose(-z, np.minimum(x.current[:, 0], 0.05), atol=1e-4)


def test_infeasibility_is_diagnosed():
    x = make_inputs(n=6, seed=7, turnover_max=0.0)
    x.upper = np.minimum(x.upper, x.current.sum(axis=1) - 0.02)  # bounds force sales, turnover forbids any
    sol = solve(x)
    assert not sol.ok
    assert set(sol.relaxed_by) == {"bounds", "turnover"}
    assert "feasible without" in sol.message


def test_evaluate_reports_cash_after_costs():
    x = make_inputs(n=5, seed=9)
    weights = x.current.copy()
    weights[0, 0] += 0.01
    e = evaluate(x, weights)
    assert e["cash_after"] == pytest.approx(x.cash - 0.01 - 0.001 * 0.01 - x.impact[0] * 0.01**1.5, abs=1e-15)
    assert e["turnover"] == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"current": np.zeros((3, 1))}, "current has shape"),
        ({"linear": np.full(12, np.nan)}, "NaN"),
        ({"buy_cap": np.full(12, -1.0)}, "buy_cap must be >= 0"),
        ({"lower": np.full(12, 0.5), "upper": np.full(12, 0.1)}, "lower bound"),
        ({"risk_aversion": 0.0}, "risk_aversion"),
        ({"cash_min": 0.5, "cash_max": 0.1}, "cash_min"),
        ({"sector_cap": np.ones(2)}, "sector_cap has 2 entries"),
        ({"tax_lengths": np.ones((12, 1)), "tax_slopes": np.full((12, 1), -0.1)}, "harvestable loss"),
    ],
)
def test_bad_inputs_are_refused(change, message):
    x = make_inputs(n=12, seed=0, **change)
    with pytest.raises(ValueError, match=message):
        solve(x)


def test_a_bounded_cache_drops_the_least_recently_used_shape():
    books = [make_inputs(n=10, seed=0), make_inputs(n=20, seed=2, tax=True), make_inputs(n=10, seed=3, sleeves=2)]
    shapes = [shape_of(x) for x in books]
    cache = ProblemCache(capacity=2)
    assert cache.warm(books[:2]) == 2
    cache.get(shapes[0])  # used again: the second shape is now the oldest
    assert cache.warm(books[2:]) == 1 and set(cache.problems) == {shapes[0], shapes[2]}
    assert set(cache.compile_seconds) <= set(cache.problems) and cache.builds == 3
    # a dropped shape is built again when needed, and solves as a fresh one does
    np.testing.assert_allclose(solve(books[1], cache).weights, solve(books[1], ProblemCache()).weights, atol=1e-6)
    assert cache.builds == 4 and len(cache.problems) == 2
