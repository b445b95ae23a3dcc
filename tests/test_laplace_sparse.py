"""The sparse Laplace objective (PIRLS on the LMM's blocked factor) against a dense brute force.

The brute force builds ``Z Lambda`` as a dense ``n x q`` matrix, finds the conditional mode
with scipy's trust-region Newton on the dense Hessian (then plain Newton steps), and takes the log-determinant of the
dense ``I + Lambda' Z' W Z Lambda`` (expected information for a non-canonical link, as lme4);
its gradient is by central differences of that dense function. None of it shares code with
:mod:`mixedmodels.linalg`.
"""

import numpy as np
import pandas as pd
import pytest
import scipy.optimize as sopt

import mixedmodels.glmm as G
from mixedmodels.laplace import LaplaceObjective


def small_data(seed=4, n=300, na=25, nb=9):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, na, n)
    b = rng.integers(0, nb, n)
    x = rng.normal(size=n)
    eta = (-0.3 + 0.5 * x + rng.normal(0, 0.8, na)[a] + rng.normal(0, 0.6, nb)[b]
           + 0.4 * x * rng.normal(size=na)[a])
    return pd.DataFrame({"y": rng.binomial(1, 1 / (1 + np.exp(-eta))),
                         "c": rng.poisson(np.exp(0.5 * eta)), "x": x,
                         "a": a.astype(str), "b": b.astype(str)})


def term_factor(obj, theta, ti):
    """Term ``ti``'s factor, entry by entry from the layout's (term, row, column) records."""
    k = obj.terms[ti].k
    T = np.zeros((k, k))
    for r, e in enumerate(obj.layout.entries):
        if e.term == ti:
            T[e.row, e.col] = theta[r]
    return T


def dense_ZL(obj, theta):
    """``Z Lambda`` as a dense n x q matrix, from the terms' definition."""
    ZL = np.zeros((obj.n, obj.q))
    for ti, t in enumerate(obj.terms):
        T = term_factor(obj, theta, ti)
        zt = t.Z @ T
        for j in range(t.k):
            ZL[np.arange(obj.n), obj.offs[ti] + t.codes * t.k + j] = zt[:, j]
    return ZL


def dense_laplace(frame, obj, params):
    fam, y, m, c = frame.family, frame.y, frame.m, frame.const
    beta, theta = params[:obj.p], params[obj.p:]
    ZL = dense_ZL(obj, theta)
    eta0 = frame.ms.X @ beta

    def negf(u):
        return -(np.sum(fam.loglik_rows(eta0 + ZL @ u, y, m, c)) - 0.5 * u @ u)

    def grad(u):
        d1 = fam.derivs(eta0 + ZL @ u, y, m)[0]
        return -(ZL.T @ d1 - u)

    def hess(u):
        d2 = fam.derivs(eta0 + ZL @ u, y, m)[1]
        return ZL.T @ (-d2[:, None] * ZL) + np.eye(obj.q)

    res = sopt.minimize(negf, np.zeros(obj.q), jac=grad, hess=hess, method="trust-exact",
                        options={"gtol": 1e-12})
    u = res.x
    for _ in range(3):  # full Newton steps to machine precision (trust-exact may stop at ~1e-8)
        u = u - np.linalg.solve(hess(u), grad(u))
    eta = eta0 + ZL @ u
    W = -fam.info_derivs(eta, y, m)[0]
    A = ZL.T @ (W[:, None] * ZL) + np.eye(obj.q)
    return -negf(u) - 0.5 * np.linalg.slogdet(A)[1], u, A


CASES = [
    ("y ~ x + (1 | a) + (1 | b)", "binomial", None),
    ("y ~ x + (1 | a) + (1 | b)", "binomial", "probit"),
    ("c ~ x + (x | a) + (1 | b)", "poisson", None),
    ("y ~ x + (x | a)", "binomial", None),
    ("c ~ x + (1 | a) + (x | b)", "poisson", None),
]


