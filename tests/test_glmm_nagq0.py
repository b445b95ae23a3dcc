"""glmer(..., nagq=0): lme4's nAGQ = 0 (fixed effects inside PIRLS, only theta optimized).

References: tests/fixtures/lme4/nagq0_reference.json, made by
tests/fixtures/make_nagq0_reference.R (lme4 1.1-31): lme4's default fit and a tight one
(tolPwrss = 1e-12, bobyqa rhoend = 1e-10). Both programs compute the same objective (the
Laplace log-likelihood at the joint conditional mode of (beta, u)); lme4's default stops short
in its PIRLS on some models (it reports up to 0.007 less log-likelihood), which the tests show
by evaluating our objective at lme4's own estimates; an independent dense computation checks
the optimum itself.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, gammaln

import mixedmodels as mm
import mixedmodels.glmm as G
from mixedmodels.dispersion import with_dispersion
from mixedmodels.families import binomial
from mixedmodels.glmm_frame import glmer_frame
from mixedmodels.glmm_nagq0 import Nagq0Objective
from mixedmodels.tidy import to_dict

FIX = Path(__file__).parent / "fixtures"
REF = json.loads((FIX / "lme4" / "nagq0_reference.json").read_text())
IDS = [k for k in REF if k != "versions"]


def _data(ref):
    factors = ref["factors"] if isinstance(ref["factors"], list) else [ref["factors"]]
    return pd.read_csv(FIX / ref["data"], dtype={v: str for v in factors})


def _family(ref):
    return binomial(link=ref["link"]) if ref.get("link") else ref["family"]


def _fit(ref, nagq=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mm.glmer(ref["formula"], _data(ref), family=_family(ref),
                        weights=ref.get("weights"), nagq=nagq)


@pytest.fixture(scope="module")
def fits():
    return {i: _fit(REF[i]) for i in IDS}


def _objective(ref):
    frame = glmer_frame(ref["formula"], _data(ref), _family(ref), ref.get("weights"))
    return frame, Nagq0Objective(frame, np.zeros(frame.ms.p))


@pytest.mark.parametrize("rid", IDS)
def test_matches_lme4_nagq0(fits, rid):
    ref, fit = REF[rid], fits[rid]
    tight = ref["tight"]
    assert fit.nagq == 0 and fit.converged
    names = list(tight["fixef"])
    assert list(fit.fixef.index) == names
    fe = np.array([tight["fixef"][k] for k in names])
    np.testing.assert_allclose(fit.fixef.to_numpy(), fe, rtol=1e-4, atol=1e-8)
    se = np.array([tight["se"][k] for k in names])
    np.testing.assert_allclose(fit.se.to_numpy(), se, rtol=1e-3)
    np.testing.assert_allclose(fit.vcov.to_numpy(), np.array(tight["vcov"]), rtol=2e-3, atol=1e-7)
    sds = [r["sdcor"] for r in tight["sdcor"] if r["var2"] is None]
    ours = fit.varcorr()
    ours = ours[ours["var2"].isna()]["sdcor"].to_numpy()
    np.testing.assert_allclose(ours, sds, rtol=1e-3, atol=1e-4)
    assert fit.loglik == pytest.approx(tight["loglik"], abs=1e-4)
    assert fit.deviance == pytest.approx(tight["deviance"], abs=2e-4)
    # Never below lme4's default fit (what an R user sees).
    assert fit.loglik >= ref["default"]["loglik"] - 1e-6


@pytest.mark.parametrize("rid", IDS)
def test_same_objective_as_lme4_at_its_estimates(fits, rid):
    """Our nAGQ = 0 objective at lme4's tight theta gives lme4's tight log-likelihood and
    fixed effects (the same objective); at lme4's default theta it gives the same fixed
    effects and a log-likelihood at least lme4's (whose default PIRLS tolerance, tolPwrss =
    1e-7, reports up to 0.007 less); our optimum is at least as high as both."""
    ref = REF[rid]
    _, obj = _objective(ref)
    for which in ("tight", "default"):
        theta = np.atleast_1d(np.asarray(ref[which]["theta"], dtype=float))
        ll, _ = obj.evaluate(theta, gradient=False)
        if which == "tight":
            assert ll == pytest.approx(ref[which]["loglik"], abs=1e-4)
        else:
            assert ll >= ref[which]["loglik"] - 1e-8
        fe = np.array(list(ref[which]["fixef"].values()))
        np.testing.assert_allclose(obj.beta, fe, rtol=1e-4, atol=1e-6)
        assert fits[rid].loglik >= ll - 1e-8


def test_lme4_default_loglik_is_short_by_its_pirls_tolerance(fits):
    # binom_slopes: lme4's default nAGQ = 0 fit reports 0.007 less than its own tight fit and
    # than our objective at lme4's default estimates (same theta, same fixed effects to 1e-7):
    # its PIRLS stopped short of the mode, not its optimizer.
    ref = REF["binom_slopes"]
    _, obj = _objective(ref)
    ll, _ = obj.evaluate(np.asarray(ref["default"]["theta"], dtype=float), gradient=False)
    assert ll - ref["default"]["loglik"] > 5e-3
    assert ll == pytest.approx(ref["tight"]["loglik"], abs=2e-5)
    assert fits["binom_slopes"].loglik == pytest.approx(ref["tight"]["loglik"], abs=1e-5)


@pytest.mark.parametrize("rid", ["cbpp", "binom_slopes", "grouseticks_nested"])
def test_gradient_matches_finite_differences(fits, rid):
    ref = REF[rid]
    _, obj = _objective(ref)
    x = fits[rid].theta * 1.15 + 0.02
    _, g = obj.evaluate(x)
    fd = np.empty_like(x)
    for j in range(len(x)):
        # Richardson extrapolation of central differences (error O(h^4)).
        def cd(h):
            xp, xm = x.copy(), x.copy()
            xp[j] += h
            xm[j] -= h
            return (obj.evaluate(xp, gradient=False)[0] - obj.evaluate(xm, gradient=False)[0]) / (2 * h)
        fd[j] = (4 * cd(5e-4) - cd(1e-3)) / 3
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6)


def test_optimum_by_an_independent_dense_computation(fits):
    """cbpp from scratch: the joint mode of (beta, u) by a dense Newton solve, the Laplace
    log-likelihood with a dense determinant, maximized over theta on a fine grid then by
    golden section: the same optimum, estimates and log-likelihood."""
    d = pd.read_csv(FIX / "cbpp.csv", dtype={"herd": str, "period": str})
    y, n = d["incidence"].to_numpy(float), d["size"].to_numpy(float)
    X = np.column_stack([np.ones(len(d))] + [(d["period"] == k).to_numpy(float) for k in "234"])
    herds = sorted(d["herd"].unique(), key=int)
    Z = np.column_stack([(d["herd"] == h).to_numpy(float) for h in herds])
    const = gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1)
    p, q = X.shape[1], Z.shape[1]

    def laplace(theta):
        M = np.hstack([X, theta * Z])
        x = np.zeros(p + q)
        for _ in range(100):
            eta = M @ x
            mu = expit(eta)
            g = M.T @ (y - n * mu)
            g[p:] -= x[p:]
            H = M.T @ (M * (n * mu * (1 - mu))[:, None])
            H[p:, p:] += np.eye(q)
            step = np.linalg.solve(H, g)
            x += step
            if np.max(np.abs(step)) < 1e-13:
                break
        eta = M @ x
        ll = np.sum(y * eta - n * np.logaddexp(0, eta) + const) - 0.5 * x[p:] @ x[p:]
        w = n * expit(eta) * (1 - expit(eta))
        A = theta ** 2 * Z.T @ (Z * w[:, None]) + np.eye(q)
        return ll - 0.5 * np.linalg.slogdet(A)[1], x[:p], H

    grid = np.linspace(0.3, 1.2, 91)
    k = int(np.argmax([laplace(t)[0] for t in grid]))
    a, b = grid[k - 1], grid[k + 1]
    r = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        c, e = b - r * (b - a), a + r * (b - a)
        if laplace(c)[0] > laplace(e)[0]:
            b = e
        else:
            a = c
    theta = 0.5 * (a + b)
    ll, beta, H = laplace(theta)
    fit = fits["cbpp"]
    assert fit.theta[0] == pytest.approx(theta, rel=1e-5)
    assert fit.loglik == pytest.approx(ll, abs=1e-9)
    np.testing.assert_allclose(fit.fixef.to_numpy(), beta, rtol=1e-6)
    # SEs: the fixed-effect block of the inverse joint information (lme4's chol2inv(RX)).
    np.testing.assert_allclose(fit.vcov.to_numpy(), np.linalg.inv(H)[:p, :p], rtol=1e-6)


def test_loglik_at_most_the_laplace_one(fits):
    """nAGQ = 0's estimates are not the Laplace maximum: its log-likelihood is at most the
    nagq=1 fit's, and close to it."""
    gt = pd.read_csv(FIX / "grouseticks.csv", dtype={"BROOD": str, "YEAR": str, "LOCATION": str})
    gam = pd.read_csv(FIX / "features" / "gamma_sim.csv", dtype={"g": str})
    cases = [(fits[rid], REF[rid]["formula"], _data(REF[rid]), _family(REF[rid]),
              REF[rid].get("weights")) for rid in ("cbpp", "cbpp_probit", "grouseticks_nested")]
    for form, d, fam in [("y ~ x + (1 | g)", gam, "Gamma"),
                         ("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", gt, "negative_binomial")]:
        cases.append((mm.glmer(form, d, family=fam, nagq=0), form, d, fam, None))
    for f0, form, d, fam, w in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f1 = mm.glmer(form, d, family=fam, weights=w, nagq=1)
        assert f0.nagq == 0 and f1.nagq == 1
        assert f0.loglik <= f1.loglik + 1e-8
        assert f1.loglik - f0.loglik < 1.0
        # The nAGQ = 0 estimates, evaluated by the Laplace objective, give its log-likelihood.
        ll, _ = f1._obj.evaluate(f0._params, gradient=False)
        assert ll == pytest.approx(f0.loglik, abs=1e-8)


