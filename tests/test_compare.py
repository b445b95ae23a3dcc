"""anova()/compare() against lme4 1.1-31 (tests/fixtures/features/features_reference.json, made by
tests/fixtures/features/make_features_reference.R):

    fm0 <- lmer(Reaction ~ 1 + (1 | Subject), ss); fm1 <- lmer(Reaction ~ Days + (1 | Subject), ss)
    fm2 <- lmer(Reaction ~ Days + (Days | Subject), ss); anova(fm1, fm2, fm0)
    g1 <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial)
    g0 <- glmer(cbind(incidence, size - incidence) ~ 1 + (1 | herd), cbpp, binomial); anova(g1, g0)
"""

import json
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm
from mixedmodels.compare import RefitNotice, anova, compare

FIX = Path(__file__).parent / "fixtures"
REF = json.loads((FIX / "features" / "features_reference.json").read_text())


def _num(v):
    return np.array([np.nan if x == "NA" else x for x in v], dtype=float)


@lru_cache(maxsize=None)
def sleep_fits():
    ss = pd.read_csv(FIX / "sleepstudy.csv", dtype={"Subject": str})
    return (ss, mm.lmer("Reaction ~ 1 + (1 | Subject)", ss), mm.lmer("Reaction ~ Days + (1 | Subject)", ss),
            mm.lmer("Reaction ~ Days + (Days | Subject)", ss))


@lru_cache(maxsize=None)
def cbpp_fits():
    cb = pd.read_csv(FIX / "cbpp.csv", dtype={"herd": str, "period": str})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g1 = mm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cb, nagq=1)
        g0 = mm.glmer("cbind(incidence, size - incidence) ~ 1 + (1 | herd)", cb, nagq=1)
    return cb, g0, g1


def test_anova_lmer_refits_reml_by_ml_and_matches_lme4():
    _, fm0, fm1, fm2 = sleep_fits()
    ref = REF["anova_sleepstudy"]
    with pytest.warns(RefitNotice, match="refitting model"):
        tab = anova(fm1, fm2, fm0, names=["fm1", "fm2", "fm0"])
    assert list(tab.index) == ref["rows"]                       # sorted by npar, as lme4
    assert list(tab["npar"]) == ref["npar"]
    np.testing.assert_allclose(tab["logLik"], ref["logLik"], atol=1e-4)
    np.testing.assert_allclose(tab["AIC"], ref["AIC"], atol=2e-4)
    np.testing.assert_allclose(tab["BIC"], ref["BIC"], atol=2e-4)
    np.testing.assert_allclose(tab["deviance"], ref["deviance"], atol=2e-4)
    np.testing.assert_allclose(tab["Chisq"], _num(ref["Chisq"]), atol=2e-4)
    np.testing.assert_array_equal(tab["Df"], _num(ref["Df"]))
    np.testing.assert_allclose(tab["Pr(>Chisq)"], _num(ref["p"]), rtol=1e-3)
    # the user's REML fits are untouched
    assert fm1.reml and fm2.reml


def test_anova_glmer_matches_lme4():
    _, g0, g1 = cbpp_fits()
    ref = REF["anova_cbpp"]
    tab = compare(g1, g0, names=["g1", "g0"])
    assert list(tab.index) == ref["rows"]
    assert list(tab["npar"]) == ref["npar"]
    # lme4's Laplace optimum on cbpp stops ~3e-4 short in log-likelihood (tests/test_glmm_lme4.py
    # records the check at lme4's tight PIRLS tolerance); ours is the higher one.
    np.testing.assert_allclose(tab["logLik"], ref["logLik"], atol=1e-3)
    assert np.all(tab["logLik"].to_numpy() >= np.array(ref["logLik"]) - 1e-6)
    np.testing.assert_allclose(tab["Chisq"].iloc[1], ref["Chisq"][1], atol=2e-3)
    assert tab["Df"].iloc[1] == 3
    np.testing.assert_allclose(tab["Pr(>Chisq)"].iloc[1], ref["p"][1], rtol=1e-3)


def test_anova_refuses_different_data():
    ss, _, fm1, _ = sleep_fits()
    sub = mm.lmer("Reaction ~ Days + (Days | Subject)", ss.iloc[:170], reml=False)
    with pytest.raises(ValueError, match="same data"):
        anova(fm1, sub)
    other = ss.assign(Reaction=np.log(ss["Reaction"]))
    fm_log = mm.lmer("Reaction ~ Days + (Days | Subject)", other, reml=False)
    with pytest.raises(ValueError, match="same response"):
        anova(mm.lmer("Reaction ~ Days + (1 | Subject)", ss, reml=False), fm_log)


def test_anova_refuses_non_nested():
    ss, _, _, _ = sleep_fits()
    a = mm.lmer("Reaction ~ Days + (1 | Subject)", ss, reml=False)       # npar 4
    b = mm.lmer("Reaction ~ 1 + (Days | Subject)", ss, reml=False)       # npar 5, lacks Days
    with pytest.raises(ValueError, match="not nested.*Days"):
        anova(a, b)


def test_anova_argument_checks():
    _, fm0, fm1, _ = sleep_fits()
    with pytest.raises(ValueError, match="two or more"):
        anova(fm1)
    with pytest.raises(ValueError, match="not a fitted mixed model"):
        anova(fm1, "fm2")
    with pytest.raises(ValueError, match="refit=False"):
        anova(fm0, fm1, refit=False)
    with pytest.raises(ValueError, match="names"):
        anova(fm0, fm1, names=["a"])


def test_anova_default_row_names_are_the_right_hand_sides():
    # lme4 labels rows by the fits' variable names; here: each formula right of "~", or
    # m1, m2, ... (in the order given) where two are the same.
    ss, fm0, fm1, _ = sleep_fits()
    with pytest.warns(RefitNotice, match="Days \\+ \\(1 \\| Subject\\)"):
        tab = anova(fm1, fm0)
    assert list(tab.index) == ["1 + (1 | Subject)", "Days + (1 | Subject)"]
    ml = mm.lmer("Reaction ~ Days + (1 | Subject)", ss, reml=False)
    with pytest.warns(RefitNotice):
        tab = anova(fm1, ml)
    assert list(tab.index) == ["m1", "m2"]
