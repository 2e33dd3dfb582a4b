"""The rebalance benchmark at tiny sizes: its figures, its generated book (valid inputs with the
issue's ranges, deterministic, the same portfolios sliced or over the full universe), published
weights against every hard constraint recomputed here in numpy, and ours against
cvxportfolio's single-period policy on a problem both express."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest

from bench.rebalance import (
    PEER_DIFFERENCES,
    _peer_data,
    _peer_solve,
    generate_rebalance_book,
    main,
    peer_compatible,
    rebalance_book,
    rebalance_universe,
)
from optimizers.costs import impact_cost, linear_cost
from optimizers.problem import ProblemCache, solve, violations
from transforms.conventions import PERIODS_PER_YEAR

TINY = {"portfolios": 12, "instruments": 40, "factors": 5}
TOL = 1e-6  # the optimiser's feasibility tolerance (weights)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "rebalance.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(str(path), **TINY, peer_sample=3, rebuild_sample=3, full_universe=3)
    return rc, json.loads(path.read_text())


@pytest.fixture(scope="module")
def tiny_book():
    return generate_rebalance_book(**TINY, seed=11)


def test_main_writes_every_figure(tiny_run, capsys):
    rc, out = tiny_run
    assert rc == 0
    ours = out["ours"]
    assert ours["count"] == TINY["portfolios"]
    assert ours["violations"] == 0 and ours["violation_examples"] == []
    assert sum(ours["statuses"].values()) == TINY["portfolios"]
    assert ours["p50_s"] <= ours["p99_s"] <= ours["max_s"] <= ours["total_s"]
    # every shape is compiled before the loop (none in a solve), and the total counts it
    assert ours["compile"]["shapes"] == ours["shapes"] == ours["compiled_shapes"] == len(ours["compile"]["per_shape_s"])
    assert ours["compile"]["seconds"] + ours["solves_total_s"] == pytest.approx(ours["total_s"], abs=2e-3)
    assert ours["solves_total_s"] == pytest.approx(sum(ours["wall_ms"]) / 1e3, abs=2e-3)
    assert ours["solve_only"]["count"] == TINY["portfolios"] and ours["solve_only"]["total_s"] <= ours["solves_total_s"] + 1e-9
    assert ours["diagnosis"]["count"] == ours["unsolved"]
    assert set(ours["time_split"]) == {"portfolios", "median_ms", "share_of_wall", "median_iterations"}
    assert len(ours["wall_ms"]) == TINY["portfolios"] and ours["single_call"]["count"] == ours["time_split"]["portfolios"]
    assert out["rebuilt"]["count"] == 3 and out["rebuilt"]["ratio_p50"] > 0
    peer = out["peer"]
    assert peer["count"] == 3 and peer["ratio_p50"] > 0 and peer["ours_same_problem"]["count"] == 3
    assert peer["differences"] == list(PEER_DIFFERENCES)
    assert out["full_universe"]["n"] == TINY["instruments"] and out["full_universe"]["count"] == 3
    assert out["full_universe"]["violations"] == 0 and out["full_universe"]["shapes"] >= 1
    assert set(out["goals"]) == {"p99", "total"} and all(isinstance(g["pass"], bool) for g in out["goals"].values())
    for key in ("cpu_count", "python", "cvxpy", "clarabel", "numpy"):
        assert out["machine"][key]
    assert out["book"]["n"]["count"] == TINY["portfolios"]


def test_every_generated_problem_validates_and_is_consistent(tiny_book):
    assert len(tiny_book.inputs) == TINY["portfolios"]
    for x, rows, nav in zip(tiny_book.inputs, tiny_book.members, tiny_book.navs):
        x.validate()
        assert list(x.instrument_ids) == [tiny_book.universe.ids[i] for i in rows]
        assert x.current.sum() + x.cash == pytest.approx(1.0, abs=1e-12)
        assert 0.012 - 1e-12 <= x.cash <= 0.04 + 1e-12 and x.cash_min <= x.cash <= x.cash_max
        assert np.all(x.current >= 0) and np.all(x.target >= 0) and 0.97 <= x.target.sum() <= 0.985
        assert np.all(x.current.sum(axis=1) <= x.upper) and np.all(x.target.sum(axis=1) <= x.upper)
        # caps are lifted where the model portfolio is heavier: the targets always comply
        t = x.target.sum(axis=1)
        assert np.all(np.bincount(x.sector, weights=t, minlength=len(x.sector_cap)) <= x.sector_cap)
        assert np.all(np.bincount(x.asset_class, weights=t, minlength=len(x.class_cap)) <= x.class_cap)
        np.testing.assert_allclose(x.sell_cap, 0.1 * tiny_book.universe.adv[rows] / nav, rtol=1e-12)
        if x.tax_lengths is not None:  # the pieces cover exactly what is held
            np.testing.assert_allclose(x.tax_lengths.sum(axis=1), x.current.sum(axis=1), atol=1e-15)
            assert np.all(np.diff(x.tax_slopes, axis=1) >= 0)


def test_book_follows_the_issue_at_full_size():
    u = rebalance_universe(500, 20, seed=11)
    vols = np.sqrt(np.diag(u.factor_covariance))
    assert np.all((vols >= 0.05) & (vols <= 0.25)) and np.linalg.eigvalsh(u.factor_covariance).min() > 0
    assert np.all((np.sqrt(u.specific_variance) >= 0.15) & (np.sqrt(u.specific_variance) <= 0.45))
    total = np.diag(u.exposures @ u.factor_covariance @ u.exposures.T) + u.specific_variance
    np.testing.assert_allclose(u.sigma, np.sqrt(total / PERIODS_PER_YEAR), rtol=1e-12)
    assert len(set(u.sector)) == 11 and len(set(u.asset_class)) == 3
    assert u.adv.min() >= 1e6 and u.adv.max() <= 5e8 and u.price.min() >= 10 and u.price.max() <= 500
    book = generate_rebalance_book(300, 500, 20, seed=11)
    assert np.all((book.navs >= 1e6) & (book.navs <= 1e9))
    sizes = np.array([x.n for x in book.inputs])
    assert 60 + 60 - 42 <= sizes.min() and sizes.max() <= 100 + 100 - 70  # held + targeted - both
    assert 0.12 < np.mean([len(x.sleeves) == 2 for x in book.inputs]) < 0.28
    assert 0.22 < np.mean([x.tax_lengths is not None for x in book.inputs]) < 0.38
    for x in book.inputs:
        x.validate()
        assert 0.012 - 1e-12 <= x.cash <= 0.04 + 1e-12 and x.current.max() <= 0.095 + 1e-12


def test_book_is_deterministic_and_the_same_sliced_or_full(tiny_book):
    again = rebalance_book(**TINY, seed=11)
    for a, b in zip(tiny_book.inputs, again):
        np.testing.assert_array_equal(a.current, b.current)
        np.testing.assert_array_equal(a.impact, b.impact)
    other = rebalance_book(**TINY, seed=12)
    assert any(a.current.shape != b.current.shape or not np.array_equal(a.current, b.current)
               for a, b in zip(tiny_book.inputs, other))
    full = generate_rebalance_book(**TINY, seed=11, full_universe=True)
    for sliced, wide, rows in zip(tiny_book.inputs, full.inputs, tiny_book.members):
        assert wide.n == TINY["instruments"]
        np.testing.assert_allclose(wide.current[rows], sliced.current, rtol=0, atol=1e-15)
        np.testing.assert_allclose(wide.target[rows], sliced.target, rtol=0, atol=1e-15)
        assert wide.current.sum() == pytest.approx(sliced.current.sum(), abs=1e-12)  # nothing outside the slice
        np.testing.assert_array_equal(wide.exposures[rows], sliced.exposures)


def _check_hard_constraints(x, W):
    """Every hard constraint of ``x`` at sleeve weights ``W``, recomputed from the definitions."""
    w, w0 = W.sum(axis=1), x.current.sum(axis=1)
    z = w - w0
    assert W.min() >= -TOL  # long-only, every sleeve
    assert np.all(w <= x.upper + TOL) and np.all(w >= x.lower - TOL)
    assert np.all(z <= x.buy_cap + TOL) and np.all(-z <= x.sell_cap + TOL)  # liquidity (0.1 ADV / NAV)
    cash = x.cash - z.sum()
    assert cash <= x.cash_max + TOL
    assert cash - linear_cost(z, x.linear) - impact_cost(z, x.impact) >= x.cash_min - TOL  # the buffer after costs
    for labels, caps in ((x.sector, x.sector_cap), (x.asset_class, x.class_cap)):
        for g, cap in enumerate(caps):
            assert w[labels == g].sum() <= cap + TOL
    assert np.abs(z).sum() <= x.turnover_max + TOL
    a = w - x.target.sum(axis=1)
    cov = x.exposures @ x.factor_covariance @ x.exposures.T + np.diag(x.specific_variance)
    assert np.sqrt(a @ cov @ a) <= x.te_max + TOL
    if x.tax_lengths is not None:  # nothing sold beyond what is held
        assert np.all(-z <= x.tax_lengths.sum(axis=1) + TOL)


def test_published_weights_keep_every_hard_constraint():
    cache = ProblemCache()
    checked = {"two_sleeves": 0, "taxable": 0, "all": 0}
    for x in rebalance_book(30, 60, 5, seed=11):  # small universes leave many big books infeasible: take 30
        sol = solve(x, cache, solvers=("CLARABEL",), diagnose=False)  # no SCS on the infeasible ones: faster
        if not sol.ok:
            continue
        _check_hard_constraints(x, sol.weights)
        assert violations(x, sol.weights) == {}
        checked["all"] += 1
        checked["two_sleeves"] += len(x.sleeves) == 2
        checked["taxable"] += x.tax_lengths is not None
    assert checked["all"] >= 10 and checked["two_sleeves"] >= 2 and checked["taxable"] >= 2


def test_ours_equals_cvxportfolio_where_the_problems_coincide(tiny_book):
    """With no cash buffer to bind, ours on ``peer_compatible`` and cvxportfolio's single-period
    policy solve the same problem: the weights agree to the solvers' accuracy."""
    u = tiny_book.universe
    cache, compared = ProblemCache(), 0
    for i, x in enumerate(tiny_book.inputs):
        y = replace(peer_compatible(x), cash_min=0.0)
        assert len(y.sleeves) == 1 and y.tax_lengths is None
        np.testing.assert_array_equal(y.current[:, 0], x.current.sum(axis=1))
        ours = solve(y, cache, solvers=("CLARABEL",), diagnose=False)
        if not ours.ok:
            continue
        assert ours.costs["cash_after"] > 1e-3  # the buffer does not bind: the problems coincide
        status, theirs, _ = _peer_solve(_peer_data(y, float(tiny_book.navs[i]), u.sigma[tiny_book.members[i]],
                                                   u.adv[tiny_book.members[i]]))
        assert status == "optimal"
        np.testing.assert_allclose(ours.weights[:, 0], theirs, atol=2e-5)
        compared += 1
        if compared == 3:
            break
    assert compared == 3


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="at least 11 instruments"):
        rebalance_universe(5, 3)
    with pytest.raises(ValueError, match="factor"):
        rebalance_universe(40, 0)
    with pytest.raises(ValueError, match="at least 1 portfolio"):
        rebalance_book(0, 40, 5)
