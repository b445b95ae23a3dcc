"""The vector-random-effect AGQ kernel (mixedmodels.agq_vector) against independent computations.

``brute_loglik`` is the reference: per group, the integral over the k-dimensional random effect
by the trapezoid rule on a fine fixed grid (no Gauss-Hermite), with the probabilities from
scipy.stats. The grid is placed around each group's own mode and curvature, found here by scipy
(nothing shared with the package): the trapezoid rule converges geometrically for these smooth,
Gaussian-tailed integrands wherever the grid sits, the placement only saves points.

Fixture: tests/fixtures/binom_slopes.csv and lme4/binom_slopes.json, made by
../shared/reference/make_lme4_reference_wave2.R (lme4 1.1-31):
``glmer(y ~ x + (x | g), d, binomial)`` on 150 groups x 10 binary rows.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from mixedmodels.agq_vector import (VectorObjective, agq_vector_chunk, make_vector_chunks,
                                    product_rule)
from mixedmodels.families import Binomial, Poisson, binomial
from mixedmodels.glmm import glmer_frame
from mixedmodels.laplace import LaplaceObjective

FIX = Path(__file__).parent / "fixtures"
LME4 = json.loads((FIX / "lme4" / "binom_slopes.json").read_text())
# lme4's estimates, as (beta, T) with T the lower-triangular factor from theta.
BETA = np.array([LME4["fixef"]["(Intercept)"], LME4["fixef"]["x"]])
TH = LME4["theta"]
T_LME4 = np.array([[TH[0], 0.0], [TH[1], TH[2]]])


def slopes_data():
    d = pd.read_csv(FIX / "binom_slopes.csv", dtype={"g": str})
    X = np.column_stack([np.ones(len(d)), d["x"].to_numpy(float)])
    codes = pd.factorize(d["g"], sort=True)[0]
    return d, X, X.copy(), d["y"].to_numpy(float), np.ones(len(d)), codes


def three_column_data(seed=11, G=25, n=8):
    """A Poisson model with a random intercept and two random slopes (k = 3)."""
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(G), n)
    x1, x2 = rng.normal(size=G * n), rng.uniform(-1, 1, G * n)
    X = np.column_stack([np.ones(G * n), x1, x2])
    T = np.array([[0.6, 0.0, 0.0], [0.2, 0.4, 0.0], [-0.1, 0.1, 0.5]])
    b = rng.normal(size=(G, 3)) @ T.T
    eta = X @ np.array([0.3, 0.5, -0.4]) + np.sum(X * b[codes], axis=1)
    y = rng.poisson(np.exp(eta)).astype(float)
    return X, X.copy(), y, np.ones(len(y)), codes, T


def kernel(beta, T, X, Z, y, m, codes, fam, nagq, gradient=False, max_rows=400_000):
    chunks, _ = make_vector_chunks(X, Z, y, m, np.zeros(len(y)), fam.log_const(y, m), codes,
                                   codes.max() + 1, max_rows=max_rows)
    out = None
    for c in chunks:
        r = agq_vector_chunk(beta, T, c, fam, nagq, gradient=gradient)
        out = r if out is None else out + r
    return out


def _logpmf(family, y, m, eta):
    if family == "binomial":
        return stats.binom.logpmf(np.round(y * m), m, 1.0 / (1.0 + np.exp(-eta)))
    return stats.poisson.logpmf(y, np.exp(eta))


def placement(beta, T, X, Z, y, m, codes, family="binomial"):
    """Each group's mode and the Cholesky factor of its curvature, by scipy (grid placement)."""
    eta0 = X @ beta
    k = T.shape[0]
    out = []
    for g in range(codes.max() + 1):
        r = codes == g
        A = Z[r] @ T

        def negf(u):
            return -(_logpmf(family, y[r], m[r], eta0[r] + A @ u).sum() - 0.5 * u @ u)

        u = optimize.minimize(negf, np.zeros(k), method="BFGS", options={"gtol": 1e-9}).x
        eta = eta0[r] + A @ u
        mu = 1.0 / (1.0 + np.exp(-eta)) if family == "binomial" else np.exp(eta)
        w = m[r] * mu * (1 - mu) if family == "binomial" else mu
        L = np.linalg.cholesky(np.eye(k) + A.T @ (A * w[:, None]))
        out.append((u, np.linalg.inv(L).T))
    return out


