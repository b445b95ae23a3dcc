"""Prediction with levels the fit never saw, lme4's way (issue 11; ../shared/cases b5, b7,
f_newlevel_dtype).

lme4's ``predict.merMod``: ``allow.new.levels = FALSE`` by default (an error), a new group gets
the population value when allowed, "NAs are not allowed in prediction data for grouping
variables unless allow.new.levels is TRUE", and a new level of a fixed factor is always an
error ("factor f has new level c").
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats
from scipy.special import expit

import mixedmodels as mm


@pytest.fixture(scope="module")
def factor_fit():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"f": np.repeat(["a", "b"], 20), "g": np.tile(np.arange(5), 8)})
    df["y"] = np.where(df.f == "b", 10.0, 0.0) + rng.normal(size=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mm.lmer("y ~ f + (1 | g)", df)


def test_unseen_fixed_factor_level_is_an_error(factor_fit):
    # b5_unseen_factor.py: 'c' and 'B' were silently predicted as level 'a'.
    with pytest.raises(ValueError, match=r"factor 'f' has new level\(s\) 'c', 'B' not seen in the fit"):
        factor_fit.predict(pd.DataFrame({"f": ["a", "c", "B"], "g": [0, 0, 0]}), include_random=False)
    with pytest.raises(ValueError, match=r"factor 'f' has new level"):  # allow_new_levels is for groups only
        factor_fit.predict(pd.DataFrame({"f": ["c"], "g": [0]}), allow_new_levels=True)
    good = factor_fit.predict(pd.DataFrame({"f": ["a", "b"], "g": [0, 0]}), include_random=False)
    np.testing.assert_allclose(good, [factor_fit.fixef.iloc[0], factor_fit.fixef.sum()])


def test_missing_covariate_gives_nan_not_the_reference_level(factor_fit):
    nd = pd.DataFrame({"f": ["b", None], "g": [0, 0]})
    p = factor_fit.predict(nd, include_random=False)
    assert p.iloc[0] == pytest.approx(factor_fit.fixef.sum()) and np.isnan(p.iloc[1])


@pytest.fixture(scope="module")
def int_group_fit():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": np.tile(np.arange(5.0), 8), "g": np.repeat(np.arange(101, 109), 5)})
    df["y"] = df.x + rng.normal(0, 3, 8)[np.arange(40) // 5] + rng.normal(size=40)
    return mm.lmer("y ~ x + (1 | g)", df)


def test_group_labels_match_by_value(int_group_fit):
    # f_newlevel_dtype.py: "101" counted as a new group, silently.
    fit = int_group_fit
    b101 = fit.ranef().set_index("level").loc["101", "value"]
    p = fit.predict(pd.DataFrame({"x": [0.0] * 4, "g": [101, "101", 101.0, np.int16(101)]}))
    np.testing.assert_allclose(p, fit.fixef.iloc[0] + b101)
    # a categorical of strings, as read from a CSV, finds the same groups
    p2 = fit.predict(pd.DataFrame({"x": [1.0], "g": pd.Categorical(["101"])}))
    assert p2.iloc[0] == pytest.approx(fit.fixef.sum() + b101)


def test_new_and_missing_groups_follow_allow_new_levels(int_group_fit):
    fit = int_group_fit
    nd = pd.DataFrame({"x": [1.0, 1.0, 1.0], "g": [101, 999, np.nan]})
    with pytest.raises(ValueError, match=r"grouping factor 'g' has new level\(s\) '999'.*allow_new_levels=True"):
        fit.predict(nd.iloc[:2])
    with pytest.raises(ValueError, match=r"grouping factor 'g' has missing values in 1 row"):
        fit.predict(nd.iloc[[0, 2]])
    p = fit.predict(nd, allow_new_levels=True)
    b101 = fit.ranef().set_index("level").loc["101", "value"]
    np.testing.assert_allclose(p, [fit.fixef.sum() + b101, fit.fixef.sum(), fit.fixef.sum()])


def test_interaction_groups_match_by_value():
    df = pd.read_csv(__import__("pathlib").Path(__file__).parent / "fixtures" / "pastes.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = mm.lmer("strength ~ 1 + (1 | batch/cask)", df)
    nd = df.iloc[[0, 5]][["batch", "cask"]].reset_index(drop=True)
    np.testing.assert_allclose(fit.predict(nd), fit.fitted().iloc[[0, 5]])
    bad = pd.DataFrame({"batch": ["a", "zz"], "cask": ["a", "a"]})
    with pytest.raises(ValueError, match=r"new level"):
        fit.predict(bad)


@pytest.fixture(scope="module")
def glmm_fit():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"x": rng.normal(size=200), "g": np.repeat(np.arange(20), 10)})
    df["y"] = rng.binomial(1, expit(-0.3 + 0.8 * df.x + rng.normal(0, 1.2, 20)[df.g]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mm.glmer("y ~ x + (1 | g)", df, nagq=1)


def test_glmm_population_prediction_needs_no_grouping_column(glmm_fit):
    # b7_glmer_predict_nogroup.py: KeyError: 'g'
    f = glmm_fit
    nd = pd.DataFrame({"x": [0.0, 1.0]})
    eta = f.predict(nd, include_random=False)
    np.testing.assert_allclose(eta, f.fixef.iloc[0] + f.fixef.iloc[1] * nd.x)
    np.testing.assert_allclose(f.predict(nd, include_random=False, type="response"), expit(eta))
    with pytest.raises(ValueError, match=r"newdata is missing column\(s\) 'g'"):
        f.predict(nd)


def test_glmm_new_group_gets_the_population_value(glmm_fit):
    f = glmm_fit
    nd = pd.DataFrame({"x": [0.5, 0.5], "g": [3, "new"]})
    with pytest.raises(ValueError, match=r"grouping factor 'g' has new level\(s\) 'new'"):
        f.predict(nd)
    eta = f.predict(nd, allow_new_levels=True)
    b3 = f.ranef().set_index("level").loc["3", "value"]
    x_beta = f.fixef.iloc[0] + 0.5 * f.fixef.iloc[1]
    np.testing.assert_allclose(eta, [x_beta + b3, x_beta])  # link scale: random effect 0
    mu = f.predict(nd, allow_new_levels=True, type="response")
    assert mu.iloc[0] == pytest.approx(expit(x_beta + b3))
    # response scale: the mean over a new group's random effect, checked by quadrature
    sd = float(f.varcorr()["sdcor"].iloc[0])
    ref = integrate.quad(lambda u: expit(x_beta + sd * u) * stats.norm.pdf(u), -12, 12, epsabs=1e-13)[0]
    assert mu.iloc[1] == pytest.approx(ref, rel=1e-7)
    assert abs(ref - expit(x_beta)) > 1e-3  # and that is not the response at b = 0
