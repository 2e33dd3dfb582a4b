"""Round lots and repair (optimizers.rounding): rounding, closes and sleeve splits computed by hand,
repairs of a broken cash buffer, sector cap and tracking-error limit, a local minimum left by
weighing the broken group, a rejection, the closed-form single-coordinate variance update against
a direct recomputation, and, over random solved problems (hypothesis), that nothing published
ever breaks a hard constraint (``--hypothesis-show-statistics`` shows the status rates)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from optimizers.problem import (
    ProblemCache,
    RebalanceInputs,
    factor_loadings,
    solve,
    tracking_error,
    violations,
)
from optimizers.rounding import REJECTED, REPAIRED, ROUNDED, coordinate_move_variance, round_trades

NAV = 1e6


def _book(current, target=None, cash=None, **overrides) -> RebalanceInputs:
    """A long-only book with loose limits, no costs and no factor risk unless overridden."""
    current = np.asarray(current, dtype=float)
    current = current[:, None] if current.ndim == 1 else current
    n = current.shape[0]
    x = RebalanceInputs(
        instrument_ids=tuple(f"I{i}" for i in range(n)), sleeves=tuple(f"S{j}" for j in range(current.shape[1])),
        current=current, target=current.copy() if target is None else np.asarray(target, dtype=float).reshape(current.shape),
        cash=1 - current.sum() if cash is None else cash,
        exposures=np.zeros((n, 1)), factor_covariance=np.array([[0.04]]), specific_variance=np.full(n, 0.04),
        lower=np.zeros(n), upper=np.ones(n), buy_cap=np.ones(n), sell_cap=np.ones(n), linear=np.zeros(n), impact=np.zeros(n),
        sector=np.zeros(n, dtype=int), asset_class=np.zeros(n, dtype=int),
    )
    for key, value in overrides.items():
        setattr(x, key, value)
    return x


def _after(x: RebalanceInputs, shares, unit_value) -> np.ndarray:
    """The solver's single-sleeve weights after trading ``shares``."""
    return x.current + (np.asarray(shares, dtype=float) * unit_value / NAV)[:, None]


# --- step 1: rounding by hand -------------------------------------------------------------------------------------------

def test_rounds_to_the_nearest_lot_and_drops_small_trades():
    x = _book(np.full(5, 0.05))  # 500 shares at 100, I3: 5,000 shares at 10
    uv, lot = np.array([100.0, 100.0, 100.0, 10.0, 100.0]), np.full(5, 100)
    weights = _after(x, [149, 151, -149, 260, 150], uv)
    r = round_trades(x, weights, NAV, uv, lot, min_trade_value=5000.0)
    # 149 -> 100, 151 -> 200, -149 -> -100, 260 -> 300 but 300 * 10 = 3,000 < 5,000 -> 0, 150 -> 200 (half away from 0)
    np.testing.assert_array_equal(r.quantity, [100, 200, -100, 0, 200])
    assert (r.status, r.repair_steps, r.violations) == (ROUNDED, 0, {})
    np.testing.assert_allclose(r.weights[:, 0], 0.05 + np.array([100, 200, -100, 0, 200]) * uv / NAV, atol=1e-15)
    assert "1 below the minimum trade value dropped" in r.message
    # without a minimum the 260 shares trade as 300
    assert round_trades(x, weights, NAV, uv, lot).quantity[3] == 300


def test_trades_already_in_lots_are_kept_exactly():
    x = _book(np.full(3, 0.02))
    uv, lot = np.array([10.0, 25.0, 40.0]), np.array([100, 10, 1])
    weights = _after(x, [300, -70, 13], uv)
    r = round_trades(x, weights, NAV, uv, lot)
    np.testing.assert_array_equal(r.quantity, [300, -70, 13])
    np.testing.assert_allclose(r.weights, weights, atol=1e-15)


