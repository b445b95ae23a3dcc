"""The scalar-random-effect kernel (mixedmodels.agq) against independent computations.

``brute_loglik`` is the reference: per group, the integral over the random effect on a fine
fixed grid (trapezoid rule), with the exact binomial probabilities from scipy.stats -- no
Gauss-Hermite, no conditional modes, no code shared with the package.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mixedmodels.agq import agq_chunk, make_chunks
from mixedmodels.families import Binomial, Poisson

FIX = Path(__file__).parent / "fixtures"


def brute_loglik(beta, sigma, X, successes, trials, codes, grid=np.linspace(-10, 10, 4001)):
    """Exact marginal log-likelihood of a binomial random-intercept model, by brute force.

    log L = sum_i log integral prod_j Binom(s_ij; n_ij, expit(x_ij'beta + sigma u)) phi(u) du
    on a fixed grid of u (the prior N(0, 1) puts nothing beyond |u| = 10 at double precision).
    """
    eta = X @ np.asarray(beta)
    total = 0.0
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for rows in np.split(order, bounds):
        p = 1.0 / (1.0 + np.exp(-(eta[rows][:, None] + sigma * grid[None, :])))
        logf = stats.binom.logpmf(successes[rows][:, None], trials[rows][:, None], p).sum(0)
        logf += stats.norm.logpdf(grid)
        mx = logf.max()
        total += mx + np.log(np.trapezoid(np.exp(logf - mx), grid))
    return total


def ctr_arrays():
    d = pd.read_csv(FIX / "ctr_seed1.csv")
    X = np.column_stack([np.ones(len(d)), d["display"].to_numpy(float)])
    codes = pd.factorize(d["id"], sort=True)[0]
    return X, d["clicks"].to_numpy(float), d["expos"].to_numpy(float), codes


def cbpp_arrays():
    d = pd.read_csv(FIX / "cbpp.csv", dtype={"herd": str, "period": str})
    X = np.column_stack([np.ones(len(d))] + [(d["period"] == k).to_numpy(float) for k in "234"])
    codes = pd.factorize(d["herd"], sort=True)[0]
    return X, d["incidence"].to_numpy(float), d["size"].to_numpy(float), codes


def chunks_for(X, s, n, codes, max_rows=400_000):
    fam = Binomial()
    y, m = s / n, n
    ch, _ = make_chunks(X, y, m, np.ones(len(y)), np.zeros(len(y)), fam.log_const(y, m), codes,
                        codes.max() + 1, max_rows=max_rows)
    return ch, fam


def kernel(beta, sigma, chunks, fam, nagq, gradient=False):
    res = None
    for c in chunks:
        r = agq_chunk(np.asarray(beta), sigma, c, fam, nagq, gradient=gradient)
        res = r if res is None else res + r
    return res


# lme4 1.1-31, glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, nAGQ = 25)
CBPP25 = ([-1.3992237278292, -0.991408883812732, -1.12780959415794, -1.57948095070482],
          0.647519914522493)
# lme4 1.1-31, glmer(clicks/expos ~ display + (1 | id), weights = expos, nAGQ = 10)
CTR10 = ([-4.99347376842398, 0.51530018060151], 5.70735679647143)


def test_brute_force_reference_values():
    # The issue's reference values of the exact log-likelihood at lme4's estimates.
    X, s, n, codes = cbpp_arrays()
    assert brute_loglik(*CBPP25, X, s, n, codes) == pytest.approx(-91.983, abs=5e-4)
    X, s, n, codes = ctr_arrays()
    assert brute_loglik(*CTR10, X, s, n, codes) == pytest.approx(-2146.132, abs=5e-4)


@pytest.mark.parametrize("which, nagq, tol", [("cbpp", 25, 1e-6), ("ctr", 400, 1e-4)])
def test_many_points_equal_brute_force(which, nagq, tol):
    X, s, n, codes = cbpp_arrays() if which == "cbpp" else ctr_arrays()
    beta, sigma = CBPP25 if which == "cbpp" else CTR10
    ch, fam = chunks_for(X, s, n, codes)
    assert kernel(beta, sigma, ch, fam, nagq).loglik == pytest.approx(
        brute_loglik(beta, sigma, X, s, n, codes), abs=tol)


def test_one_point_is_the_laplace_approximation():
    # Independent Laplace: mode and curvature of each group's log-integrand by scipy.
    from scipy.optimize import minimize_scalar
    X, s, n, codes = cbpp_arrays()
    beta, sigma = CBPP25
    eta = X @ np.asarray(beta)
    total = 0.0
    for g in np.unique(codes):
        r = codes == g

        def negf(u):
            p = 1 / (1 + np.exp(-(eta[r] + sigma * u)))
            return -(stats.binom.logpmf(s[r], n[r], p).sum() + stats.norm.logpdf(u))

        u0 = minimize_scalar(negf, bracket=(-3, 3), tol=1e-12).x
        h = 1e-4
        curv = (negf(u0 + h) - 2 * negf(u0) + negf(u0 - h)) / h**2
        total += -negf(u0) + 0.5 * np.log(2 * np.pi) - 0.5 * np.log(curv)
    ch, fam = chunks_for(X, s, n, codes)
    assert kernel(beta, sigma, ch, fam, 1).loglik == pytest.approx(total, abs=1e-6)


@pytest.mark.parametrize("nagq", [1, 3, 10])
def test_gradient_matches_finite_differences(nagq):
    X, s, n, codes = ctr_arrays()
    ch, fam = chunks_for(X, s, n, codes)
    x = np.array([-4.7, 0.45, 5.3])
    g = kernel(x[:2], x[2], ch, fam, nagq, gradient=True).grad
    fd = []
    for e in np.eye(3) * 1e-5:
        fp = kernel((x + e)[:2], (x + e)[2], ch, fam, nagq).loglik
        fm = kernel((x - e)[:2], (x - e)[2], ch, fam, nagq).loglik
        fd.append((fp - fm) / 2e-5)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5)


def test_chunks_add_up():
    # The kernel is a pure function of a chunk of whole groups: any partition gives the same sums.
    X, s, n, codes = ctr_arrays()
    whole, fam = chunks_for(X, s, n, codes)
    parts, _ = chunks_for(X, s, n, codes, max_rows=97)
    assert len(parts) > 10
    a = kernel([-4.7, 0.45], 5.3, whole, fam, 10, gradient=True)
    b = kernel([-4.7, 0.45], 5.3, parts, fam, 10, gradient=True)
    assert a.loglik == pytest.approx(b.loglik, abs=1e-9)
    np.testing.assert_allclose(a.grad, b.grad, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(a.u_hat, b.u_hat, atol=1e-8)


def test_sigma_zero_is_the_glm():
    X, s, n, codes = cbpp_arrays()
    ch, fam = chunks_for(X, s, n, codes)
    beta = np.array(CBPP25[0])
    glm = stats.binom.logpmf(s, n, 1 / (1 + np.exp(-(X @ beta)))).sum()
    assert kernel(beta, 0.0, ch, fam, 5).loglik == pytest.approx(glm, abs=1e-9)


def test_poisson_constant():
    # One group, sigma = 0: the Poisson log-likelihood with its -log y! term.
    y = np.array([0.0, 3.0, 7.0])
    fam = Poisson()
    ch, _ = make_chunks(np.ones((3, 1)), y, np.ones(3), np.ones(3), np.zeros(3),
                        fam.log_const(y, np.ones(3)), np.zeros(3, dtype=int), 1)
    r = agq_chunk(np.array([1.2]), 0.0, ch[0], fam, 3, gradient=False)
    assert r.loglik == pytest.approx(stats.poisson.logpmf(y, np.exp(1.2)).sum(), abs=1e-12)


# --- per-group trapezoid rules (nagq="auto") ----------------------------------------------

def brute_groups(beta, sigma, chunk, fam, grid=np.linspace(-12, 12, 12001)):
    """Each group's exact log-integral on a fixed fine grid (no modes, no scaling)."""
    from scipy.special import gammaln
    eta = (chunk.X @ np.asarray(beta))[:, None] + sigma * grid[None, :]
    n = chunk.m[:, None]
    s = np.round(chunk.y * chunk.m)[:, None]
    logf = s * eta - n * np.logaddexp(0, eta) + (gammaln(n + 1) - gammaln(s + 1)
                                                - gammaln(n - s + 1))
    f = np.add.reduceat(logf, chunk.starts, axis=0) + stats.norm.logpdf(grid)
    mx = f.max(axis=1, keepdims=True)
    return mx[:, 0] + np.log(np.trapezoid(np.exp(f - mx), grid, axis=1))


def by_rule(beta, sigma, chunk, fam, rules):
    out = np.empty(chunk.ngroups)
    for k in np.unique(rules.points):
        g = np.flatnonzero(rules.points == k)
        out[g] = agq_chunk(np.asarray(beta), sigma, chunk.subset(g), fam, int(k), gradient=False,
                           rule="trapezoid", span=rules.span[g],
                           shift=rules.shift[g]).loglik_groups
    return out


@pytest.mark.parametrize("beta, sigma", [([-4.5284, 0.5120], 5.1151),
                                         (CTR10[0], CTR10[1]), ([-7.9, 0.5], 7.8)])
def test_chosen_rules_integrate_every_group_to_1e8(beta, sigma):
    from mixedmodels.agq import choose_rule
    from mixedmodels.compress import group_patterns
    X, s, n, codes = ctr_arrays()
    # Distinct users only (the same integrals, half the work for the brute force).
    gp = group_patterns([s, n, X], codes, codes.max() + 1)
    rows = np.isin(codes, gp.rep)
    (ch,), fam = chunks_for(X[rows], s[rows], n[rows], np.unique(codes[rows],
                                                                 return_inverse=True)[1])
    rules = choose_rule(np.asarray(beta), sigma, ch, fam)
    err = by_rule(beta, sigma, ch, fam, rules) - brute_groups(beta, sigma, ch, fam)
    assert np.max(np.abs(err)) < 1e-8
    # The lopsided users (no click) need the most points, but far fewer than Gauss-Hermite's
    # 240-1000 (tested: the 160-point rule is still off by more than 1e-8 for some of them).
    noclick = ch.group_sum(ch.y * ch.m) == 0
    assert rules.points[noclick].max() <= 161
    gh = agq_chunk(np.asarray(beta), sigma, ch, fam, 160, gradient=False).loglik_groups
    assert np.max(np.abs(gh - brute_groups(beta, sigma, ch, fam))[noclick]) > 1e-8


def test_trapezoid_gradient_matches_finite_differences():
    X, s, n, codes = ctr_arrays()
    (ch,), fam = chunks_for(X, s, n, codes)
    G = ch.ngroups
    rng = np.random.default_rng(3)
    span, shift = rng.uniform(6, 12, G), rng.uniform(-2, 1, G)
    x = np.array([-4.7, 0.45, 5.3])

    def f(v, grad=False):
        return agq_chunk(v[:2], v[2], ch, fam, 41, gradient=grad, rule="trapezoid",
                         span=span, shift=shift)

    g = f(x, True).grad
    fd = [(f(x + e).loglik - f(x - e).loglik) / 2e-5 for e in np.eye(3) * 1e-5]
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5)
