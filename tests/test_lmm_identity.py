"""Internal identities of the LMM objective (no lme4 needed).

The blocked Cholesky objective must equal -2 log L computed directly from the multivariate
normal density with the dense marginal covariance V = sigma^2 (Z Lambda Lambda' Z' + I), at
arbitrary theta (not only at the optimum), for one term, a vector-valued term, crossed and
nested terms, and for both the dense and the sparse code paths.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mixedmodels.formula import build_model
from mixedmodels.lmm import LMMProblem
from test_lmm_reference import load_reference


def dense_Z_Lambda(problem: LMMProblem, theta: np.ndarray) -> np.ndarray:
    """Dense Z Lambda (n x q), only for these small test cases."""
    blocks = []
    for term, T in zip(problem.terms, problem.split_theta(theta)):
        Zi = np.zeros((problem.n, term.q))
        for j in range(term.k):
            Zi[np.arange(problem.n), term.codes * term.k + j] = term.Z[:, j]
        blocks.append(Zi @ np.kron(np.eye(term.nlevels), T))
    return np.hstack(blocks)


def dense_criteria(problem: LMMProblem, theta: np.ndarray) -> tuple[float, float]:
    """ML deviance and REML criterion, sigma and beta profiled out, from the density."""
    X, y = problem.model.X, problem.model.y
    n, p = X.shape
    ZL = dense_Z_Lambda(problem, theta)
    V0 = ZL @ ZL.T + np.eye(n)
    V0inv = np.linalg.inv(V0)
    beta = np.linalg.solve(X.T @ V0inv @ X, X.T @ V0inv @ y)
    r = y - X @ beta
    rss = r @ V0inv @ r
    ml = -2 * stats.multivariate_normal(mean=X @ beta, cov=(rss / n) * V0).logpdf(y)
    s2 = rss / (n - p)
    # REML: -2 log of the density of the error contrasts
    reml = (-2 * stats.multivariate_normal(mean=X @ beta, cov=s2 * V0).logpdf(y)
            + np.linalg.slogdet(X.T @ V0inv @ X / s2)[1] - p * np.log(2 * np.pi))
    return float(ml), float(reml)


CASES = [
    ("dyestuff_reml", [0.3]),
    ("sleepstudy_slopes", [0.8, -0.2, 0.4]),
    ("sleepstudy_uncorrelated", [1.3, 0.1]),
    ("penicillin_crossed", [2.0, 0.7]),
    ("pastes_nested", [0.5, 1.5]),
]


@pytest.mark.parametrize("name,theta", CASES)
@pytest.mark.parametrize("sparse", [False, True])
def test_blocked_objective_equals_dense_density(name, theta, sparse):
    ref, df = load_reference(name)
    model = build_model(ref["formula"], df)
    ml = LMMProblem(model, reml=False, sparse_threshold=0 if sparse else 10**12)
    reml = LMMProblem(model, reml=True, sparse_threshold=0 if sparse else 10**12)
    dense_ml, dense_reml = dense_criteria(ml, np.array(theta))
    np.testing.assert_allclose(ml(theta), dense_ml, rtol=1e-10)
    np.testing.assert_allclose(reml(theta), dense_reml, rtol=1e-10)


@pytest.mark.parametrize("sparse", [False, True])
def test_conditional_modes_solve_the_penalized_least_squares(sparse):
    ref, df = load_reference("sleepstudy_slopes")
    model = build_model("Reaction ~ Days + (Days | Subject) + (1 | g)", df.assign(g=df["Days"] % 3))
    prob = LMMProblem(model, reml=True, sparse_threshold=0 if sparse else 10**12)
    theta = np.array([0.9, 0.1, 0.3, 0.5])
    sol = prob.solve(theta)
    ZL = dense_Z_Lambda(prob, theta)
    X, y = model.X, model.y
    # [u; beta] minimizes ||y - X beta - Z Lambda u||^2 + ||u||^2
    A = np.block([[ZL.T @ ZL + np.eye(ZL.shape[1]), ZL.T @ X], [X.T @ ZL, X.T @ X]])
    rhs = np.concatenate([ZL.T @ y, X.T @ y])
    direct = np.linalg.solve(A, rhs)
    u = np.concatenate([np.ravel(x) for x in sol["u"]])
    np.testing.assert_allclose(np.concatenate([u, sol["beta"]]), direct, rtol=1e-8, atol=1e-8)
    # conditional variances: diagonal blocks of Lambda (L L')^{-1} Lambda' with L from the Z part
    Minv = np.linalg.inv(ZL.T @ ZL + np.eye(ZL.shape[1]))
    cv = prob.conditional_variances(sol)
    pos = 0
    for term, T, blocks in zip(prob.terms, prob.split_theta(theta), cv):
        for g in range(term.nlevels):
            sl = slice(pos + g * term.k, pos + (g + 1) * term.k)
            np.testing.assert_allclose(blocks[g], T @ Minv[sl, sl] @ T.T, rtol=1e-8, atol=1e-12)
        pos += term.q