def brute_loglik(beta, T, X, Z, y, m, codes, place, family="binomial", h=0.25, half=8.0):
    """Exact marginal log-likelihood by the trapezoid rule on a fixed grid per group.

    log L_i = log integral prod_j p(y_ij | x_ij'beta + z_ij' T u) phi_k(u) du, with
    u = centre_i + S_i v on the grid v in [-half, half]^k (step h).
    """
    k = T.shape[0]
    g1 = np.arange(-half, half + h / 2, h)
    V = np.stack(np.meshgrid(*([g1] * k), indexing="ij"), -1).reshape(-1, k)
    eta0 = X @ beta
    total = 0.0
    for g, (c, S) in enumerate(place):
        r = codes == g
        U = c + V @ S.T
        eta = eta0[r][:, None] + (Z[r] @ T) @ U.T
        logf = _logpmf(family, y[r][:, None], m[r][:, None], eta).sum(0)
        logf += stats.multivariate_normal(np.zeros(k), np.eye(k)).logpdf(U)
        mx = logf.max()
        total += mx + np.log(np.exp(logf - mx).sum() * h ** k * abs(np.linalg.det(S)))
    return total


def test_product_rule():
    z, lw = product_rule(5, 2)
    assert z.shape == (25, 2)
    # Integrates exp(-|z|^2/2) (the plain-integral form) exactly: 2 pi.
    assert np.exp(lw) @ np.exp(-0.5 * np.sum(z * z, 1)) == pytest.approx(2 * np.pi, rel=1e-12)
    z1, lw1 = product_rule(1, 3)
    assert z1.shape == (1, 3) and lw1[0] == pytest.approx(1.5 * np.log(2 * np.pi))
    # Large rules drop the corners that carry nothing.
    assert len(product_rule(30, 2)[1]) < 900


@pytest.mark.parametrize("link", ["logit", "probit"])
def test_one_point_equals_laplace(link):
    # nagq = 1 is the Laplace approximation: the same number as the package's Laplace objective
    # (PIRLS on the whole model), at fixed parameters, for the correlated and the || model.
    d, *_ = slopes_data()
    for formula, theta in [("y ~ x + (x | g)", TH), ("y ~ x + (x || g)", [TH[0], TH[2]])]:
        frame = glmer_frame(formula, d, binomial(link))
        x = np.concatenate([BETA, theta])
        ll_lap = LaplaceObjective(frame).evaluate(x, gradient=False)[0]
        ll_vec = VectorObjective(frame, 1).evaluate(x, gradient=False)[0]
        assert ll_vec == pytest.approx(ll_lap, abs=1e-8)


def test_one_point_equals_laplace_three_columns():
    X, Z, y, m, codes, T = three_column_data()
    d = pd.DataFrame({"y": y, "x1": X[:, 1], "x2": X[:, 2], "g": codes.astype(str),
                      "t": np.linspace(0.5, 2.0, len(y))})
    frame = glmer_frame("y ~ x1 + x2 + offset(log(t)) + (x1 + x2 | g)", d, "poisson")
    assert frame.ms.offset is not None
    # lme4's theta: the lower triangle column by column (= T' row by row).
    x = np.concatenate([[0.3, 0.5, -0.4], T.T[np.triu_indices(3)]])
    ll_lap = LaplaceObjective(frame).evaluate(x, gradient=False)[0]
    obj = VectorObjective(frame, 1)
    np.testing.assert_allclose(obj.T(x[3:]), T)
    assert obj.evaluate(x, gradient=False)[0] == pytest.approx(ll_lap, abs=1e-8)


def test_factor_double_bar_block_stays_correlated():
    # (0 + f || g) with a factor: lme4 keeps the factor's block one correlated term (3
    # parameters for 2 levels); the vector kernel reads the same layout, so nagq = 1 equals
    # the Laplace objective and a fit with more points has lme4's 3 parameters.
    d, *_ = slopes_data()
    d = d.assign(f=np.where(d["x"].to_numpy() > 0, "hi", "lo"))
    frame = glmer_frame("y ~ 1 + (0 + f || g)", d, binomial())
    assert frame.layout.names == ["sd_fhi|g", "cor_flo.fhi|g", "sd_flo|g"]
    x = np.array([-0.2, 0.9, 0.3, 0.6])
    ll_lap = LaplaceObjective(frame).evaluate(x, gradient=False)[0]
    obj = VectorObjective(frame, 1)
    np.testing.assert_allclose(obj.T(x[1:]), [[0.9, 0.0], [0.3, 0.6]])
    assert obj.evaluate(x, gradient=False)[0] == pytest.approx(ll_lap, abs=1e-8)
    assert VectorObjective(frame, 5).lower().tolist() == [-np.inf, 0.0, -np.inf, 0.0]


