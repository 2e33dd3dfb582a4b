"""The cost-benefit step's drift figure, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from optimizers.problem import RebalanceInputs
from optimizers.rebalance import drift_of


def _book(current, target, cash) -> RebalanceInputs:
    n = len(current)
    return RebalanceInputs(
        instrument_ids=tuple(f"I{i}" for i in range(n)), sleeves=("S",), current=np.array(current, float)[:, None],
        target=np.array(target, float)[:, None], cash=cash, exposures=np.zeros((n, 1)), factor_covariance=np.eye(1),
        specific_variance=np.full(n, 0.04), lower=np.zeros(n), upper=np.ones(n), buy_cap=np.ones(n), sell_cap=np.ones(n),
        linear=np.zeros(n), impact=np.zeros(n), sector=np.zeros(n, int), asset_class=np.zeros(n, int))


def test_drift_counts_the_cash_the_targets_do_not_hold():
    # 30/50 held with 20% cash against 50/50 targets: 0.5 * (0.2 + 0 + 0.2) = 0.2, as transforms.drift counts it
    x = _book([0.3, 0.5], [0.5, 0.5], 0.2)
    assert drift_of(x, x.current) == pytest.approx(0.2, abs=1e-15)
    # buying 0.2 of the first: on target, no cash left
    assert drift_of(x, np.array([[0.5], [0.5]])) == pytest.approx(0.0, abs=1e-15)
    # targets that leave 2% in cash: holding 2% cash is no drift
    y = _book([0.49, 0.49], [0.49, 0.49], 0.02)
    assert drift_of(y, y.current) == pytest.approx(0.0, abs=1e-15)


def test_a_liquidating_book_drifts_by_what_it_still_holds():
    x = _book([0.3, 0.5], [0.0, 0.0], 0.2)  # targets all cash
    assert drift_of(x, x.current) == pytest.approx(0.8, abs=1e-15)
    assert drift_of(x, np.array([[0.0], [0.5]])) == pytest.approx(0.5, abs=1e-15)
