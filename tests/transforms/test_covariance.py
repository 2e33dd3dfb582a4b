"""Covariance estimators and factor models (transforms.covariance), checked against numpy.cov,
a hand-computed EWMA, scikit-learn's LedoitWolf (to 1e-10, and its published docstring
example) and the identities of the factor models."""

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from sklearn.covariance import LedoitWolf

from transforms.conventions import PERIODS_PER_YEAR
from transforms.covariance import (
    UNCLASSIFIED,
    ReturnMatrix,
    ewma_covariance,
    ewma_weights,
    ledoit_wolf,
    return_matrix,
    sample_covariance,
    sector_factor_model,
    statistical_factor_model,
)

D0 = date(2024, 1, 1)


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(7)
    common = rng.normal(0, 0.01, (250, 1))
    return 0.0003 + common * rng.uniform(0.5, 1.5, 12) + rng.normal(0, 0.008, (250, 12))


def _psd(a, tol=1e-14):
    return np.linalg.eigvalsh(a).min() >= -tol * max(1.0, np.abs(a).max())


# --- sample and EWMA ----------------------------------------------------------------------------


def test_sample_covariance_is_numpy_cov(X):
    assert np.allclose(sample_covariance(X), np.cov(X, rowvar=False, ddof=1), rtol=1e-13, atol=0)
    one = sample_covariance(X[:, :1])
    assert one.shape == (1, 1) and one[0, 0] == pytest.approx(np.var(X[:, 0], ddof=1), rel=1e-13)
    with pytest.raises(ValueError, match="at least 2 needed"):
        sample_covariance(X[:1])


def test_ewma_by_hand():
    # half-life 1 day: lambda = 0.5, weights 1/4, 1/2, 1 normalised to 1/7, 2/7, 4/7
    x = np.array([[1.0, 2.0], [3.0, -1.0], [-2.0, 0.0]])
    assert ewma_weights(3, 1.0) == pytest.approx([1 / 7, 2 / 7, 4 / 7], rel=1e-15)
    # weighted means m = (-1/7, 0); E_w[x1^2] = 35/7, E_w[x2^2] = 6/7, E_w[x1 x2] = -4/7
    expected = np.array([[35 / 7 - 1 / 49, -4 / 7], [-4 / 7, 6 / 7]])
    assert np.allclose(ewma_covariance(x, 1.0), expected, rtol=1e-14, atol=0)
    zero_mean = np.array([[35 / 7, -4 / 7], [-4 / 7, 6 / 7]])
    assert np.allclose(ewma_covariance(x, 1.0, demean=False), zero_mean, rtol=1e-14, atol=0)


def test_ewma_with_an_endless_half_life_is_the_1_over_T_covariance(X):
    assert np.allclose(ewma_covariance(X, 1e12), np.cov(X, rowvar=False, bias=True), rtol=1e-8, atol=0)
    # the newest days weigh most: with a half-life of 5 days the first 200 of 250 weigh 2**-10
    recent = ewma_covariance(X, 5.0)
    assert np.allclose(recent, ewma_covariance(X[200:], 5.0), rtol=5e-3)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="half_life"):
            ewma_covariance(X, bad)


