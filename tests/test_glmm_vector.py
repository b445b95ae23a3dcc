"""glmer with adaptive quadrature for a vector random effect (one grouping factor, 2-3 columns).

The reference is the brute-force log-likelihood of tests/test_agq_vector.py (trapezoid rule on
a fine grid per group, scipy's probabilities): the nagq="auto" fit must be its maximum.
"""

import warnings

import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm
from mixedmodels.agq_vector import VectorObjective
from mixedmodels.glmm import QuadratureWarning

from test_agq_vector import FIX, LME4, brute_loglik, placement, slopes_data


@pytest.fixture(scope="module")
def slopes():
    return pd.read_csv(FIX / "binom_slopes.csv", dtype={"g": str})


@pytest.fixture(scope="module")
def auto_fit(slopes):
    return mm.glmer("y ~ x + (x | g)", slopes, nagq="auto")


def _T(theta):
    return np.array([[theta[0], 0.0], [theta[1], theta[2]]])


def test_auto_fit_is_the_maximum_of_the_brute_force_likelihood(auto_fit):
    fit = auto_fit
    assert fit.nagq > 1 and fit.auto and fit.quadrature_converged and fit.converged
    _, X, Z, y, m, codes = slopes_data()
    x = np.concatenate([fit.fixef.to_numpy(), fit.theta])
    # One grid placement (at the estimates) for every evaluation, so the brute force is a
    # smooth function of the parameters and its central differences are clean.
    place = placement(x[:2], _T(x[2:]), X, Z, y, m, codes)

    def ll(x):
        return brute_loglik(x[:2], _T(x[2:]), X, Z, y, m, codes, place, h=0.3, half=7.5)

    assert fit.loglik == pytest.approx(ll(x), abs=1e-6)
    h = 1e-4
    grad = np.array([(ll(x + e) - ll(x - e)) / (2 * h) for e in np.eye(5) * h])
    assert np.max(np.abs(grad)) < 1e-4, grad


def test_laplace_fit_is_lme4s_and_flags_its_quadrature(slopes):
    with pytest.warns(QuadratureWarning, match="Laplace"):
        fit = mm.glmer("y ~ x + (x | g)", slopes, nagq=1)
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(LME4["fixef"].values()), rtol=1e-4)
    np.testing.assert_allclose(fit.theta, LME4["theta"], rtol=1e-3)
    assert fit.loglik == pytest.approx(LME4["loglik"], abs=1e-4)
    # The check evaluated a real rule at the Laplace estimates, and it is higher.
    k, llc = fit.loglik_check
    assert k >= 10 and llc > fit.loglik + 1.0


def test_more_points_climb_to_the_auto_fit(slopes, auto_fit):
    fits = {}
    for q in (3, 5, 9):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", QuadratureWarning)
            fits[q] = mm.glmer("y ~ x + (x | g)", slopes, nagq=q)
        assert fits[q].nagq == q and fits[q].converged
    x_auto = np.concatenate([auto_fit.fixef.to_numpy(), auto_fit.theta])
    err = [np.max(np.abs(np.concatenate([fits[q].fixef.to_numpy(), fits[q].theta]) - x_auto))
           for q in (3, 5, 9)]
    assert err[0] > err[1] > err[2] and err[2] < 1e-5
    assert "nAGQ = 9" in str(fits[9].summary())


def test_uncorrelated_slopes(slopes):
    fit = mm.glmer("y ~ x + (x || g)", slopes, nagq=7)
    assert len(fit.theta) == 2 and fit.converged
    obj = fit._obj
    assert isinstance(obj, VectorObjective) and obj.T(fit.theta)[1, 0] == 0.0
    vc = fit.varcorr()
    assert list(vc["var1"]) == ["(Intercept)", "x"]
    # The same as the correlated model with the correlation held at zero: the kernel's
    # log-likelihood at (beta, [sd1, 0, sd2]).
    d = mm.glmer("y ~ x + (x | g)", slopes, nagq=7)._obj
    x = np.concatenate([fit.fixef.to_numpy(), [fit.theta[0], 0.0, fit.theta[1]]])
    assert d.evaluate(x, gradient=False)[0] == pytest.approx(fit.loglik, abs=1e-8)


def test_ranef_and_predict(auto_fit, slopes):
    re = auto_fit.ranef()
    assert set(re["term"]) == {"(Intercept)", "x"} and len(re) == 300
    assert np.all(re["condsd"] > 0)
    p = auto_fit.predict(slopes, type="response")
    assert np.all((p > 0) & (p < 1)) and len(p) == len(slopes)


def test_out_of_scope_keeps_its_clear_error(slopes):
    d = slopes.assign(h=(slopes.index % 7).astype(str), x2=slopes["x"] ** 2,
                      x3=np.sin(slopes["x"]))
    with pytest.raises(ValueError, match="single grouping factor"):
        mm.glmer("y ~ x + (1 | g) + (1 | h)", d, nagq=5)
    with pytest.raises(ValueError, match="at most 3"):
        mm.glmer("y ~ x + (x + x2 + x3 | g)", d, nagq=3)


def test_family_with_dispersion():
    # A Gamma GLMM carries its shape as an extra parameter (mixedmodels.dispersion); the vector
    # kernel fits it, and the quadrature check of a Laplace fit evaluates it too.
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(40), 6)
    x = rng.normal(size=len(g))
    b = rng.normal(size=(40, 2)) * [0.5, 0.3]
    mu = np.exp(1.0 + 0.4 * x + b[g, 0] + b[g, 1] * x)
    d = pd.DataFrame({"y": rng.gamma(4.0, mu / 4.0), "x": x, "g": g.astype(str)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lap = mm.glmer("y ~ x + (x | g)", d, family="Gamma", nagq=1)
        agq = mm.glmer("y ~ x + (x | g)", d, family="Gamma", nagq=5)
    assert lap.loglik_check is not None and np.isfinite(lap.loglik_check[1])
    assert isinstance(agq._obj, VectorObjective) and agq.converged
    assert agq.loglik == pytest.approx(agq.loglik_check[1], abs=1e-2)
    assert abs(agq.fixef["x"] - 0.4) < 0.2
