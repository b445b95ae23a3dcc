"""Random-slope fits that end with a zero intercept SD: the optimum may be a mirror image away.

With ``T[0, 0] = 0`` the covariance of ``(x | g)`` does not change when the rest of the
first column of ``T`` changes sign, but the criterion's slope in ``T[0, 0]`` does: a point
where raising the zero SD looks uphill can be a saddle whose mirror image has the way down
(found by a new-user sweep of 3,742 random designs: the default fit stopped 6.3 REML units
above lme4's optimum and said it had converged). The boundary rule and the convergence check
probe inside from the mirror images too (``CovarianceLayout.flipped_at_zero``)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm
from mixedmodels.covariance import CovarianceLayout
from mixedmodels.results import check_convergence


def sweep_design(seed: int) -> pd.DataFrame:
    """The new-user sweep's generator: 3-29 groups, balanced or not, random true SDs."""
    rng = np.random.default_rng(seed)
    G = int(rng.integers(3, 30))
    sizes = rng.integers(1, 12, G) if rng.random() < .5 else np.full(G, int(rng.integers(2, 10)))
    g = np.repeat(np.arange(G), sizes)
    n = len(g)
    x = rng.normal(size=n)
    s0, s1 = rng.choice([0, 0.05, 0.3, 1, 3]), rng.choice([0, 0.05, 0.3, 1])
    y = 1 + x + rng.normal(0, s0, G)[g] + rng.normal(0, s1, G)[g] * x + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})


def _fit(df, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mm.lmer("y ~ x + (x | g)", df, **kw)


def test_the_reported_saddle_reaches_lme4s_optimum():
    # lme4 1.1-31 on these data: theta (0.40039, 0.20305, 1.57155), REML criterion 520.228.
    fit = _fit(sweep_design(51043))
    assert fit.reml_criterion == pytest.approx(520.228, abs=1e-3)
    np.testing.assert_allclose(fit.theta, [0.40039, 0.20305, 1.57155], atol=2e-4)
    assert fit.converged and not fit.singular


# Seeds where the default path stopped above the best of two L-BFGS-B starts before the fix
# (near-singular intercept SDs; the polish could not settle, so L-BFGS-B now finishes).
@pytest.mark.parametrize("seed", [50061, 50149, 50289, 50366, 50480, 50549, 50461])
def test_default_path_is_as_good_as_two_lbfgsb_starts(seed):
    df = sweep_design(seed)
    fit = _fit(df)
    best = min(_fit(df, start=[1.0, 0.0, 1.0]).reml_criterion, _fit(df, start=[0.5, 0.3, 0.5]).reml_criterion)
    assert fit.reml_criterion <= best + 1e-6


def test_flipped_at_zero():
    class Term:
        def __init__(self, group, cnames):
            self.group, self.cnames = group, cnames

    lay = CovarianceLayout([Term("g", ["(Intercept)", "x", "z"]), Term("h", ["(Intercept)"])])
    # theta: T[0,0], T[1,0], T[2,0], T[1,1], T[2,1], T[2,2], then h's T[0,0]
    theta = np.array([0.0, -1.2, 0.4, 0.8, 0.3, 0.0, 0.0])
    mirrors = lay.flipped_at_zero(theta, [0, 5, 6])
    # Column 0 has entries below its zero diagonal; T[2,2] and h's T[0,0] have none.
    assert len(mirrors) == 1
    np.testing.assert_array_equal(mirrors[0], [0.0, 1.2, -0.4, 0.8, 0.3, 0.0, 0.0])
    T0, T1 = lay.covariances(theta)[0], lay.covariances(mirrors[0])[0]
    np.testing.assert_allclose(T0, T1)
    assert lay.flipped_at_zero(np.array([0.5, -1.2, 0.4, 0.8, 0.3, 0.0, 0.0]), [0]) == []


def test_convergence_check_sees_the_saddle():
    """At the saddle itself the check does not report convergence."""
    df = sweep_design(51043)
    fit = _fit(df)
    saddle = np.array([0.0, -1.2644, 0.8160])   # where the default fit used to stop
    p = fit.problem
    ok, msg, _ = check_convergence(p, saddle, p.lower,
                                   equivalents=lambda z, idx: p.layout.flipped_at_zero(z, idx))
    assert not ok and "inside" in msg
