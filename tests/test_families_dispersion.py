"""Gamma (log, inverse), inverse Gaussian and negative binomial (NB2) GLMMs with the dispersion
estimated jointly by ML, against glmmTMB 1.1.5 (tests/fixtures/features/features_reference.json,
made by tests/fixtures/features/make_features_reference.R):

    glmmTMB(TICKS ~ YEAR + cHEIGHT + (1 | LOCATION), grouseticks, family = nbinom2)
    glmmTMB(y ~ x + (1 | g), gamma_sim, family = Gamma(link = "log"))
    glmmTMB(y2 ~ x + (1 | g), gamma_sim, family = Gamma(link = "inverse"))

glmmTMB's Laplace uses the observed information, as ours does for these families; its `sigma`
is theta for nbinom2 and 1/sqrt(shape) for Gamma. lme4 is not the reference: glmer.nb reaches
-905.861 on grouseticks, below the optimum. AGQ and the inverse Gaussian (not in glmmTMB) are
checked against brute-force integrals.
"""

import json
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

import mixedmodels as mm
from mixedmodels import families as F
from mixedmodels.bootstrap import simulate

FIX = Path(__file__).parent / "fixtures"
REF = json.loads((FIX / "features" / "features_reference.json").read_text())


@lru_cache(maxsize=None)
def grouse():
    return pd.read_csv(FIX / "grouseticks.csv", dtype={"BROOD": str, "YEAR": str, "LOCATION": str})


@lru_cache(maxsize=None)
def gamma_data():
    return pd.read_csv(FIX / "features" / "gamma_sim.csv", dtype={"g": str})


@lru_cache(maxsize=None)
def ig_data():
    rng = np.random.default_rng(3)
    G, n = 30, 8
    g = np.repeat(np.arange(G), n)
    x = rng.uniform(-1, 1, G * n)
    eta = 6.0 + 0.8 * x + rng.normal(0, 1.5, G)[g]
    mu = 1 / np.sqrt(np.maximum(eta, 0.5))
    return pd.DataFrame({"y": rng.wald(mu, 1 / 0.05), "x": x, "g": g.astype(str)})


@lru_cache(maxsize=None)
def fit(case, nagq=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mm.QuadratureWarning)
        if case == "nb2_grouseticks":
            return mm.glmer_nb("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", grouse(), nagq=nagq)
        if case == "gamma_log":
            return mm.glmer("y ~ x + (1 | g)", gamma_data(), family="Gamma", nagq=nagq)
        if case == "gamma_inverse":
            return mm.glmer("y2 ~ x + (1 | g)", gamma_data(), family=F.Gamma(link="inverse"), nagq=nagq)
        return mm.glmer("y ~ x + (1 | g)", ig_data(), family="inverse_gaussian", nagq=nagq)


def _glmmtmb_sigma(f):
    return f.dispersion if f.family.name == "negative_binomial" else 1 / np.sqrt(f.dispersion)


@pytest.mark.parametrize("case", ["nb2_grouseticks", "gamma_log", "gamma_inverse"])
def test_laplace_matches_glmmtmb(case):
    f, ref = fit(case), REF[case]
    np.testing.assert_allclose(f.fixef, list(ref["fixef"].values()), rtol=1e-4)
    np.testing.assert_allclose(f.se, list(ref["se"].values()), rtol=1e-3)
    np.testing.assert_allclose(f.varcorr()["sdcor"], [ref["sd"]], rtol=1e-3)
    np.testing.assert_allclose(_glmmtmb_sigma(f), ref["sigma"], rtol=1e-3)
    assert abs(f.loglik - ref["loglik"]) < 1e-4
    assert f.npar == ref["npar"] and f.converged
    if case == "nb2_grouseticks":
        assert f.loglik > ref["lme4_glmer_nb_loglik"] + 0.1      # lme4's glmer.nb stops short