def test_a_whole_odd_lot_holding_is_closed_and_no_sale_passes_the_holding():
    uv = np.full(4, 10.0)
    x = _book(np.array([150, 180, 180, 3]) * 10 / NAV)  # shares held: 150, 180, 180 and 3 (worth 30)
    # the solver closes I0 and I3, sells 160 of I1 and 140 of I2
    weights = _after(x, [-150, -160, -140, -3], uv)
    weights[[0, 3]] = 0.0
    r = round_trades(x, weights, NAV, uv, np.full(4, 100), min_trade_value=1000.0)
    # I0: the close of 150 (not a lot) is allowed; I1: -160 rounds to -200, past the holding: the whole 180;
    # I2: -140 -> -100; I3: the 3-share close is worth 30 < 1,000 but closing is always allowed
    np.testing.assert_allclose(r.quantity, [-150, -180, -100, -3], rtol=1e-12)
    assert r.status == ROUNDED
    np.testing.assert_array_equal(r.weights[[0, 1, 3], 0], 0.0)
    assert r.weights[2, 0] == pytest.approx(80 * 10 / NAV, abs=1e-15)
    assert "4 trades, 3 of them whole-holding closes" in r.message


def test_sleeve_split_by_hand():
    uv = np.full(4, 100.0)
    W0 = np.array([[0.01, 0.01], [0.01, 0.01], [0.01, 0.01], [0.005, 0.005]])
    solver = np.array([
        [0.014, 0.012],   # both sleeves buy: +60 shares -> 100 (lot 100), split 2:1 as the solver's changes
        [0.015, 0.0085],  # a transfer plus a net buy of 35 -> 40 (lot 10): the extra 5 shares go to the buying sleeve
        [0.013, 0.007],   # a pure transfer: no net trade, the transfer is kept
        [0.0, 0.0055],    # sells 45 of 100 -> 50 (lot 50): sleeve 0 would go to -0.0005, lifted to 0 from sleeve 1
    ])
    x = _book(W0)
    r = round_trades(x, solver, NAV, uv, np.array([100, 10, 1, 50]))
    np.testing.assert_allclose(r.quantity, [100, 40, 0, -50], atol=1e-9)
    expected = np.array([
        [0.01 + 0.004 * 0.01 / 0.006, 0.01 + 0.002 * 0.01 / 0.006],
        [0.0155, 0.0085],
        [0.013, 0.007],
        [0.0, 0.005],
    ])
    np.testing.assert_allclose(r.weights, expected, atol=1e-15)
    np.testing.assert_allclose(r.weights.sum(axis=1), W0.sum(axis=1) + r.quantity * uv / NAV, atol=1e-15)
    assert r.status == ROUNDED


def test_a_book_that_may_short_sells_past_the_holding_and_covers_a_short_whole():
    uv = np.full(3, 10.0)
    x = _book(np.array([150, -150, 180]) * 10 / NAV, long_only=False, lower=np.full(3, -1.0), cash_max=2.0)
    weights = _after(x, [-400, 150, -160], uv)
    weights[1] = 0.0
    r = round_trades(x, weights, NAV, uv, np.full(3, 100))
    # I0 goes short on purpose: -400 stays; I1 covers its whole short of 150 (not a lot); I2 stays long, so its
    # sale of 160 rounds to 200, past the 180 held: the whole holding
    np.testing.assert_allclose(r.quantity, [-400, 150, -180], rtol=1e-12)
    assert r.status == ROUNDED
    np.testing.assert_allclose(r.weights[:, 0], [-250 * 10 / NAV, 0.0, 0.0], atol=1e-15)


# --- step 2: repairs by hand -------------------------------------------------------------------------------------------

