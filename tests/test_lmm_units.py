"""A covariate's units do not change an LMM fit: random-effect columns far from unit scale
are fitted rescaled and theta is mapped back (lmm._optimize_in_scaled_units). Found by a
new-user check: a random slope on x ~ 1e6 stopped 4.3 REML units from the optimum, called it
converged and singular (lme4 fails the same way, with a warning to rescale)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    G, m = 25, 10
    g = np.repeat(np.arange(G), m)
    z = rng.normal(size=G * m)
    y = 2 + (1 + rng.normal(0, 0.4, G)[g]) * z + rng.normal(0, 1, G)[g] + rng.normal(size=G * m)
    return pd.DataFrame({"y": y, "z": z, "g": g.astype(str)})


@pytest.mark.parametrize("unit", [1e6, 1e-6, 3e4])
@pytest.mark.parametrize("reml", [True, False])
def test_same_fit_in_any_units(data, unit, reml):
    ref = mm.lmer("y ~ z + (z | g)", data, reml=reml)
    fit = mm.lmer("y ~ x + (x | g)", data.assign(x=data.z * unit), reml=reml)
    assert "rescaled" in fit.optsum.optimizer and "rescaled" not in ref.optsum.optimizer
    assert fit.converged and not fit.singular
    np.testing.assert_allclose(fit.fixef.to_numpy() * [1, unit], ref.fixef.to_numpy(), rtol=1e-6)
    sd_ref = ref.varcorr()["sdcor"].to_numpy()
    sd = fit.varcorr()["sdcor"].to_numpy() * [1, unit, 1, 1]  # intercept SD, slope SD, cor, residual
    np.testing.assert_allclose(sd, sd_ref, rtol=1e-5)
    if not reml:  # the ML deviance does not depend on X's units (REML's has log det X'X)
        assert fit.deviance == pytest.approx(ref.deviance, abs=1e-6)
    # The reported theta is the optimum of the original problem.
    # The reported theta is the optimum of the original problem: its gradient in the
    # unit-scale parameters (theta_s = theta * scale) vanishes.
    _, grad = fit.problem.value_and_gradient(fit.theta)
    assert np.max(np.abs(grad / fit.optsum.theta_scale)) < 1e-4


def test_start_is_given_in_the_datas_units(data):
    fit = mm.lmer("y ~ x + (x | g)", data.assign(x=data.z * 1e6), start=[1.0, 0.0, 1e-6])
    np.testing.assert_allclose(fit.optsum.initial, [1.0, 0.0, 1e-6])
    ref = mm.lmer("y ~ z + (z | g)", data)
    np.testing.assert_allclose(fit.theta * [1, 1e6, 1e6], ref.theta, rtol=1e-5)
