"""Probit and cloglog links for the binomial GLMM.

(1) each link's row log-likelihood derivatives against finite differences; (2) the AGQ
kernel's analytic gradient (which moves the nodes) against finite differences; (3) many-point
AGQ against a brute-force fine-grid integral with scipy's binomial probabilities; (4) lme4
1.1-31; (5) bad input. For these links lme4 scales its Laplace approximation and its nodes by
the expected information (mixedmodels.families), and so do we.
"""

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import ndtr

import mixedmodels as mm
import mixedmodels.glmm as G
from mixedmodels.agq import agq_chunk, make_chunks
from mixedmodels.families import Binomial, binomial, get_family

FIX = Path(__file__).parent / "fixtures"
FORMULA = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
LINKS = ["probit", "cloglog"]
INVLINK = {"probit": ndtr, "cloglog": lambda e: -np.expm1(-np.exp(e))}


def cbpp():
    return pd.read_csv(FIX / "cbpp.csv", dtype={"herd": str, "period": str})


def cbpp_arrays():
    d = cbpp()
    X = np.column_stack([np.ones(len(d))] + [(d["period"] == k).to_numpy(float) for k in "234"])
    codes = pd.factorize(d["herd"], sort=True)[0]
    return X, d["incidence"].to_numpy(float), d["size"].to_numpy(float), codes


def ctr_arrays():
    d = pd.read_csv(FIX / "ctr_seed1.csv")
    X = np.column_stack([np.ones(len(d)), d["display"].to_numpy(float)])
    codes = pd.factorize(d["id"], sort=True)[0]
    return X, d["clicks"].to_numpy(float), d["expos"].to_numpy(float), codes


def kernel(beta, sigma, X, s, n, codes, fam, nagq, gradient=False):
    y, m = s / n, n
    chunks, _ = make_chunks(X, y, m, np.ones(len(y)), np.zeros(len(y)), fam.log_const(y, m),
                            codes, codes.max() + 1)
    res = None
    for c in chunks:
        r = agq_chunk(np.asarray(beta, dtype=float), sigma, c, fam, nagq, gradient=gradient)
        res = r if res is None else res + r
    return res


def brute_loglik(beta, sigma, X, s, n, codes, link, grid=np.linspace(-10, 10, 4001)):
    """Exact marginal log-likelihood by a fine fixed grid over u ~ N(0, 1) per group, with
    scipy's binomial pmf (no code shared with the package)."""
    eta = X @ np.asarray(beta)
    total = 0.0
    for g in np.unique(codes):
        r = codes == g
        p = INVLINK[link](eta[r][:, None] + sigma * grid[None, :])
        logf = stats.binom.logpmf(s[r][:, None], n[r][:, None], p).sum(0) + stats.norm.logpdf(grid)
        mx = logf.max()
        total += mx + np.log(np.trapezoid(np.exp(logf - mx), grid))
    return total


# ---- (1) derivatives of the row log-likelihood -------------------------------------------

@pytest.mark.parametrize("link", LINKS)
def test_row_derivatives_match_finite_differences(link):
    fam = binomial(link)
    rng = np.random.default_rng(7)
    eta = np.linspace(-6, 3, 37)
    m = rng.integers(1, 25, eta.size).astype(float)
    y = np.floor(rng.uniform(0, 1, eta.size) * (m + 1)) / m
    y[::6], y[1::6] = 0.0, 1.0                    # all failures / all successes rows
    c = fam.log_const(y, m)
    h = 1e-5
    d1, d2, d3 = fam.derivs(eta, y, m, order=3)
    ll = lambda e: fam.loglik_rows(e, y, m, c)    # noqa: E731
    fd1 = (ll(eta + h) - ll(eta - h)) / (2 * h)
    fd2 = (fam.derivs(eta + h, y, m, 3)[0] - fam.derivs(eta - h, y, m, 3)[0]) / (2 * h)
    fd3 = (fam.derivs(eta + h, y, m, 3)[1] - fam.derivs(eta - h, y, m, 3)[1]) / (2 * h)
    np.testing.assert_allclose(d1, fd1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d2, fd2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d3, fd3, rtol=1e-6, atol=1e-6)
    # The lower orders are the same arrays whatever the order asked for.
    np.testing.assert_array_equal(fam.derivs(eta, y, m, order=2)[1], d2)
    # loglik_d1 (the kernel's fused pass) agrees with loglik_rows and derivs.
    l_, g_ = fam.loglik_d1(eta, y, m, c)
    np.testing.assert_allclose(l_, ll(eta), rtol=1e-14)
    np.testing.assert_allclose(g_, d1, rtol=1e-14)


