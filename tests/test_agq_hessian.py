"""The scalar kernel's analytic Hessian (differentiation under the integral) against finite
differences of its analytic gradient, and its use in ``nagq="auto"``."""

from __future__ import annotations

import numpy as np
import pytest

from mixedmodels.agq import agq_chunk, choose_rule, make_chunks
from mixedmodels.families import Binomial
from test_agq import cbpp_arrays, ctr_arrays


def _chunk(X, s, n, codes, fam, weights=None):
    y, m = s / n, n
    (ch,), _ = make_chunks(X, y, m, np.ones(len(y)), np.zeros(len(y)), fam.log_const(y, m),
                           codes, codes.max() + 1, group_weights=weights)
    return ch


def _auto_rules(ch, fam, x):
    p = len(x) - 1
    return choose_rule(x[:p], x[p], ch, fam)


def _hessian_by_rule(ch, fam, x, r):
    """Sum of the kernel's Hessian over groups of each chosen rule (as the objective does)."""
    p = len(x) - 1
    H = 0.0
    for k in np.unique(r.points):
        g = np.flatnonzero(r.points == k)
        res = agq_chunk(x[:p], x[p], ch.subset(g), fam, int(k), rule="trapezoid",
                        span=r.span[g], shift=r.shift[g], hessian=True)
        H = H + res.neg_hessian
    return H


def _fd_by_rule(ch, fam, x, r):
    H = 0.0
    for k in np.unique(r.points):
        g = np.flatnonzero(r.points == k)
        rules = dict(rule="trapezoid", span=r.span[g], shift=r.shift[g])
        sub = ch.subset(g)
        p = len(x) - 1

        def grad(v, sub=sub, k=k, rules=rules):
            return agq_chunk(v[:p], v[p], sub, fam, int(k), **rules).grad

        h = 1e-5
        cols = [(grad(x + e) - grad(x - e)) / (2 * h) for e in np.eye(len(x)) * h]
        H = H + (-np.column_stack(cols))
    return 0.5 * (H + H.T)


@pytest.mark.parametrize("x", [np.array([-4.5284, 0.5120, 5.1151]),
                               np.array([-4.0, 0.3, 3.0])])
def test_ctr_hessian_matches_finite_differences(x):
    X, s, n, codes = ctr_arrays()
    fam = Binomial()
    ch = _chunk(X, s, n, codes, fam)
    r = _auto_rules(ch, fam, x)
    Ha, Hf = _hessian_by_rule(ch, fam, x, r), _fd_by_rule(ch, fam, x, r)
    assert np.all(np.linalg.eigvalsh(Ha) > 0)
    np.testing.assert_allclose(Ha, Hf, rtol=0, atol=1e-5 * np.abs(Hf).max())


def test_probit_hessian_matches_finite_differences():
    # A non-canonical link (observed, not expected, second derivatives) and p = 4.
    X, s, n, codes = cbpp_arrays()
    fam = Binomial(link="probit")
    ch = _chunk(X, s, n, codes, fam)
    x = np.array([-0.8, -0.5, -0.6, -0.9, 0.4])
    r = _auto_rules(ch, fam, x)
    Ha, Hf = _hessian_by_rule(ch, fam, x, r), _fd_by_rule(ch, fam, x, r)
    np.testing.assert_allclose(Ha, Hf, rtol=0, atol=1e-5 * np.abs(Hf).max())


def test_group_weights_scale_the_hessian():
    X, s, n, codes = cbpp_arrays()
    fam = Binomial()
    w = np.arange(1, codes.max() + 2, dtype=float)
    x = np.array([-1.4, -1.0, -1.1, -1.6, 0.65])
    plain = _chunk(X, s, n, codes, fam)
    weighted = _chunk(X, s, n, codes, fam, weights=w)
    per_group = [agq_chunk(x[:4], x[4], plain.subset(np.array([i])), fam, 41, rule="trapezoid",
                           hessian=True).neg_hessian for i in range(plain.ngroups)]
    Hw = agq_chunk(x[:4], x[4], weighted, fam, 41, rule="trapezoid", hessian=True).neg_hessian
    np.testing.assert_allclose(Hw, sum(wi * Hi for wi, Hi in zip(w, per_group)), rtol=1e-10)


def test_auto_fit_uses_the_analytic_hessian(monkeypatch):
    import mixedmodels as mm
    from mixedmodels.glmm_objective import ScalarObjective
    from mixedmodels.glmm_optimize import _hessian

    d = mm.load_ctr()
    fit = mm.glmer("clicks/expos ~ display + (1 | id)", d, weights="expos", nagq="auto")
    obj, x = fit._obj, fit.opt.final
    passes = obj.nevals
    assert obj.analytic_hessian
    Ha = _hessian(obj, x)
    monkeypatch.setattr(ScalarObjective, "analytic_hessian", property(lambda self: False))
    Hf = _hessian(obj, x)
    np.testing.assert_allclose(Ha, Hf, rtol=0, atol=1e-5 * np.abs(Hf).max())
    np.testing.assert_allclose(fit.opt.hessian, Ha, rtol=1e-6)
    # The true MLE, and an optimum in far fewer passes than with finite differences.
    np.testing.assert_allclose(fit.fixef.to_numpy(), [-4.5284, 0.5120], atol=1e-4)
    assert abs(fit.loglik - -2143.014) < 1e-3
    assert passes <= 12  # 21 with the finite-difference Hessian
