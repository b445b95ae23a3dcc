"""The post's data: quadrature points, the true maximum-likelihood estimate, nagq="auto".

The issue's reference: maximizing the exact (brute-force) marginal likelihood gives intercept
-4.5284, display 0.5120, user SD 5.1151, log-likelihood -2143.014. ``test_brute_force_optimum``
checks that independently of any Gauss-Hermite code: a finite-difference Newton step on the
brute-force integral (a fixed fine grid per user, the same reference as tests/test_agq.py)
from our estimates moves them by less than 1e-3.
"""

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import gammaln

import mixedmodels.glmm as G

FIX = Path(__file__).parent / "fixtures"
TRUE_MLE = np.array([-4.5284, 0.5120, 5.1151])
TRUE_LOGLIK = -2143.014
FORMULA = "clicks/expos ~ display + (1 | id)"


def ctr():
    return pd.read_csv(FIX / "ctr_seed1.csv")


@lru_cache(maxsize=None)
def fit(nagq):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", G.QuadratureWarning)
        return G.glmer(FORMULA, ctr(), weights="expos", nagq=nagq)


def params(f):
    return np.concatenate([f.fixef.to_numpy(), f.theta])


class Brute:
    """Exact log-likelihood on a fixed grid (vectorized over users; no quadrature rule)."""

    def __init__(self, d, grid=np.linspace(-10, 10, 4001)):
        order = np.argsort(pd.factorize(d["id"], sort=True)[0], kind="stable")
        d = d.iloc[order]
        codes = pd.factorize(d["id"], sort=True)[0]
        self.starts = np.flatnonzero(np.r_[True, np.diff(codes) != 0])
        self.s = d["clicks"].to_numpy(float)[:, None]
        self.n = d["expos"].to_numpy(float)[:, None]
        self.x = d["display"].to_numpy(float)[:, None]
        self.c = gammaln(self.n + 1) - gammaln(self.s + 1) - gammaln(self.n - self.s + 1)
        self.grid = grid
        self.logprior = -0.5 * grid**2 - 0.5 * np.log(2 * np.pi)

    def __call__(self, p):
        eta = p[0] + p[1] * self.x + p[2] * self.grid[None, :]
        ll = self.s * eta - self.n * np.logaddexp(0, eta) + self.c
        f = np.add.reduceat(ll, self.starts, axis=0) + self.logprior
        mx = f.max(axis=1, keepdims=True)
        return float(np.sum(mx[:, 0] + np.log(np.trapezoid(np.exp(f - mx), self.grid, axis=1))))


@pytest.mark.parametrize("nagq", [100, 320])
def test_enough_points_reach_the_true_mle(nagq):
    f = fit(nagq)
    np.testing.assert_allclose(params(f), TRUE_MLE, atol=1e-3)
    assert f.loglik == pytest.approx(TRUE_LOGLIK, abs=1e-2 if nagq == 100 else 1e-3)


def test_nagq_10_is_not_enough_and_says_so():
    f = fit(10)
    assert params(f)[0] == pytest.approx(-4.993, abs=2e-3)   # the post's (and lme4's) answer
    assert not f.quadrature_converged
    assert any("quadrature not converged" in n for n in f.notes)
    assert "quadrature not converged" in str(f.summary())
    # Its estimates have an exact log-likelihood 3.1 below the MLE's.
    b = Brute(ctr())
    assert b(params(fit(320))) - b(params(f)) == pytest.approx(3.1, abs=0.05)


def test_brute_force_optimum():
    b = Brute(ctr())
    x = params(fit(320))
    assert b(x) == pytest.approx(TRUE_LOGLIK, abs=1e-3)
    h = 1e-3
    k = len(x)
    f0 = b(x)
    E = np.eye(k) * h
    fp = np.array([b(x + e) for e in E])
    fm = np.array([b(x - e) for e in E])
    g = (fp - fm) / (2 * h)
    H = np.diag((fp - 2 * f0 + fm) / h**2)
    for i in range(k):
        for j in range(i + 1, k):
            H[i, j] = H[j, i] = (b(x + E[i] + E[j]) - b(x + E[i] - E[j]) - b(x - E[i] + E[j])
                                 + b(x - E[i] - E[j])) / (4 * h * h)
    step = np.linalg.solve(-H, g)
    assert np.max(np.abs(step)) < 1e-3, step
    assert np.all(np.linalg.eigvalsh(-H) > 0)


