"""The analytic gradient of the profiled LMM objective (LMMProblem.value_and_gradient)
against central finite differences of the objective itself, for ML and REML, a scalar, a
vector-valued, crossed and nested terms, the dense and the sparse layouts; near the boundary
(a diagonal of T close to 0) the formula is accurate down to 1e-4 and refused below."""

from __future__ import annotations

import numpy as np
import pytest

from mixedmodels.blas import single_thread_blas
from mixedmodels.formula import build_model
from mixedmodels.lmm import LMMProblem
from test_lmm_reference import load_reference

CASES = [
    ("dyestuff_reml", [0.3]),
    ("sleepstudy_slopes", [0.8, -0.2, 0.4]),
    ("sleepstudy_uncorrelated", [1.3, 0.1]),
    ("penicillin_crossed", [2.0, 0.7]),
    ("pastes_nested", [0.5, 1.5]),
    ("penicillin_crossed", [2e-4, 0.7]),    # next to the bound
    ("sleepstudy_slopes", [0.8, 0.3, 2e-4]),
]


def central_difference(problem: LMMProblem, theta: np.ndarray, h: float = 1e-5) -> np.ndarray:
    g = np.empty(len(theta))
    for i in range(len(theta)):
        e = np.zeros(len(theta))
        e[i] = h
        lo = theta - e
        if theta[i] - h < problem.lower[i]:  # one-sided at the bound
            g[i] = (-3 * problem(theta) + 4 * problem(theta + e) - problem(theta + 2 * e)) / (2 * h)
        else:
            g[i] = (problem(theta + e) - problem(lo)) / (2 * h)
    return g