def test_budget_repair_removes_one_lot_of_the_right_buy():
    # A buys 56 at 100 (lot 10), B buys 88 at 50 (lot 1), D sells 20 at 100 (lot 10): net 5,600 + 4,400 - 2,000
    # = 8,000 = exactly the cash above the buffer (0.008 of NAV). Rounding A up to 60 spends 400 too much.
    uv, lot = np.array([100.0, 50.0, 100.0]), np.array([10, 1, 10])
    x = _book([0.10, 0.10, 0.01])
    x.cash_min = x.cash - 0.008
    weights = _after(x, [56, 88, -20], uv)
    assert violations(x, weights) == {}
    r = round_trades(x, weights, NAV, uv, lot)
    # one lot off A (-1,000) fixes it; selling one more lot of D fixes it too but moves 1,000 away from the
    # solver's trade against A's 600; one share off B (-50) does not fix it
    np.testing.assert_array_equal(r.quantity, [50, 88, -20])
    assert (r.status, r.repair_steps, r.violations) == (REPAIRED, 1, {})
    cash_after = x.cash - (r.quantity * uv).sum() / NAV
    assert cash_after == pytest.approx(x.cash_min + 0.0006, abs=1e-15)


def test_sector_cap_repair():
    # sector 0 (A, B) capped at 30%: the solver fills it exactly; A's 56 shares rounded to 60 break it by 0.04%
    uv, lot = np.array([100.0, 100.0, 20.0]), np.array([10, 10, 100])
    x = _book([0.10, 0.1944, 0.30], sector=np.array([0, 0, 1]), sector_cap=np.array([0.30, 1.0]))
    weights = _after(x, [56, 0, 240], uv)
    assert violations(x, weights) == {}
    rounded_only = _after(x, [60, 0, 200], uv)
    assert violations(x, rounded_only)["sector_caps"] == pytest.approx(0.0004, abs=1e-12)
    r = round_trades(x, weights, NAV, uv, lot)
    np.testing.assert_array_equal(r.quantity, [50, 0, 200])
    assert (r.status, r.repair_steps) == (REPAIRED, 1)
    assert r.weights[:2, 0].sum() == pytest.approx(0.2994, abs=1e-12)


def test_tracking_error_limit_repair():
    # one factor (vol 20%) with loadings 1 and 0.5, specific variances 4% and 9%: G = [0.2, 0.1]
    x = _book([0.10, 0.30], target=[0.20, 0.30], exposures=np.array([[1.0], [0.5]]),
              specific_variance=np.array([0.04, 0.09]))
    uv, lot = np.array([100.0, 10.0]), np.array([10, 100])
    weights = _after(x, [954, 0], uv)  # active -0.46% in A
    te_solver = np.sqrt((0.2 * 0.0046) ** 2 + 0.04 * 0.0046**2)
    assert tracking_error(weights[:, 0] - x.target[:, 0], factor_loadings(x.exposures, x.factor_covariance),
                          x.specific_variance) == pytest.approx(te_solver, rel=1e-12)
    x.te_max = te_solver + 1e-7
    # 954 rounds to 950: active -0.5%, TE sqrt(2 * 0.04 * 0.005^2) = 0.14142% > 0.13010%
    assert violations(x, _after(x, [950, 0], uv))["tracking_error"] == pytest.approx(np.sqrt(2e-6) - x.te_max, rel=1e-9)
    r = round_trades(x, weights, NAV, uv, lot)
    # one lot more (960): active -0.4%, TE 0.11314%
    np.testing.assert_array_equal(r.quantity, [960, 0])
    assert (r.status, r.repair_steps, r.violations) == (REPAIRED, 1, {})


def test_a_local_minimum_is_left_by_weighing_the_broken_group():
    # sector 0 (A 45%, B 10%) must come down to its 50% cap; each may sell at most 5% today. The solver sells
    # 30 shares of A (a lot is 60 shares, 6%) and 20 of B (lot 1). A rounds half away to -60: 6% > 5% of sell cap.
    uv, lot = np.array([1000.0, 1000.0]), np.array([60, 1])
    x = _book([0.45, 0.10], sector=np.array([0, 0]), sector_cap=np.array([0.5]), sell_cap=np.array([0.05, 0.05]))
    weights = _after(x, [-30, -20], uv)
    assert violations(x, weights) == {}
    r = round_trades(x, weights, NAV, uv, lot)
    # no move lowers the plain sum (A back to 0 fixes the 1% of liquidity but breaks the cap by 3%); with the
    # liquidity group weighed 4x it does, and then B sells 10 + 10 + 10 more shares, each lowering the cap's
    # excess by 1%: A 0, B -50, exactly at its sell cap and at the sector cap
    np.testing.assert_array_equal(r.quantity, [0, -50])
    assert (r.status, r.repair_steps, r.violations) == (REPAIRED, 4, {})
    assert "broken groups weighted up 2 times" in r.message