@pytest.mark.parametrize("formula,family,link", CASES)
def test_sparse_laplace_equals_dense_brute_force(formula, family, link):
    frame = G.glmer_frame(formula, small_data(), family, link=link)
    obj = LaplaceObjective(frame)
    theta = np.array([0.7 if e.diagonal else -0.25 for e in obj.layout.entries])
    params = np.concatenate([[-0.2, 0.4], theta])
    ll, g = obj.evaluate(params)
    ll_dense, u_dense, A = dense_laplace(frame, obj, params)
    assert ll == pytest.approx(ll_dense, abs=1e-8)
    np.testing.assert_allclose(obj.u, u_dense, atol=1e-6)
    h = 1e-5
    fd = [(dense_laplace(frame, obj, params + e)[0] - dense_laplace(frame, obj, params - e)[0]) / (2 * h)
          for e in np.eye(len(params)) * h]
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5)
    # Conditional SDs of b: the diagonal of Lambda A^-1 Lambda' (per term and level).
    Ainv = np.linalg.inv(A)
    for ti, (b, sd) in enumerate(obj.modes(params)):
        t = obj.terms[ti]
        T = term_factor(obj, theta, ti)
        for lvl in (0, t.nlevels - 1):
            sl = slice(obj.offs[ti] + lvl * t.k, obj.offs[ti] + (lvl + 1) * t.k)
            V = T @ Ainv[sl, sl] @ T.T
            np.testing.assert_allclose(sd[lvl], np.sqrt(np.diag(V)), rtol=1e-7)
            np.testing.assert_allclose(b[lvl], T @ u_dense[sl], atol=1e-6)


def test_no_cap_on_the_number_of_random_effects():
    # 12,000 levels crossed with 10: far beyond the old dense path's 5,000, evaluated without
    # any q x q matrix (the factor's dense block is the second term's 10 x 10).
    rng = np.random.default_rng(2)
    n, na = 24_000, 12_000
    a = np.concatenate([np.arange(na), rng.integers(0, na, n - na)])
    b = rng.integers(0, 10, n)
    eta = rng.normal(0, 0.8, na)[a] + rng.normal(0, 0.5, 10)[b]
    d = pd.DataFrame({"y": rng.binomial(1, 1 / (1 + np.exp(-eta))), "a": a, "b": b})
    frame = G.glmer_frame("y ~ 1 + (1 | a) + (1 | b)", d, "binomial")
    obj = G.make_objective(frame, 1)
    assert isinstance(obj, LaplaceObjective) and obj.q == na + 10
    assert obj.blocks.qrest == 10
    x = np.array([0.1, 0.8, 0.5])
    ll, g = obj.evaluate(x)
    assert np.isfinite(ll)
    e = np.array([0.0, 1e-5, 0.0])
    fd = (obj.evaluate(x + e, gradient=False)[0] - obj.evaluate(x - e, gradient=False)[0]) / 2e-5
    assert g[1] == pytest.approx(fd, rel=1e-5, abs=1e-4)


def test_long_rows_path_agrees(monkeypatch):
    # Without the same-row pair index (kept only when rows are short), U'U and (U G) on U's
    # pattern come from sparse and chunked dense products: the same objective and gradient.
    import mixedmodels.linalg as LA

    frame = G.glmer_frame("c ~ x + (x | a) + (1 | b)", small_data(), "poisson")
    params = np.array([-0.2, 0.4, 0.7, -0.25, 0.6, 0.5])
    ll, g = LaplaceObjective(frame).evaluate(params)
    monkeypatch.setattr(LA, "_MAX_PAIRS", 0)
    monkeypatch.setattr(LA, "_CHUNK_ENTRIES", 20)
    obj = LaplaceObjective(frame)
    assert obj.blocks.pairs is None
    ll0, g0 = obj.evaluate(params)
    assert ll0 == pytest.approx(ll, abs=1e-10)
    np.testing.assert_allclose(g0, g, rtol=1e-9, atol=1e-9)