# --- Ledoit-Wolf ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(250, 12), (40, 90), (500, 3), (30, 1), (2, 5)])
def test_ledoit_wolf_equals_sklearn(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(0.001, 0.02, shape) + rng.normal(0, 0.01, (shape[0], 1))
    cov, shrinkage = ledoit_wolf(x)
    reference = LedoitWolf().fit(x)
    assert shrinkage == pytest.approx(reference.shrinkage_, abs=1e-10)
    assert np.abs(cov - reference.covariance_).max() <= 1e-10 * max(1.0, np.abs(reference.covariance_).max())
    assert 0.0 <= shrinkage <= 1.0 and _psd(cov)


def test_ledoit_wolf_published_example():
    # scikit-learn's LedoitWolf docstring: 50 draws of N(0, [[.4, .2], [.2, .8]]) after
    # np.random.seed(0) give covariance_ [[0.4406, 0.1616], [0.1616, 0.8022]]; the docstring of
    # ledoit_wolf_shrinkage (RandomState(0), the same draws) gives a shrinkage of 0.23
    np.random.seed(0)
    x = np.random.multivariate_normal(mean=[0, 0], cov=[[0.4, 0.2], [0.2, 0.8]], size=50)
    cov, shrinkage = ledoit_wolf(x)
    # the docstring prints 4 decimals, truncated (0.44067 shows as 0.4406)
    assert np.allclose(cov, [[0.4406, 0.1616], [0.1616, 0.8022]], atol=1e-4, rtol=0)
    assert shrinkage == pytest.approx(0.23, abs=5e-3)


def test_ledoit_wolf_is_well_conditioned_where_the_sample_is_singular():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.01, (30, 80))  # fewer days than instruments: the sample is singular
    cov, shrinkage = ledoit_wolf(x)
    assert np.linalg.eigvalsh(sample_covariance(x)).min() < 1e-12
    assert np.linalg.eigvalsh(cov).min() > 0 and 0 < shrinkage <= 1
    # the shrinkage target keeps the average variance: tr(estimate) = tr(1/T sample)
    assert np.trace(cov) == pytest.approx(np.trace(np.cov(x, rowvar=False, bias=True)), rel=1e-12)


# --- the return matrix ------------------------------------------------------------------------


def _long(rows):
    return pl.DataFrame(
        {"instrument_id": [r[0] for r in rows], "date": [D0 + timedelta(days=r[1]) for r in rows], "return": [r[2] for r in rows]},
        schema={"instrument_id": pl.String, "date": pl.Date, "return": pl.Float64},
    )


def test_return_matrix_fills_gaps_with_zero_and_drops_short_histories():
    rows = [("A", d, 0.01 * (d + 1)) for d in range(10)]
    # B: day 4 has no row, day 6 a null return; C: 3 returns of 10 days; D: only a null
    rows += [("B", d, None if d == 6 else -0.02) for d in range(10) if d != 4]
    rows += [("C", d, 0.03) for d in range(3)] + [("D", 7, None)]
    m = return_matrix(_long(rows), min_history=5, min_coverage=0.5)
    assert m.ids == ("A", "B")
    assert m.dates.to_list() == [D0 + timedelta(days=d) for d in range(10)]
    assert m.values[:, 0] == pytest.approx([0.01 * (d + 1) for d in range(10)])
    assert m.values[[4, 6], 1].tolist() == [0.0, 0.0] and m.values[3, 1] == -0.02
    ids, dates, values = m  # unpacks as the (ids, dates, matrix) triple
    assert values.shape == (10, 2)
    # row order does not matter
    shuffled = return_matrix(_long(rows[::-1]), min_history=5, min_coverage=0.5)
    assert shuffled.ids == m.ids and np.array_equal(shuffled.values, m.values)
    # the default coverage (90%) drops B (8 of 10 days); the instruments filter
    assert return_matrix(_long(rows), min_history=5).ids == ("A",)
    assert return_matrix(_long(rows), ["B", "C", "Z"], min_history=1, min_coverage=0.0).ids == ("B", "C")
    assert return_matrix(_long(rows), min_history=1, min_coverage=0.0).ids == ("A", "B", "C")


def test_return_matrix_other_column_name_and_empty():
    frame = _long([("A", d, 0.01) for d in range(30)]).rename({"return": "daily_return"})
    assert return_matrix(frame, column="daily_return").values.shape == (30, 1)
    empty = return_matrix(_long([]))
    assert empty.ids == () and empty.values.shape == (0, 0)


def test_return_matrix_bad_input():
    with pytest.raises(ValueError, match="missing column"):
        return_matrix(_long([("A", 0, 0.1)]).drop("return"))
    with pytest.raises(ValueError, match="duplicate key"):
        return_matrix(_long([("A", 0, 0.1), ("A", 0, 0.2)]))
    with pytest.raises(ValueError, match="non-finite"):
        return_matrix(_long([("A", 0, float("nan"))]))
    with pytest.raises(ValueError, match="below -100%"):
        return_matrix(_long([("A", 0, -1.5)]))


# --- factor models ------------------------------------------------------------------------------


