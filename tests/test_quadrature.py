"""Gauss-Hermite rules for the standard normal density (mixedmodels.quadrature)."""

import numpy as np
import pytest

from mixedmodels.quadrature import gauss_hermite


@pytest.mark.parametrize("n", [1, 2, 5, 10, 25, 100, 200, 400])
def test_weights_sum_to_one_and_moments(n):
    r = gauss_hermite(n)
    assert np.all(np.isfinite(r.z)) and np.all(r.w >= 0)
    assert r.w.sum() == pytest.approx(1.0, abs=1e-13)
    assert np.sum(r.w * r.z) == pytest.approx(0.0, abs=1e-12)
    if n >= 2:  # an n-point rule integrates polynomials up to degree 2n - 1 exactly
        assert np.sum(r.w * r.z**2) == pytest.approx(1.0, rel=1e-10)
    if n >= 3:
        assert np.sum(r.w * r.z**4) == pytest.approx(3.0, rel=1e-9)


def test_one_point_rule_is_laplace():
    r = gauss_hermite(1)
    assert r.z.tolist() == [0.0] and r.w.tolist() == [1.0]
    # exp(logw_adapt) = sqrt(2 pi): the Laplace approximation's constant.
    assert np.exp(r.logw_adapt[0]) == pytest.approx(np.sqrt(2 * np.pi))


def test_large_rule_integrates_a_smooth_function():
    # E[expit(5 Z)] = 1/2 by symmetry; E[exp(Z)] = exp(1/2).
    r = gauss_hermite(200)
    assert np.sum(r.w * np.exp(r.z)) == pytest.approx(np.exp(0.5), rel=1e-12)


def test_memoized_and_read_only():
    assert gauss_hermite(10) is gauss_hermite(10)
    with pytest.raises(ValueError):
        gauss_hermite(10).z[0] = 1.0


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", 10_000, True])
def test_bad_sizes(bad):
    with pytest.raises(ValueError, match="quadrature points"):
        gauss_hermite(bad)