@pytest.mark.parametrize("name,theta", CASES)
@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("sparse", [False, True])
def test_gradient_matches_finite_differences(name, theta, reml, sparse):
    ref, df = load_reference(name)
    problem = LMMProblem(build_model(ref["formula"], df), reml=reml, sparse_threshold=0 if sparse else 10**9)
    theta = np.array(theta, dtype=float)
    value, grad = problem.value_and_gradient(theta)
    assert value == pytest.approx(problem(theta), rel=1e-13)
    if problem.sparse and problem.k1 > 1:
        assert grad is None  # no analytic gradient in this layout: the optimizer uses COBYQA
        return
    assert grad is not None
    np.testing.assert_allclose(grad, central_difference(problem, theta), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("theta", [[0.0, 0.7], [5e-5, 0.7]])
def test_no_analytic_gradient_at_the_bound(theta):
    ref, df = load_reference("penicillin_crossed")
    problem = LMMProblem(build_model(ref["formula"], df), reml=True)
    value, grad = problem.value_and_gradient(np.array(theta))
    assert grad is None and value == problem(np.array(theta))


def test_gradient_vanishes_at_the_optimum():
    ref, df = load_reference("sleepstudy_slopes")
    problem = LMMProblem(build_model(ref["formula"], df), reml=True)
    from mixedmodels.lmm import optimize_theta
    opt = optimize_theta(problem)
    _, grad = problem.value_and_gradient(opt.final)
    assert np.max(np.abs(grad)) < 1e-6
    assert "exact gradient" in opt.optimizer  # Newton from the moment start


def test_wide_crossed_fit_starts_from_one_term_fits():
    """A wide dense block starts from each term's theta fitted alone and reaches the same
    optimum as from lme4's start, with either optimizer."""
    from mixedmodels.lmm import lmer, optimize_theta
    import pandas as pd

    rng = np.random.default_rng(7)
    n, ns, nd = 2500, 300, 220
    s, d = rng.integers(0, ns, n), rng.integers(0, nd, n)
    y = 1.0 + rng.normal(0, 0.5, ns)[s] + rng.normal(0, 0.7, nd)[d] + rng.normal(0, 1.0, n)
    df = pd.DataFrame({"y": y, "s": s.astype(str), "d": d.astype(str)})
    fit = lmer("y ~ 1 + (1 | s) + (1 | d)", df, reml=False)
    assert "analytic gradient" in fit.optsum.optimizer
    assert not np.allclose(fit.optsum.initial, 1.0)
    problem = LMMProblem(fit.model, reml=False)
    with single_thread_blas():  # as lmer does (a threaded BLAS crawls on a busy machine)
        for method in ("L-BFGS-B", "COBYQA"):
            from_ones = optimize_theta(problem, start=problem.theta0, method=method)
            assert fit.deviance == pytest.approx(from_ones.final_objective, rel=1e-10)
            np.testing.assert_allclose(fit.theta, from_ones.final, rtol=1e-4)
        cobyqa = optimize_theta(problem, method="COBYQA")  # from the one-term fits
        assert cobyqa.evaluations < from_ones.evaluations
        assert fit.deviance == pytest.approx(cobyqa.final_objective, rel=1e-10)


def test_sparse_layout_with_a_vector_valued_later_term_has_no_gradient_but_fits():
    """The sparse formula covers scalar later terms only; with a vector-valued one the
    objective falls back to finite differences (and COBYQA when wide), same optimum."""
    import pandas as pd
    from mixedmodels.lmm import optimize_theta

    rng = np.random.default_rng(11)
    n = 600
    g1, g2 = rng.integers(0, 60, n), rng.integers(0, 8, n)
    x = rng.normal(size=n)
    y = rng.normal(0, 0.6, 60)[g1] + rng.normal(0, 0.5, 8)[g2] + x * (1 + rng.normal(0, 0.4, 8)[g2]) + rng.normal(size=n)
    df = pd.DataFrame({"y": y, "x": x, "g1": g1.astype(str), "g2": g2.astype(str)})
    model = build_model("y ~ x + (1 | g1) + (x | g2)", df)
    dense = LMMProblem(model, reml=True, sparse_threshold=10**9)
    sparse = LMMProblem(model, reml=True, sparse_threshold=0)
    assert sparse.sparse and not sparse.has_gradient and dense.has_gradient
    theta = np.array([0.6, 0.5, 0.1, 0.4])
    assert sparse.value_and_gradient(theta)[1] is None
    np.testing.assert_allclose(dense.value_and_gradient(theta)[1], central_difference(dense, theta),
                               rtol=1e-5, atol=1e-5)
    with single_thread_blas():
        a, b = optimize_theta(dense), optimize_theta(sparse)
    assert a.final_objective == pytest.approx(b.final_objective, rel=1e-9)


# One grouping factor (one term, or several terms of one factor such as a || term): the
# objective and gradient come from one k x k block per level (lmm.one_factor_sums) with a
# formula that needs no T^{-1}, so it holds on the boundary too.
BOUNDARY = [
    ("dyestuff_reml", [0.0]),
    ("sleepstudy_slopes", [0.8, 0.3, 0.0]),
    ("sleepstudy_slopes", [0.0, 0.3, 0.5]),
    ("sleepstudy_slopes", [0.0, 0.0, 0.0]),
    ("sleepstudy_uncorrelated", [0.0, 0.4]),
    ("sleepstudy_uncorrelated", [1.1, 0.0]),
]


@pytest.mark.parametrize("name,theta", BOUNDARY)
@pytest.mark.parametrize("reml", [True, False])
def test_one_factor_gradient_on_the_boundary(name, theta, reml):
    ref, df = load_reference(name)
    problem = LMMProblem(build_model(ref["formula"], df), reml=reml)
    assert problem._one_factor
    theta = np.array(theta, dtype=float)
    value, grad = problem.value_and_gradient(theta)
    assert grad is not None
    assert value == pytest.approx(problem(theta), rel=1e-13)
    h = 1e-6
    for i in range(len(theta)):
        e = np.zeros(len(theta))
        e[i] = h
        if theta[i] == 0.0 and problem.lower[i] == 0.0:
            # One-sided, second order: the objective is not defined below the bound.
            fd = (-3 * value + 4 * problem(theta + e) - problem(theta + 2 * e)) / (2 * h)
        else:
            fd = (problem(theta + e) - problem(theta - e)) / (2 * h)
        assert grad[i] == pytest.approx(fd, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("theta", [[1.0, 1.0], [0.3, 2.0], [0.0, 0.5]])
@pytest.mark.parametrize("reml", [True, False])
def test_one_factor_objective_equals_the_blocked_factor(theta, reml):
    """The || model's objective from one 2 x 2 block per level equals the one the blocked
    Cholesky factor of its two-term layout gives (the layout the estimates are read from)."""
    ref, df = load_reference("sleepstudy_uncorrelated")
    problem = LMMProblem(build_model(ref["formula"], df), reml=reml)
    assert problem._one_factor and len(problem.terms) == 2
    theta = np.array(theta, dtype=float)
    L11, _, LRR = problem.factor(theta, need_U=False)
    blocked = problem._components(L11, LRR)
    merged = problem.components(theta)
    for k in ("ldL2", "ldRX2", "pwrss", "deviance", "reml"):
        assert getattr(merged, k) == pytest.approx(getattr(blocked, k), rel=1e-12, abs=1e-10)


@pytest.mark.parametrize("name", ["dyestuff_reml", "sleepstudy_slopes", "sleepstudy_uncorrelated",
                                  "penicillin_crossed", "pastes_nested"])
def test_newton_polish_reaches_the_optimum(name):
    """After L-BFGS-B, Newton steps with the Hessian the convergence check uses: the gradient
    at the reported optimum is ~0 (not just what L-BFGS-B's stopping rule leaves)."""
    from mixedmodels.lmm import optimize_theta

    ref, df = load_reference(name)
    problem = LMMProblem(build_model(ref["formula"], df), reml=ref["reml"])
    with single_thread_blas():
        opt = optimize_theta(problem)
    assert opt.converged and ("Newton-polished" in opt.optimizer or opt.optimizer.startswith("Newton"))
    _, grad = problem.value_and_gradient(opt.final)
    assert np.max(np.abs(grad)) < 1e-5