def test_no_lot_fits_the_bounds_so_the_trade_is_rejected():
    # 105 shares at 100 (1.05%) must come down into [0.99%, 1.00%]: 99 or 100 shares, but lots are 10
    x = _book([0.0105], lower=np.array([0.0099]), upper=np.array([0.01]))
    uv = np.array([100.0])
    r = round_trades(x, _after(x, [-5], uv), NAV, uv, np.array([10]))
    assert r.status == REJECTED
    assert set(r.violations) == {"bounds"} and r.violations == violations(x, r.weights)
    # every lot toward or away only widens the breach; the last resort takes the sale back to 0 (above the cap)
    np.testing.assert_array_equal(r.quantity, [0])
    assert "rejected" in r.message and "bounds" in r.message and "1 moves forced toward zero" in r.message


# --- the closed-form single-coordinate update ----------------------------------------------------------------------------

def test_coordinate_move_variance_equals_a_direct_recomputation():
    rng = np.random.default_rng(4)
    n, k = 30, 4
    A = rng.normal(size=(k, k))
    G = factor_loadings(rng.normal(0, 0.5, (n, k)), A @ A.T / 10)
    sv = rng.uniform(0.01, 0.1, n)
    a = rng.normal(0, 0.02, n)
    d = rng.normal(0, 0.01, n)
    labels = rng.integers(-1, 3, n)  # -1: no sector
    fast = coordinate_move_variance(a, G, sv, d)
    fast_by_sector = coordinate_move_variance(a, G, sv, d, labels)
    for i in range(n):
        moved = a.copy()
        moved[i] += d[i]
        assert fast[i] == pytest.approx(tracking_error(moved, G, sv) ** 2, rel=1e-12)
        if labels[i] >= 0:
            in_sector = np.where(labels == labels[i], moved, 0.0)
            assert fast_by_sector[i] == pytest.approx(tracking_error(in_sector, G, sv) ** 2, rel=1e-12)
        else:
            assert fast_by_sector[i] == 0.0
    # a (2, n) stack of moves at once
    np.testing.assert_allclose(coordinate_move_variance(a, G, sv, np.stack([d, -d]))[1], coordinate_move_variance(a, G, sv, -d))


# --- random solved problems: nothing published breaks a hard constraint ----------------------------------------------------

def random_problem(seed: int, n: int, sleeves: int, caps: bool, te: float | None, turnover: float | None) -> RebalanceInputs:
    """A random long-only book, as tests/optimizers/test_problem.py builds them, with some buys blocked."""
    r = np.random.default_rng(seed)
    current = r.dirichlet(np.ones(n), size=sleeves).T * 0.97 / sleeves
    target = r.dirichlet(np.ones(n), size=sleeves).T * 0.98 / sleeves
    k = 3
    return RebalanceInputs(
        instrument_ids=tuple(f"I{i}" for i in range(n)), sleeves=tuple(f"S{j}" for j in range(sleeves)),
        current=current, target=target, cash=1 - current.sum(),
        exposures=r.normal(0, 0.3, (n, k)), factor_covariance=np.diag(r.uniform(0.01, 0.04, k)),
        specific_variance=r.uniform(0.02, 0.09, n), lower=np.zeros(n), upper=np.full(n, 0.6),
        buy_cap=np.where(r.random(n) < 0.1, 0.0, 0.3), sell_cap=np.full(n, 0.3),  # some wash-sale buy blocks
        linear=np.full(n, 0.001), impact=r.uniform(0.001, 0.01, n), sector=r.integers(0, 3, n), asset_class=r.integers(0, 2, n),
        sector_cap=np.full(3, 0.5) if caps else None, class_cap=np.full(2, 0.8) if caps else None,
        sector_risk_budget=np.full(3, 0.08) if caps else None, turnover_max=turnover, te_max=te, cash_min=0.01,
    )