def _exact_loglik(f, data, yname, gname):
    """Brute force: the marginal log-likelihood at the fit's estimates, one quad per group."""
    fam = f.family
    X = f.model.X
    eta0 = X @ f.fixef.to_numpy()
    sd = float(f.theta[0])
    y = data.loc[f.model.rows, yname].to_numpy(dtype=float)
    codes = f.model.reterms[0].codes
    total = 0.0
    for k in range(codes.max() + 1):
        r = codes == k

        def integrand(b, r=r):
            return np.exp(np.sum(fam.loglik_rows(eta0[r] + b, y[r], np.ones(r.sum()))) + stats.norm.logpdf(b, 0, sd))

        # the integrand is concentrated near the group's mode: split the range there
        bs = np.linspace(-8 * sd, 8 * sd, 401)
        vals = np.sum(fam.loglik_rows(eta0[r][:, None] + bs[None, :], y[r][:, None], np.ones((r.sum(), 1))), axis=0) \
            + stats.norm.logpdf(bs, 0, sd)
        c = bs[np.argmax(vals)]
        lo, hi = -10 * sd, 10 * sd
        pts = sorted({lo, max(lo, c - sd), c, min(hi, c + sd), hi})
        tot = sum(integrate.quad(integrand, a, b, epsabs=0, epsrel=1e-12, limit=200)[0] for a, b in zip(pts, pts[1:]))
        total += np.log(tot)
    return total


@pytest.mark.parametrize("case,yname", [("nb2_grouseticks", "TICKS"), ("gamma_inverse", "y2"),
                                        ("inverse_gaussian", "y")])
def test_agq_loglik_is_the_exact_integral(case, yname):
    data = {"nb2_grouseticks": grouse, "gamma_inverse": gamma_data, "inverse_gaussian": ig_data}[case]()
    f = fit(case, nagq=25)
    assert f.nagq == 25 and f.converged
    gname = f.model.reterms[0].group
    assert abs(f.loglik - _exact_loglik(f, data, yname, gname)) < 1e-6
    # AGQ and Laplace estimates differ, and the Laplace log-likelihood is the approximation
    assert abs(f.loglik - fit(case).loglik) > 1e-4


def test_inverse_gaussian_optimum_is_the_exact_likelihoods():
    """With 25 points the estimates maximize the exact (brute-force) likelihood: its
    finite-difference gradient in (beta, sd, log phi) vanishes there."""
    f = fit("inverse_gaussian", nagq=25)
    data = ig_data()
    x0 = np.concatenate([f.fixef.to_numpy(), [f.theta[0], np.log(f.dispersion)]])

    def ll(x):
        g = f
        fam = F.InverseGaussian(dispersion=float(np.exp(x[3])))

        # trapezoid on a fine grid (the integrand is smooth and negligible beyond 10 SDs)
        eta0 = g.model.X @ x[:2]
        y = data.loc[g.model.rows, "y"].to_numpy()
        codes = g.model.reterms[0].codes
        bs = np.linspace(-10 * x[2], 10 * x[2], 8001)
        rows = fam.loglik_rows(eta0[:, None] + bs[None, :], y[:, None], np.ones((len(y), 1)))
        per = np.zeros((codes.max() + 1, len(bs)))
        np.add.at(per, codes, rows)
        a = per + stats.norm.logpdf(bs, 0, x[2])[None, :]
        amax = a.max(axis=1, keepdims=True)
        return float(np.sum(amax[:, 0] + np.log(np.trapezoid(np.exp(a - amax), bs, axis=1))))

    assert abs(ll(x0) - f.loglik) < 1e-6      # the grid integral is exact here too
    grad = []
    for j in range(4):
        h = 1e-4
        e = np.zeros(4)
        e[j] = h
        grad.append((ll(x0 + e) - ll(x0 - e)) / (2 * h))
    assert np.max(np.abs(grad)) < 2e-3, grad
    assert f.theta[0] > 0.5 and f.dispersion < 0.2


@pytest.mark.parametrize("fam", [F.Gamma(link="log", dispersion=3.0), F.Gamma(link="inverse", dispersion=0.7),
                                 F.InverseGaussian(dispersion=0.3), F.NegativeBinomial(dispersion=1.7)])