def test_sector_factor_model(X):
    sectors = ["Tech"] * 4 + ["Energy"] * 3 + [None] + ["Utilities"] * 4
    ids = [f"I{i}" for i in range(12)]
    model = sector_factor_model(X, sectors, ids)
    assert model.factor_names == ("Energy", "Tech", UNCLASSIFIED, "Utilities")
    assert model.instrument_ids == tuple(ids)
    b = model.exposures
    assert b.shape == (12, 4) and np.array_equal(b.sum(axis=1), np.ones(12))
    means = np.column_stack([X[:, [s == f or (s is None and f == UNCLASSIFIED) for s in sectors]].mean(axis=1) for f in model.factor_names])
    assert np.allclose(model.factor_covariance, np.cov(means, rowvar=False), rtol=1e-12, atol=0)
    resid = X - means @ b.T
    assert np.allclose(model.specific_variance, np.var(resid, axis=0, ddof=1), rtol=1e-10, atol=1e-20)
    assert model.specific_variance[7] == pytest.approx(0.0, abs=1e-20)  # alone in its sector
    cov = model.covariance()
    assert np.allclose(cov, b @ model.factor_covariance @ b.T + np.diag(model.specific_variance), rtol=1e-14, atol=0)
    assert _psd(cov)
    annual = model.annualised()
    assert np.allclose(annual.covariance(), cov * PERIODS_PER_YEAR, rtol=1e-13, atol=0)
    # sectors by id, and EWMA estimates
    by_id = sector_factor_model(ReturnMatrix(tuple(ids), pl.Series([], dtype=pl.Date), X), dict(zip(ids, sectors)))
    assert np.allclose(by_id.covariance(), cov, rtol=1e-14, atol=0)
    ewma = sector_factor_model(X, sectors, ids, half_life=20)
    assert np.allclose(ewma.factor_covariance, ewma_covariance(means, 20), rtol=1e-12, atol=0)
    assert _psd(ewma.covariance())
    with pytest.raises(ValueError, match="sectors has 3 entries"):
        sector_factor_model(X, ["A", "B", "C"])


def test_statistical_factor_model(X):
    full = statistical_factor_model(X, 12)
    assert np.allclose(full.covariance(), np.cov(X, rowvar=False), rtol=1e-10, atol=1e-18)
    model = statistical_factor_model(X, 3)
    assert model.factor_names == ("PC1", "PC2", "PC3")
    eig = np.linalg.eigvalsh(np.cov(X, rowvar=False))[::-1]
    assert np.allclose(np.diag(model.factor_covariance), eig[:3], rtol=1e-10)
    assert np.allclose(model.exposures.T @ model.exposures, np.eye(3), atol=1e-12)
    assert (model.exposures.sum(axis=0) >= 0).all()
    cov = model.covariance()
    assert np.allclose(np.diag(cov), np.var(X, axis=0, ddof=1), rtol=1e-10)  # D completes the variances
    assert _psd(cov) and (model.specific_variance >= 0).all()
    for k in (0, 13):
        with pytest.raises(ValueError, match="k must be between 1 and"):
            statistical_factor_model(X, k)


def test_bad_matrices():
    with pytest.raises(ValueError, match="NaN or infinite"):
        sample_covariance(np.array([[0.1, np.nan], [0.2, 0.1]]))
    with pytest.raises(ValueError, match="2-D"):
        ledoit_wolf(np.zeros(5))
    with pytest.raises(ValueError, match="distinct instrument ids"):
        sector_factor_model(np.zeros((5, 2)), ["A", "B"], ["x", "x"])


def test_statistical_factor_model_with_fewer_days_than_instruments():
    # T < N: the components come from the T x T Gram matrix; all of them rebuild the sample
    x = np.random.default_rng(12).normal(0, 0.01, (15, 40))
    eig = np.linalg.eigvalsh(np.cov(x, rowvar=False))[::-1]
    model = statistical_factor_model(x, 4)
    assert np.allclose(np.diag(model.factor_covariance), eig[:4], rtol=1e-10)
    assert np.allclose(model.exposures.T @ model.exposures, np.eye(4), atol=1e-10)
    full = statistical_factor_model(x, 15)  # rank 14 after centring: the last factor is empty
    assert np.allclose(full.covariance(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-16)
    assert full.factor_covariance[-1, -1] == 0.0 and not full.exposures[:, -1].any()