def test_dispersion_families_at_their_optimum():
    gam = pd.read_csv(FIX / "features" / "gamma_sim.csv", dtype={"g": str})
    for fam in ("Gamma", "inverse_gaussian"):
        fit = mm.glmer("y ~ x + (1 | g)", gam, family=fam, nagq=0)
        assert fit.converged and fit.dispersion > 0
        frame = glmer_frame("y ~ x + (1 | g)", gam, fam)
        obj = with_dispersion(Nagq0Objective(frame, np.zeros(2)), frame)
        x = fit.opt.final[2:]
        ll, g = obj.evaluate(x)
        assert ll == pytest.approx(fit.loglik, abs=1e-9)
        assert np.max(np.abs(g)) < 1e-3
        for j in range(len(x)):
            for s in (-1, 1):
                xs = x.copy()
                xs[j] += s * 1e-3
                assert obj.evaluate(xs, gradient=False)[0] <= ll + 1e-9


def test_accessors_summary_and_errors(fits):
    fit = fits["binom_slopes"]
    text = str(fit.summary())
    assert "nAGQ = 0" in text and "inside PIRLS" in text
    assert "nagq=0" in repr(fit)
    re = fit.ranef()
    assert len(re) == 150 * 2
    assert set(fit.coef()) == {"g"}
    assert np.all(np.isfinite(fit.predict(type="response")))
    assert np.all(np.isfinite(fit.residuals()))
    ci = fit.confint(method="wald")
    assert ci.loc["x"].iloc[0] < fit.fixef["x"] < ci.loc["x"].iloc[1]
    with pytest.raises(ValueError, match="nagq=0 fit cannot be profiled.*nagq=1"):
        fit.confint()
    assert to_dict(fit)["nagq"] == 0
    # refit (the bootstrap's engine) keeps nAGQ = 0.
    from mixedmodels.refit import refit
    same = refit(fit, fit.frame.y)
    assert same.nagq == 0 and same.loglik == pytest.approx(fit.loglik, abs=1e-8)


