"""The boundary rule (issue 11): a fit may stop on a bound only when the objective rises inside it.

``near_singular`` (tests/fixtures/boundary, lme4 1.1-31 via make_lme4_reference_wave2.R):
    fit <- lmer(y ~ x + (1 | f), d)   # theta 0.0694, REML 370.50971
Our L-BFGS-B used to stop at theta = 0 (370.51475) and call it a converged singular fit: the
REML criterion is flat to first order at theta = 0, and negative curvature there went unseen.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from scipy.special import expit

import mixedmodels as mm
from mixedmodels.boundary import minimize_bounded, probe_inside
from mixedmodels.results import check_convergence

FIX = Path(__file__).resolve().parent / "fixtures" / "boundary"


def near_singular():
    ref = json.loads((FIX / "near_singular.json").read_text())
    df = pd.read_csv(FIX / "near_singular.csv").astype({"f": str})
    return ref, df


def test_near_singular_agrees_with_lme4():
    ref, df = near_singular()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither singular nor unconverged
        fit = mm.lmer(ref["formula"], df)
    assert fit.reml_criterion == pytest.approx(ref["reml_criterion"], abs=1e-6)
    assert fit.theta[0] == pytest.approx(ref["theta"], rel=1e-3)
    np.testing.assert_allclose(fit.fixef, list(ref["fixef"].values()), rtol=1e-4)
    np.testing.assert_allclose(fit.se, list(ref["se"].values()), rtol=1e-3)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-3)
    assert not fit.singular and fit.converged


def test_near_singular_profile_intervals_agree_with_lme4():
    ref, df = near_singular()
    ci = mm.lmer(ref["formula"], df).confint()
    for name, (lo, hi) in ref["profile_ci"].items():
        assert ci.loc[name].iloc[0] == pytest.approx(lo, abs=2e-3), name
        assert ci.loc[name].iloc[1] == pytest.approx(hi, abs=2e-3), name


def test_convergence_check_refuses_negative_curvature_at_the_bound():
    ref, df = near_singular()
    f = mm.deviance_function(ref["formula"], df)
    # the point the old optimizer returned: gradient 0 (flat to first order), curvature < 0
    ok, msg, _ = check_convergence(f, np.array([0.0]), f.lower)
    assert not ok and "negative curvature" in msg
    ok, _, _ = check_convergence(f, np.array([ref["theta"]]), f.lower)
    assert ok


def one_d_optimum(f):
    """The REML optimum of a scalar term by brute force: a grid on [0, 3] then Brent's method."""
    grid = np.concatenate([[0.0], np.geomspace(1e-4, 3.0, 400)])
    vals = np.array([f(np.array([t])) for t in grid])
    k = int(np.argmin(vals))
    if k == 0:
        return 0.0, vals[0]
    res = optimize.minimize_scalar(lambda t: f(np.array([t])), bounds=(grid[k - 1], grid[min(k + 1, len(grid) - 1)]),
                                   method="bounded", options={"xatol": 1e-10})
    return (res.x, res.fun) if res.fun < vals[k] else (grid[k], vals[k])


def near_singular_data(seed: int) -> pd.DataFrame:
    """Our generator: 6 groups of 10, a group SD small next to the residual's (0.4 vs 5), so
    that the REML optimum is at, or just inside, theta = 0."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(6), 10)
    x = rng.normal(size=60)
    y = 1.0 + 0.6 * x + rng.normal(0, 0.4, 6)[g] + rng.normal(0, 5, 60)
    return pd.DataFrame({"y": y, "x": x, "f": g})


def test_forty_near_singular_fits_reach_their_own_optimum():
    interior = 0
    for seed in range(40):
        df = near_singular_data(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = mm.lmer("y ~ x + (1 | f)", df)
        t_opt, f_opt = one_d_optimum(fit.problem)
        assert fit.reml_criterion <= f_opt + 1e-8, (seed, fit.theta, t_opt)
        assert fit.theta[0] == pytest.approx(t_opt, abs=1e-3), seed
        assert fit.converged, (seed, fit.optsum.convergence_message)
        interior += t_opt > 0
    # the generator does produce both kinds (a test of the test)
    assert 5 <= interior <= 35


def test_glmm_zero_sd_is_probed():
    # A binomial GLMM whose SD optimum is small: every fit reaches the 1-D optimum of its own
    # deviance, with beta optimized at each SD (a profile over a fine grid).
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        g = np.repeat(np.arange(8), 15)
        x = rng.normal(size=120)
        y = rng.binomial(1, expit(0.2 + 0.5 * x + rng.normal(0, 0.3, 8)[g]))
        df = pd.DataFrame({"y": y, "x": x, "g": g})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = mm.glmer("y ~ x + (1 | g)", df, nagq=1)
        obj = fit._obj

        def profile(sd):
            res = optimize.minimize(lambda b: -obj.evaluate(np.r_[b, sd], gradient=False)[0], fit.fixef.to_numpy(),
                                    method="BFGS", options={"gtol": 1e-9})
            return res.fun

        grid = np.linspace(0.0, 1.5, 61)
        vals = np.array([profile(s) for s in grid])
        k = int(np.argmin(vals))
        best = vals[k] if k == 0 else optimize.minimize_scalar(
            profile, bounds=(grid[max(k - 1, 0)], grid[min(k + 1, 60)]), method="bounded").fun
        assert -fit.loglik <= best + 1e-6, seed
        assert fit.converged, fit.opt.convergence_message


def test_probe_and_minimize_bounded_on_a_toy_function():
    # f(t) = -t^2 + t^4 on t >= 0: flat at 0 with negative curvature, minimum at 1/sqrt(2)
    f = lambda z: float(-z[0] ** 2 + z[0] ** 4)  # noqa: E731
    assert probe_inside(f, np.array([0.0]), [0], 0.0) is not None
    x, fx = minimize_bounded(f, np.array([0.0]), [(0.0, None)])
    assert x[0] == pytest.approx(1 / np.sqrt(2), abs=1e-5)
    # a true boundary minimum stays put
    g = lambda z: float(z[0] ** 2 + z[0])  # noqa: E731
    assert probe_inside(g, np.array([0.0]), [0], 0.0) is None
    # an upper bound (a correlation at +1): flat at the bound, the minimum inside
    x, _ = minimize_bounded(lambda z: float(-(1 - z[0]) ** 2 + (1 - z[0]) ** 4), np.array([1.0]), [(-1.0, 1.0)])
    assert x[0] == pytest.approx(1 - 1 / np.sqrt(2), abs=1e-5)