@pytest.mark.parametrize("link", LINKS)
def test_loglik_and_links_against_scipy(link):
    fam = binomial(link)
    eta = np.linspace(-5, 2, 29)
    n = np.full(eta.size, 9.0)
    k = np.arange(eta.size) % 10.0
    mu = INVLINK[link](eta)
    np.testing.assert_allclose(fam.linkinv(eta), mu, rtol=1e-14)
    np.testing.assert_allclose(fam.linkfun(mu), eta, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fam.loglik_rows(eta, k / n, n),
                               stats.binom.logpmf(k, n, mu), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("link", LINKS)
def test_expected_information(link):
    # e2 = -m mu'^2 / V(mu) (lme4's PIRLS weight) and e3 its derivative.
    fam = binomial(link)
    eta = np.linspace(-5, 2, 29)
    y, m = np.full(eta.size, 0.3), np.full(eta.size, 4.0)
    h = 1e-6
    mu = fam.linkinv(eta)
    dmu = (fam.linkinv(eta + h) - fam.linkinv(eta - h)) / (2 * h)
    e2, e3 = fam.info_derivs(eta, y, m)
    np.testing.assert_allclose(-e2, m * dmu ** 2 / (mu * (1 - mu)), rtol=1e-7)
    fd = (fam.info_derivs(eta + 1e-5, y, m)[0] - fam.info_derivs(eta - 1e-5, y, m)[0]) / 2e-5
    np.testing.assert_allclose(e3, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("link", LINKS)
def test_extreme_eta_gives_no_nan(link):
    # Far-off nodes and wild trial points: values may be -inf, never NaN (0 * inf).
    fam = binomial(link)
    eta = np.array([-800.0, -300.0, -40.0, -30.0, 0.0, 39.9, 40.1, 300.0, 709.0])
    for yv in (0.0, 0.5, 1.0):
        y, m = np.full(eta.size, yv), np.full(eta.size, 3.0)
        with np.errstate(all="ignore"):
            out = [*fam.derivs(eta, y, m, 3), *fam.info_derivs(eta, y, m), fam.loglik_rows(eta, y, m)]
        for a in out:
            assert not np.any(np.isnan(a)), (yv, a)


# ---- (2) the AGQ kernel's gradient -----------------------------------------------------

@pytest.mark.parametrize("link", LINKS)
@pytest.mark.parametrize("which", ["cbpp", "ctr"])
@pytest.mark.parametrize("nagq", [1, 3, 10])
def test_agq_gradient_matches_finite_differences(link, which, nagq):
    X, s, n, codes = cbpp_arrays() if which == "cbpp" else ctr_arrays()
    fam = binomial(link)
    x = {("cbpp", "probit"): [-0.8, -0.5, -0.6, -0.8, 0.34],
         ("cbpp", "cloglog"): [-1.5, -0.9, -1.0, -1.5, 0.59],
         ("ctr", "probit"): [-2.3, 0.25, 2.6],
         ("ctr", "cloglog"): [-4.6, 0.5, 4.8]}[which, link]
    x = np.array(x)
    g = kernel(x[:-1], x[-1], X, s, n, codes, fam, nagq, gradient=True).grad
    fd = []
    for e in np.eye(len(x)) * 1e-5:
        fp = kernel((x + e)[:-1], (x + e)[-1], X, s, n, codes, fam, nagq).loglik
        fm = kernel((x - e)[:-1], (x - e)[-1], X, s, n, codes, fam, nagq).loglik
        fd.append((fp - fm) / 2e-5)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("link", LINKS)
def test_laplace_objective_gradient_two_terms(link):
    # The Laplace path (PIRLS on the blocked factor, crossed terms) with the expected-information determinant.
    d = cbpp()
    frame = G.glmer_frame("cbind(incidence, size - incidence) ~ 1 + (1 | herd) + (1 | period)",
                          d, "binomial", link=link)
    obj = G.make_objective(frame, 1)
    assert isinstance(obj, G.LaplaceObjective)
    x = np.array([-1.2, 0.5, 0.4])
    g = obj.evaluate(x)[1]
    fd = []
    for e in np.eye(3) * 1e-5:
        fd.append((obj.evaluate(x + e, gradient=False)[0] - obj.evaluate(x - e, gradient=False)[0]) / 2e-5)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6)


# ---- (3) many points = the exact integral ------------------------------------------------

# Parameters near each link's optimum and away from it (the integral is exact everywhere).
POINTS = {
    "probit": [([-0.832, -0.526, -0.615, -0.798], 0.34), ([-0.5, -0.2, -1.0, -0.3], 0.9),
               ([-1.2, -0.7, -0.3, -1.2], 0.05), ([-0.9, -0.4, -0.6, -0.9], 1.8)],
    "cloglog": [([-1.533, -0.912, -1.030, -1.478], 0.59), ([-1.0, -0.5, -1.5, -1.0], 1.2),
                ([-2.0, -0.2, -0.8, -2.0], 0.1), ([-1.4, -1.0, -1.1, -1.2], 2.0)],
}


@pytest.mark.parametrize("link", LINKS)
def test_many_points_equal_brute_force(link):
    X, s, n, codes = cbpp_arrays()
    fam = binomial(link)
    for beta, sigma in POINTS[link]:
        exact = brute_loglik(beta, sigma, X, s, n, codes, link)
        assert kernel(beta, sigma, X, s, n, codes, fam, 25).loglik == pytest.approx(exact, abs=1e-6)
        assert kernel(beta, sigma, X, s, n, codes, fam, 100).loglik == pytest.approx(exact, abs=1e-8)


# ---- (4) lme4 ----------------------------------------------------------------------------

# lme4 1.1-31 (R 4.2), printed by this script:
#   library(lme4)
#   for (lk in c("probit", "cloglog")) for (k in c(1, 25)) {
#     f <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp,
#                family = binomial(link = lk), nAGQ = k)
#     cat("##", lk, "nAGQ =", k, "\n")
#     cat("fixef:", sprintf("%.15g", fixef(f)), "\n")
#     cat("se:", sprintf("%.15g", sqrt(diag(as.matrix(vcov(f))))), "\n")
#     cat("sd:", sprintf("%.15g", attr(VarCorr(f)$herd, "stddev")), "\n")
#     cat("logLik:", sprintf("%.15g", as.numeric(logLik(f))), "\n")
#     if (k == 1) {
#       df <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp,
#                   family = binomial(link = lk), nAGQ = 1, devFunOnly = TRUE,
#                   control = glmerControl(tolPwrss = 1e-12))
#       cat("tight-PIRLS logLik at lme4 estimates:",
#           sprintf("%.15g", -df(c(getME(f, "theta"), fixef(f)))/2), "\n")
#     }
#   }
# (lme4's logLik for nAGQ = 25 is on its own constant, as for the logit; not compared.)
LME4 = {
    ("probit", 1): dict(
        fixef=[-0.835474929635781, -0.528032739719625, -0.616854298165477, -0.799572598138353],
        se=[0.126232825997765, 0.160588410295717, 0.169457736961427, 0.204681243915634],
        sd=0.337989346474154, loglik=-92.6212425714992, loglik_tight=-92.6212233996927),
    ("probit", 25): dict(
        fixef=[-0.832017298454096, -0.52627449176966, -0.614771990310842, -0.797529222578917],
        se=[0.126175010066446, 0.160257072051093, 0.169148203275292, 0.204438593767813],
        sd=0.339651247423993),
    ("cloglog", 1): dict(
        fixef=[-1.52594545681328, -0.91638989969591, -1.0352200825715, -1.48368124682557],
        se=[0.210922612214482, 0.284889760354957, 0.306310508578283, 0.409045645402353],
        sd=0.586726195719325, loglik=-91.8020646625284, loglik_tight=-91.8020380031317),
    ("cloglog", 25): dict(
        fixef=[-1.53282321502197, -0.912083864953731, -1.03014896559825, -1.47835683436349],
        se=[0.211552847721801, 0.284076969068746, 0.305561778484563, 0.408379072071908],
        sd=0.590311305969531),
}


@lru_cache(maxsize=None)
def fit(link, nagq):
    with warnings.catch_warnings():
        # Laplace on cbpp: 20 points move the log-likelihood by ~0.05, which the fit flags.
        warnings.simplefilter("ignore", G.QuadratureWarning)
        return mm.glmer(FORMULA, cbpp(), family="binomial", link=link, nagq=nagq)


CASES = list(LME4)


@pytest.mark.parametrize("link, nagq", CASES)
def test_against_lme4(link, nagq):
    ref, f = LME4[link, nagq], fit(link, nagq)
    assert f.converged
    assert str(f.family) == f"binomial  ( {link} )"
    np.testing.assert_allclose(f.fixef.to_numpy(), ref["fixef"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(f.varcorr()["sdcor"].to_numpy(), [ref["sd"]], rtol=1e-3)
    # The Laplace SEs agree within 1e-3 here too (lme4's loose PIRLS costs < 2e-4).
    np.testing.assert_allclose(f.se.to_numpy(), ref["se"], rtol=1e-3)


@pytest.mark.parametrize("link", LINKS)
def test_laplace_loglik_against_lme4(link):
    ref, f = LME4[link, 1], fit(link, 1)
    assert f.loglik == pytest.approx(ref["loglik"], abs=1e-4)
    # Ours is a little higher (PIRLS modes converged to ~1e-10, lme4's to its tolerance: 2e-5
    # and 2.7e-5 here), and matches lme4's own objective with a tight PIRLS tolerance.
    assert f.loglik >= ref["loglik"]
    assert f.loglik == pytest.approx(ref["loglik_tight"], abs=1e-5)


@pytest.mark.parametrize("link", LINKS)
def test_agq25_loglik_is_the_exact_integral(link):
    f = fit(link, 25)
    X, s, n, codes = cbpp_arrays()
    exact = brute_loglik(f.fixef.to_numpy(), f.theta[0], X, s, n, codes, link)
    assert f.loglik == pytest.approx(exact, abs=1e-6)
    assert f.quadrature_converged


def test_family_object_and_string_give_the_same_fit():
    a = fit("cloglog", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", G.QuadratureWarning)
        b = mm.glmer(FORMULA, cbpp(), family=mm.families.binomial(link="cloglog"), nagq=1)
    np.testing.assert_array_equal(a.fixef.to_numpy(), b.fixef.to_numpy())
    assert b.summary().title[1] == " Family: binomial  ( cloglog )"
    assert "Family: binomial  ( cloglog )" in str(b.summary())
    assert "cloglog" in repr(b)


@pytest.mark.parametrize("link", LINKS)
def test_predict_uses_the_link(link):
    f = fit(link, 25)
    inv = INVLINK[link]
    eta = f.predict(type="link").to_numpy()
    np.testing.assert_allclose(f.predict(type="response").to_numpy(), inv(eta), rtol=1e-12)
    new = pd.DataFrame({"period": ["1", "4"], "herd": ["new", "new"]})
    xb = f.predict(new, include_random=False).to_numpy()
    pa = f.predict(new, type="response", population_average=True).to_numpy()
    sd = f.theta[0]
    # E[g^-1(x'b + sd u)], u ~ N(0, 1), by scipy's adaptive quadrature.
    from scipy.integrate import quad
    want = [quad(lambda u: inv(e + sd * u) * stats.norm.pdf(u), -12, 12, epsabs=1e-13)[0]
            for e in xb]
    np.testing.assert_allclose(pa, want, rtol=1e-7)
    if link == "probit":
        # Closed form for the probit: Phi(x'b / sqrt(1 + sd^2)).
        np.testing.assert_allclose(pa, ndtr(xb / np.sqrt(1 + sd ** 2)), rtol=1e-7)


# ---- (5) bad input -----------------------------------------------------------------------

def test_unknown_link():
    with pytest.raises(ValueError, match=r"`link`='logistic'.*binomial.*\['logit', 'probit', 'cloglog'\]"):
        mm.glmer(FORMULA, cbpp(), family="binomial", link="logistic")
    with pytest.raises(ValueError, match="`link`"):
        binomial(link="cauchit")
    with pytest.raises(ValueError, match="`link`"):
        Binomial(link="Probit")


def test_poisson_link_other_than_log():
    d = pd.read_csv(FIX / "grouseticks.csv", dtype={"BROOD": str, "LOCATION": str, "YEAR": str})
    for link in ("identity", "sqrt", "logit"):
        with pytest.raises(ValueError, match=r"`link`=.*poisson.*\['log'\]"):
            mm.glmer("TICKS ~ YEAR + (1 | BROOD)", d, family="poisson", link=link)
    with pytest.raises(ValueError, match=r"poisson.*\['log'\]"):
        mm.families.poisson(link="identity")


def test_link_contradicting_a_family_object():
    with pytest.raises(ValueError, match="contradicts"):
        get_family(binomial("probit"), link="cloglog")
    assert get_family(binomial("probit"), link="probit").link == "probit"
    assert get_family("binomial").link == "logit"        # the default is unchanged