CACHE = ProblemCache()


def check_rounded(x: RebalanceInputs, nav: float, unit_value: np.ndarray, lot: np.ndarray, min_trade: float, r) -> None:
    """Every invariant of a ``round_trades`` result."""
    assert r.status in (ROUNDED, REPAIRED, REJECTED)
    found = violations(x, r.weights)
    assert r.violations == found
    assert (r.status == REJECTED) == bool(found)  # published (ROUNDED / REPAIRED) only when nothing breaks
    if r.status == ROUNDED:
        assert r.repair_steps == 0
    w0 = x.current.sum(axis=1)
    held = w0 * nav / unit_value
    close = (held != 0) & (r.quantity == -held)
    lots = r.quantity / lot
    assert np.all(close | (lots == np.round(lots)))  # whole lots, except whole-holding closes
    assert np.all(close | (r.quantity == 0) | (np.abs(r.quantity) * unit_value >= min_trade * (1 - 1e-9)))
    assert np.all(r.quantity >= -held * (1 + 1e-12))  # no sale past the holding
    trade = np.where(close, -w0, r.quantity * unit_value / nav)
    np.testing.assert_allclose(r.weights.sum(axis=1), w0 + trade, atol=1e-12)
    np.testing.assert_array_equal(r.weights[close], 0.0)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000), n=st.integers(2, 30), sleeves=st.integers(1, 2), caps=st.booleans(),
    te=st.one_of(st.none(), st.floats(0.02, 0.2)), turnover=st.one_of(st.none(), st.floats(0.1, 1.0)),
    nav=st.floats(1e5, 1e7), min_trade=st.sampled_from([0.0, 1000.0, 10_000.0]),
)
def test_published_results_keep_every_hard_constraint(seed, n, sleeves, caps, te, turnover, nav, min_trade):
    x = random_problem(seed, n, sleeves, caps, te, turnover)
    sol = solve(x, CACHE, diagnose=False)
    if not sol.ok:
        event("not solved")
        return
    r = np.random.default_rng(seed + 1)
    unit_value = r.uniform(1.0, 200.0, n)
    lot = r.choice([1, 10, 100, 500], n)
    result = round_trades(x, sol.weights, nav, unit_value, lot, min_trade)
    event(f"status {result.status}")  # the REJECTED rate: pytest --hypothesis-show-statistics
    check_rounded(x, nav, unit_value, lot, min_trade, result)


# --- bad input ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weights": np.zeros((2, 1))}, "weights has shape"),
        ({"weights": np.full((3, 1), np.nan)}, "weights has a NaN"),
        ({"unit_value": np.ones(2)}, "unit_value has shape"),
        ({"unit_value": np.array([1.0, 0.0, 1.0])}, "unit_value must be > 0"),
        ({"unit_value": np.array([1.0, -2.0, 1.0])}, "unit_value must be > 0"),
        ({"lot_size": np.array([1, 0, 1])}, "lot_size"),
        ({"lot_size": np.array([1.0, 1.5, 1.0])}, "lot_size"),
        ({"nav": 0.0}, "nav must be > 0"),
        ({"nav": -1e6}, "nav must be > 0"),
        ({"nav": float("nan")}, "nav must be > 0"),
        ({"min_trade_value": -1.0}, "min_trade_value"),
        ({"max_steps": -1}, "max_steps"),
    ],
)
def test_bad_inputs_are_refused(change, message):
    x = _book([0.1, 0.2, 0.3])
    args = {"weights": x.current.copy(), "nav": NAV, "unit_value": np.full(3, 10.0), "lot_size": np.full(3, 100),
            "min_trade_value": 0.0, "max_steps": None} | change
    with pytest.raises(ValueError, match=message):
        round_trades(x, **args)