def test_nagq_validation():
    d = pd.read_csv(FIX / "cbpp.csv", dtype={"herd": str, "period": str})
    f = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    with pytest.raises(ValueError, match=r"`nagq` must be a whole number >= 0.*-1.*nAGQ=0"):
        mm.glmer(f, d, nagq=-1)
    with pytest.raises(ValueError, match="`nagq` must be a whole number >= 0"):
        mm.glmer(f, d, nagq=0.5)
    assert mm.glmer(f, d, nagq=0.0).nagq == 0
    gt = pd.read_csv(FIX / "grouseticks.csv", dtype={"BROOD": str, "YEAR": str, "LOCATION": str})
    with pytest.raises(ValueError, match="single grouping factor.*nagq=1"):
        mm.glmer("TICKS ~ YEAR + (1 | BROOD) + (1 | LOCATION)", gt, family="poisson", nagq=3)
    dd = pytest.importorskip("dask.dataframe")
    with pytest.raises(ValueError, match="nagq=0.*in-memory"):
        mm.glmer(f, dd.from_pandas(d, npartitions=2), nagq=0)


def test_units_of_a_covariate_do_not_matter(fits):
    ref = REF["pois_offset"]
    d = _data(ref).assign(x=lambda t: t["x"] * 1e9)
    fit = mm.glmer(ref["formula"], d, family="poisson", nagq=0)
    base = fits["pois_offset"]
    assert fit.loglik == pytest.approx(base.loglik, abs=1e-8)
    assert fit.fixef["x"] * 1e9 == pytest.approx(base.fixef["x"], rel=1e-7)
    assert fit.se["x"] * 1e9 == pytest.approx(base.se["x"], rel=1e-6)


def test_nothing_uses_nagq0_by_default(monkeypatch):
    """The default (nagq="auto") and nagq=1 never take the nAGQ = 0 path."""
    def boom(*a, **k):
        raise AssertionError("nAGQ = 0 used without nagq=0")

    monkeypatch.setattr(G, "fit_nagq0", boom)
    monkeypatch.setattr(Nagq0Objective, "evaluate", boom)
    cb = pd.read_csv(FIX / "cbpp.csv", dtype={"herd": str, "period": str})
    gt = pd.read_csv(FIX / "grouseticks.csv", dtype={"BROOD": str, "YEAR": str, "LOCATION": str})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = [mm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cb),
                mm.glmer("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", gt,
                         family="poisson"),
                mm.glmer("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", gt, family="poisson", nagq=1)]
    assert [f.nagq != 0 for f in fits] == [True] * 3
    with pytest.raises(AssertionError, match="nAGQ = 0 used"):
        mm.glmer("TICKS ~ YEAR + (1 | LOCATION)", gt, family="poisson", nagq=0)
