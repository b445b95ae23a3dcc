"""Bad input gets a clear ValueError (or warning) naming the problem; data are never modified."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from mixedmodels.lmm import lmer
from test_lmm_reference import load_reference


@pytest.fixture(scope="module")
def sleep():
    return load_reference("sleepstudy_slopes")[1]


@pytest.mark.parametrize("formula,match", [
    ("Reaction ~ Dayz + (1 | Subject)", "'Dayz'"),
    ("Reaction ~ Days + (1 | Subj)", "'Subj'"),
    ("Reaction ~ Days + (Dayz | Subject)", "'Dayz'"),
    ("Reactio ~ Days + (1 | Subject)", "'Reactio'"),
    ("Reaction ~ Days + (1 | Subject", "unmatched"),
    ("Reaction ~ Days + ( | Subject)", "nothing before"),
    ("Reaction Days + (1 | Subject)", "'~'"),
    ("Reaction ~ Days * (1 | Subject)", "parentheses"),
    ("Reaction ~ Days", "no random-effects term"),
    ("~ Days + (1 | Subject)", "no response"),
])
def test_formula_errors_name_the_problem(sleep, formula, match):
    with pytest.raises(ValueError, match=match):
        lmer(formula, sleep)


def test_non_numeric_response(sleep):
    with pytest.raises(ValueError, match="'Subject' must be numeric"):
        lmer("Subject ~ Days + (1 | Subject)", sleep)


def test_wrong_argument_types(sleep):
    with pytest.raises(ValueError, match="DataFrame"):
        lmer("Reaction ~ Days + (1 | Subject)", sleep.to_dict())
    with pytest.raises(ValueError, match="formula must be a string"):
        lmer(3, sleep)
    with pytest.raises(ValueError, match="reml"):
        lmer("Reaction ~ Days + (1 | Subject)", sleep, reml="yes")


def test_missing_values_dropped_with_count_and_data_untouched(sleep):
    df = sleep.copy()
    df.loc[[0, 5, 7], "Reaction"] = np.nan
    df.loc[9, "Days"] = np.nan
    before = df.copy()
    with pytest.warns(UserWarning, match="dropped 4 of 180 rows"):
        fit = lmer("Reaction ~ Days + (Days | Subject)", df)
    pd.testing.assert_frame_equal(df, before)
    assert fit.nobs == 176
    assert 0 not in fit.fitted().index and 9 not in fit.fitted().index


def test_grouping_factor_with_one_level(sleep):
    with pytest.raises(ValueError, match="'one' has 1 level"):
        lmer("Reaction ~ Days + (1 | one)", sleep.assign(one="x"))


def test_as_many_levels_as_observations(sleep):
    with pytest.raises(ValueError, match="'id' has 180 levels for 180 observations"):
        lmer("Reaction ~ Days + (1 | id)", sleep.assign(id=np.arange(len(sleep))))


def test_more_random_effects_than_observations(sleep):
    small = sleep.groupby("Subject").head(2).head(12)  # 6 subjects x 2 days
    with pytest.raises(ValueError, match="12 random effects .* for only 12 observations"):
        lmer("Reaction ~ 1 + (Days | Subject)", small)


def test_rank_deficient_fixed_effects_dropped_like_lme4(sleep):
    df = sleep.assign(D2=2 * sleep["Days"] + 1)
    with pytest.warns(UserWarning, match="dropping 1 column.*D2"):
        fit = lmer("Reaction ~ Days + D2 + (1 | Subject)", df)
    ref = lmer("Reaction ~ Days + (1 | Subject)", sleep)
    assert list(fit.fixef.index) == ["(Intercept)", "Days"]
    np.testing.assert_allclose(fit.fixef, ref.fixef, rtol=1e-8)
    assert "D2" in str(fit.summary())


def test_constant_or_infinite_response(sleep):
    with pytest.raises(ValueError, match="constant"):
        lmer("Reaction ~ Days + (1 | Subject)", sleep.assign(Reaction=1.0))
    bad = sleep.copy()
    bad.loc[3, "Reaction"] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        lmer("Reaction ~ Days + (1 | Subject)", bad)


def test_grouping_columns_of_any_dtype_give_the_same_fit(sleep):
    base = lmer("Reaction ~ Days + (1 | Subject)", sleep)
    for conv in (lambda s: s.astype(int), lambda s: s.astype(float), lambda s: s.astype("category")):
        fit = lmer("Reaction ~ Days + (1 | Subject)", sleep.assign(Subject=conv(sleep["Subject"])))
        np.testing.assert_allclose(fit.theta, base.theta, rtol=1e-8)
        assert list(fit.ranef()["level"]) == list(base.ranef()["level"])


def test_predict_errors(sleep):
    fit = lmer("Reaction ~ Days + (Days | Subject)", sleep)
    with pytest.raises(ValueError, match="'Days'"):
        fit.predict(pd.DataFrame({"Day": [1], "Subject": ["308"]}))
    with pytest.raises(ValueError, match="'Subject'"):
        fit.predict(pd.DataFrame({"Days": [1]}))
    with pytest.raises(ValueError, match="newdata must be a pandas DataFrame"):
        fit.predict({"Days": [1]})


def test_bad_start(sleep):
    with pytest.raises(ValueError, match="start must have 3 elements"):
        lmer("Reaction ~ Days + (Days | Subject)", sleep, start=[1.0])
    with pytest.raises(ValueError, match=">= 0"):
        lmer("Reaction ~ Days + (Days | Subject)", sleep, start=[-1.0, 0.0, 1.0])


def test_no_warnings_for_good_input(sleep):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lmer("Reaction ~ Days + (Days | Subject)", sleep)