def test_family_derivatives_are_those_of_the_log_density(fam):
    rng = np.random.default_rng(1)
    if fam.name == "negative_binomial":
        y, eta = rng.poisson(3.0, 50).astype(float), rng.normal(1.0, 1.0, 50)
    else:
        y, eta = rng.gamma(2.0, 0.5, 50), rng.uniform(0.3, 3.0, 50)
    m = np.ones(50)
    d1, d2, d3 = fam.derivs(eta, y, m, order=3)
    h = 1e-5
    num = [(fam.loglik_rows(eta + h, y, m) - fam.loglik_rows(eta - h, y, m)) / (2 * h)]
    np.testing.assert_allclose(d1, num[0], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(d2, (fam.derivs(eta + h, y, m)[0] - fam.derivs(eta - h, y, m)[0]) / (2 * h), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(d3, (fam.derivs(eta + h, y, m)[1] - fam.derivs(eta - h, y, m)[1]) / (2 * h), rtol=1e-5, atol=1e-8)
    assert np.all(d2 < 0)
    # the densities integrate / sum to one
    mu = float(fam.linkinv(np.array([1.2]))[0])
    if fam.name == "negative_binomial":
        k = np.arange(0, 400.0)
        tot = np.exp(fam.loglik_rows(np.full(400, np.log(mu)), k, np.ones(400))).sum()
    else:
        eta1 = float(fam.linkfun(np.array([mu]))[0])
        tot = integrate.quad(lambda v: np.exp(fam.loglik_rows(np.array([eta1]), np.array([v]), np.ones(1))[0]),
                             0, np.inf, limit=200)[0]
    assert abs(tot - 1) < 1e-7


def test_dispersion_in_the_outputs_and_bad_responses():
    f = fit("nb2_grouseticks")
    assert f.family.dispersion_name == "theta"
    assert mm.to_dict(f)["dispersion"] == f.dispersion
    rp = mm.tidy(f, "ran_pars")
    assert rp["term"].iloc[-1] == "theta" and rp["estimate"].iloc[-1] == f.dispersion
    assert "theta of the negative_binomial family" in str(f.summary())
    s = simulate(f, 2, seed=1)
    assert np.all(s.to_numpy() >= 0) and np.allclose(s, np.round(s))
    r = mm.refit(f, s.iloc[:, 0].to_numpy())
    assert r.dispersion is not None and r.converged
    d = gamma_data()
    with pytest.raises(ValueError, match="must be positive"):
        mm.glmer("y ~ x + (1 | g)", d.assign(y=d["y"] - d["y"].median()), family="Gamma")
    with pytest.raises(ValueError, match="must be counts"):
        mm.glmer_nb("y ~ x + (1 | g)", d)
    with pytest.raises(ValueError, match="not implemented for the Gamma family"):
        mm.glmer("y ~ x + (1 | g)", d, family="Gamma", link="logit")


REF2 = json.loads((FIX / "features" / "features_reference2.json").read_text())


def test_general_laplace_path_with_dispersion_matches_glmmtmb():
    """Several terms or a vector term: the sparse Laplace objective with the dispersion.

        glmmTMB(TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION), grouseticks, family = nbinom2)
        glmmTMB(y ~ x + (x | g), gamma_sim, family = Gamma(link = "log"))
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mm.QuadratureWarning)
        nb = mm.glmer_nb("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", grouse(), nagq=1)
        gs = mm.glmer("y ~ x + (x | g)", gamma_data(), family="Gamma", nagq=1)
    for f, ref in ((nb, REF2["nb2_crossed"]), (gs, REF2["gamma_slopes"])):
        np.testing.assert_allclose(f.fixef, list(ref["fixef"].values()), rtol=1e-4)
        np.testing.assert_allclose(f.se, list(ref["se"].values()), rtol=1e-3)
        vc = f.varcorr()
        sds = vc[vc["var2"].isna()]["sdcor"].to_numpy()
        np.testing.assert_allclose(sds, ref["sd"], rtol=1e-3)
        np.testing.assert_allclose(_glmmtmb_sigma(f), ref["sigma"], rtol=1e-3)
        assert abs(f.loglik - ref["loglik"]) < 1e-4
        assert f.npar == ref["npar"]
    cor = gs.varcorr()["sdcor"].iloc[2]
    np.testing.assert_allclose(cor, REF2["gamma_slopes"]["cor"], atol=1e-3)
