"""The general Laplace path (PIRLS, any random-effects structure) and the check of the optimum."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm
import mixedmodels.glmm as G

FIX = Path(__file__).parent / "fixtures"


def cbpp_frame():
    d = pd.read_csv(FIX / "cbpp.csv", dtype={"herd": str, "period": str})
    return G.glmer_frame("cbind(incidence, size - incidence) ~ period + (1 | herd)", d, "binomial")


def test_pirls_laplace_equals_one_point_agq():
    # Internal identity: the sparse PIRLS Laplace and the scalar kernel with one point.
    frame = cbpp_frame()
    lap = G.LaplaceObjective(frame)
    agq = G.ScalarObjective(frame, 1)
    x = np.array([-1.4, -0.99, -1.13, -1.58, 0.65])
    l1, g1 = lap.evaluate(x)
    l2, g2 = agq.evaluate(x)
    assert l1 == pytest.approx(l2, abs=1e-9)
    np.testing.assert_allclose(g1, g2, rtol=1e-7, atol=1e-8)


def vector_data():
    rng = np.random.default_rng(8)
    g = np.repeat(np.arange(40), 12)
    x = np.tile(np.linspace(-1, 1, 12), 40)
    b = rng.multivariate_normal([0, 0], [[0.5, 0.15], [0.15, 0.3]], 40)
    eta = 0.5 + 0.8 * x + b[g, 0] + b[g, 1] * x
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)), "x": x, "g": g.astype(str)})


def test_laplace_gradient_vector_term():
    frame = G.glmer_frame("y ~ x + (x | g)", vector_data(), "poisson")
    obj = G.make_objective(frame, 1)
    x = np.array([0.4, 0.7, 0.6, 0.2, 0.5])
    _, g = obj.evaluate(x)
    fd = [(obj.evaluate(x + e, gradient=False)[0] - obj.evaluate(x - e, gradient=False)[0]) / 2e-6
          for e in np.eye(len(x)) * 1e-6]
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5)


def test_vector_term_fit():
    fit = mm.glmer("y ~ x + (x | g)", vector_data(), family="poisson", nagq=1)
    assert fit.converged and fit.nagq == 1
    vc = fit.varcorr()
    assert list(vc["var1"]) == ["(Intercept)", "x", "(Intercept)"]
    assert -1 < vc["sdcor"].iloc[2] < 1
    re = fit.ranef(condvar=True)
    assert list(re["term"].unique()) == ["(Intercept)", "x"] and len(re) == 80
    assert np.all(re["condsd"] > 0)
    assert "Corr" in str(fit.summary())


def test_a_non_optimum_is_reported():
    frame = cbpp_frame()
    obj = G.make_objective(frame, 5)
    opt = G.GlmerOptSummary(initial=np.zeros(5), final=np.array([-1.0, -0.5, -1.0, -1.5, 0.3]),
                       loglik=np.nan, optimizer="none", nevals=0, newton_steps=0, message="")
    opt = G.check_optimum(obj, opt)
    assert not opt.converged
    assert "not at the optimum" in opt.convergence_message


def test_result_accessors_cbpp():
    d = pd.read_csv(FIX / "cbpp.csv", dtype={"herd": str, "period": str})
    fit = mm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", d, nagq=25)
    assert fit.converged and not fit.singular
    assert fit.deviance == pytest.approx(-2 * fit.loglik)
    assert fit.vcov.shape == (4, 4) and list(fit.se.index) == fit.xnames
    text = str(fit.summary())
    for piece in ["Adaptive Gauss-Hermite Quadrature, nAGQ = 25", "Family: binomial  ( logit )",
                  "Scaled residuals", "Number of obs: 56, groups:  herd, 15", "z value",
                  "Correlation of Fixed Effects"]:
        assert piece in text, piece
    assert "<table" in fit.summary()._repr_html_()