def test_auto_settles_and_reports():
    f = fit("auto")
    assert f.auto and f.quadrature_converged and f.converged
    np.testing.assert_allclose(params(f), TRUE_MLE, atol=1e-4)
    assert f.loglik == pytest.approx(TRUE_LOGLIK, abs=1e-3)
    lo, hi = f.points_range
    assert 9 <= lo < hi == f.nagq
    assert f.history[-1][0] == f.nagq and f.history[-1][1] == f.loglik
    # Every group's rule about doubled moves the log-likelihood by (much) less than 1e-8
    # per group.
    k, llc = f.loglik_check
    assert k == 2 * f.nagq - 1 and abs(llc - f.loglik) < 1e-8 * 1000
    assert f"{lo}-{hi} points per group" in str(f.summary())
    # The post's 1,000 users have 508 distinct (display, clicks, exposures) patterns.
    assert f.distinct_groups == 508
    assert "508 of the 1000 groups have distinct data" in str(f.summary())


def test_auto_is_the_brute_force_optimum():
    # Independently of any quadrature rule: the brute-force log-likelihood at auto's estimates
    # is the true maximum's, and no Newton step on it moves them.
    f = fit("auto")
    b = Brute(ctr())
    assert b(params(f)) == pytest.approx(TRUE_LOGLIK, abs=1e-3)
    assert f.loglik == pytest.approx(b(params(f)), abs=1e-6)


def test_one_point_equals_laplace_and_is_worst():
    lap = fit(1)
    # lme4's Laplace: intercept -7.92, SD 7.79.
    assert params(lap)[0] == pytest.approx(-7.92, abs=0.01)
    assert params(lap)[2] == pytest.approx(7.79, abs=0.03)
    b = Brute(ctr())
    assert b(params(lap)) < b(params(fit(10))) < b(params(fit(320)))


def test_profile_ci_on_the_posts_fit():
    # lme4 1.1-31 fails here ("profiling detected new, lower deviance"); the post printed
    # intercept [-5.557, -4.478], display [0.354, 0.678], user SD [5.175, 6.293].
    ci = fit(10).confint(method="profile")
    assert ci.loc["(Intercept)"].tolist() == pytest.approx([-5.557, -4.478], abs=0.01)
    assert ci.loc["display"].tolist() == pytest.approx([0.354, 0.678], abs=0.01)
    assert ci.loc["sd_(Intercept)|id"].tolist() == pytest.approx([5.175, 6.293], abs=0.01)
    wald = fit(10).confint(method="wald")
    # lme4's Wald intervals at its estimates (within our 3e-4 fixef / 2e-3 SE agreement)
    assert wald.loc["display"].tolist() == pytest.approx([0.353521, 0.677079], abs=5e-4)
    assert np.isnan(wald.loc["sd_(Intercept)|id"]).all()


def test_post_table_reproduced():
    f = fit(10)
    # The post: intercept -4.99347 (SE 0.27445), display 0.51530 (SE 0.08254), SD 5.707, corr -0.094
    assert f.fixef["(Intercept)"] == pytest.approx(-4.99347, abs=2e-3)
    assert f.fixef["display"] == pytest.approx(0.51530, abs=1e-4)
    assert f.se["(Intercept)"] == pytest.approx(0.27445, abs=6e-4)
    assert f.se["display"] == pytest.approx(0.08254, abs=1e-4)
    assert f.varcorr()["sdcor"][0] == pytest.approx(5.707, abs=2e-3)
    corr = f.vcov.iloc[0, 1] / (f.se.iloc[0] * f.se.iloc[1])
    assert corr == pytest.approx(-0.094, abs=1e-3)