def test_converges_to_brute_force_2d():
    _, X, Z, y, m, codes = slopes_data()
    fam = Binomial()
    place = placement(BETA, T_LME4, X, Z, y, m, codes)
    exact = brute_loglik(BETA, T_LME4, X, Z, y, m, codes, place)
    err = {q: abs(kernel(BETA, T_LME4, X, Z, y, m, codes, fam, q).loglik - exact)
           for q in (1, 3, 7, 15)}
    assert err[1] > 1e-3                       # Laplace is visibly off on binary data
    assert err[1] > err[3] > err[7]
    assert err[15] < 1e-6


def test_converges_to_brute_force_3d():
    X, Z, y, m, codes, T = three_column_data()
    beta = np.array([0.3, 0.5, -0.4])
    place = placement(beta, T, X, Z, y, m, codes, "poisson")
    exact = brute_loglik(beta, T, X, Z, y, m, codes, place, "poisson", h=0.4, half=8.4)
    err = {q: abs(kernel(beta, T, X, Z, y, m, codes, Poisson(), q).loglik - exact)
           for q in (1, 5, 9, 17)}
    assert err[1] > err[5] > err[9] > err[17]
    assert err[17] < 1e-6


@pytest.mark.parametrize("link, nagq", [("logit", 1), ("logit", 4), ("probit", 3),
                                        ("cloglog", 5)])
def test_gradient_matches_finite_differences(link, nagq):
    _, X, Z, y, m, codes = slopes_data()
    fam = binomial(link)
    x = np.array([-0.6, 0.7, 0.9, 0.15, 0.45])

    def at(x, grad=False):
        T = np.array([[x[2], 0.0], [x[3], x[4]]])
        return kernel(x[:2], T, X, Z, y, m, codes, fam, nagq, gradient=grad)

    r = at(x, True)
    g = np.concatenate([r.grad_beta, [r.grad_T[0, 0], r.grad_T[1, 0], r.grad_T[1, 1]]])
    fd = [(at(x + e).loglik - at(x - e).loglik) / 2e-5 for e in np.eye(5) * 1e-5]
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5)


def test_gradient_three_columns_poisson():
    X, Z, y, m, codes, T = three_column_data()
    fam = Poisson()
    rows, cols = np.tril_indices(3)
    x = np.concatenate([[0.3, 0.5, -0.4], T[rows, cols]])

    def at(x, grad=False):
        TT = np.zeros((3, 3))
        TT[rows, cols] = x[3:]
        return kernel(x[:3], TT, X, Z, y, m, codes, fam, 3, gradient=grad)

    r = at(x, True)
    g = np.concatenate([r.grad_beta, r.grad_T[rows, cols]])
    fd = [(at(x + e).loglik - at(x - e).loglik) / 2e-5 for e in np.eye(len(x)) * 1e-5]
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5)


def test_chunks_add_up():
    _, X, Z, y, m, codes = slopes_data()
    fam = Binomial()
    a = kernel(BETA, T_LME4, X, Z, y, m, codes, fam, 5, gradient=True)
    b = kernel(BETA, T_LME4, X, Z, y, m, codes, fam, 5, gradient=True, max_rows=37)
    assert a.loglik == pytest.approx(b.loglik, abs=1e-9)
    np.testing.assert_allclose(a.grad_beta, b.grad_beta, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(a.grad_T, b.grad_T, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(a.u_hat, b.u_hat, atol=1e-8)


def test_zero_covariance_is_the_glm_with_constants():
    _, X, Z, y, m, codes = slopes_data()
    glm = stats.binom.logpmf(y, m, 1 / (1 + np.exp(-(X @ BETA)))).sum()
    assert kernel(BETA, np.zeros((2, 2)), X, Z, y, m, codes, Binomial(), 5).loglik == \
        pytest.approx(glm, abs=1e-9)
    Xp, Zp, yp, mp, cp, _ = three_column_data()
    beta = np.array([0.3, 0.5, -0.4])
    pois = stats.poisson.logpmf(yp, np.exp(Xp @ beta)).sum()    # with its -log y! terms
    assert kernel(beta, np.zeros((3, 3)), Xp, Zp, yp, mp, cp, Poisson(), 3).loglik == \
        pytest.approx(pois, abs=1e-9)
