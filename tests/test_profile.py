"""Profile-likelihood intervals against lme4 1.1-31's ``confint(fit, oldNames = FALSE)``.

lme4 interpolates a spline through its profile points; we root-find on the exact profile, so
the tolerance is 2e-3 relative (issue 3). lme4 profiles REML fits on the ML deviance scale:
the dyestuff REML and ML fixtures have the same profile intervals, and so must ours.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from mixedmodels.lmm import lmer
from mixedmodels.profile import Profiler
from test_lmm_reference import GAUSSIAN, load_reference


@pytest.fixture(scope="module", params=GAUSSIAN)
def profiled(request):
    ref, df = load_reference(request.param)
    fit = lmer(ref["formula"], df, reml=ref["reml"])
    return ref, fit, fit.confint(method="profile")


def test_profile_intervals_match_lme4(profiled):
    ref, fit, ci = profiled
    assert list(ci.index) == list(ref["profile_ci"])
    for name, (lo, hi) in ref["profile_ci"].items():
        got = ci.loc[name].to_numpy()
        if lo == 0:
            assert got[0] == 0.0, name
        else:
            np.testing.assert_allclose(got[0], lo, rtol=2e-3, err_msg=name)
        np.testing.assert_allclose(got[1], hi, rtol=2e-3, err_msg=name)


def test_intervals_contain_estimates(profiled):
    _, fit, ci = profiled
    for name, est in fit.fixef.items():
        assert ci.loc[name, "2.5 %"] < est < ci.loc[name, "97.5 %"]
    assert ci.loc["sigma", "2.5 %"] < fit.sigma < ci.loc["sigma", "97.5 %"]


def test_zeta_at_limits_is_critical_value():
    ref, df = load_reference("sleepstudy_slopes")
    fit = lmer(ref["formula"], df)
    prof = Profiler(fit)
    lo, hi = ref["profile_ci"]["sd_Days|Subject"]
    i = prof.names.index("sd_Days|Subject")
    # at lme4's limits the signed root deviance is close to -1.96 and +1.96
    assert abs(prof.zeta(i, lo)[0] + 1.959964) < 0.01
    assert abs(prof.zeta(i, hi)[0] - 1.959964) < 0.01
    # and zero at the ML estimate
    assert abs(prof.zeta(i, prof.estimates[i])[0]) < 1e-3


def test_reml_fit_profiled_on_ml_scale():
    ref_r, df = load_reference("dyestuff_reml")
    ref_m, _ = load_reference("dyestuff_ml")
    ci_r = lmer(ref_r["formula"], df, reml=True).confint()
    ci_m = lmer(ref_m["formula"], df, reml=False).confint()
    np.testing.assert_allclose(ci_r.to_numpy(), ci_m.to_numpy(), rtol=1e-6)


def test_boundary_fit_gives_zero_lower_limit():
    # A grouping factor with no real effect: the SD is estimated at the boundary (0).
    rng = np.random.default_rng(7)
    df = pd.DataFrame({"g": np.repeat(list("abcdef"), 5), "y": rng.normal(size=30)})
    df["y"] -= df.groupby("g")["y"].transform("mean") * 0.9  # shrink the group means towards 0
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fit = lmer("y ~ 1 + (1 | g)", df)
    assert fit.singular
    assert any("singular" in str(x.message) for x in w)
    assert "singular" in str(fit.summary())
    ci = fit.confint()
    assert ci.loc["sd_(Intercept)|g", "2.5 %"] == 0.0
    assert 0 < ci.loc["sd_(Intercept)|g", "97.5 %"] < np.inf


def test_confint_level_and_method_checked():
    ref, df = load_reference("dyestuff_ml")
    fit = lmer(ref["formula"], df, reml=False)
    with pytest.raises(ValueError, match="level"):
        fit.confint(level=1.5)
    with pytest.raises(ValueError, match="method"):
        fit.confint(method="bootstrap")
    narrow = fit.confint(method="wald", level=0.5)
    wide = fit.confint(method="wald", level=0.99)
    assert list(narrow.columns) == ["25 %", "75 %"]
    assert (wide.iloc[-1, 1] - wide.iloc[-1, 0]) > (narrow.iloc[-1, 1] - narrow.iloc[-1, 0])
