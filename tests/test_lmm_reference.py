"""lmer against lme4 1.1-31 on the six gaussian references (tests/fixtures/lme4/*.json).

The reference values were produced in R by the project's make_lme4_reference.R, e.g.
    fit <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = TRUE)
    fixef(fit); sqrt(diag(vcov(fit))); getME(fit, "theta"); as.data.frame(VarCorr(fit))
    as.data.frame(ranef(fit, condVar = TRUE)); confint(fit, method = "Wald", oldNames = FALSE)
Tolerances are those of issue 3 (criterion 1e-6, fixef 1e-5 / 1e-6 abs, SDs and SEs 1e-4,
conditional modes 1e-3, Wald intervals 1e-4), all relative.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixedmodels.lmm import lmer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GAUSSIAN = ["dyestuff_reml", "dyestuff_ml", "sleepstudy_slopes", "sleepstudy_uncorrelated",
            "penicillin_crossed", "pastes_nested"]


def load_reference(name: str) -> tuple[dict, pd.DataFrame]:
    """The lme4 result and its data, with R's factors read as strings (categorical)."""
    ref = json.loads((FIXTURES / "lme4" / f"{name}.json").read_text())
    df = pd.read_csv(FIXTURES / ref["data"])
    factors = ref["factors"] if isinstance(ref["factors"], list) else [ref["factors"]]
    for f in factors:
        df[f] = df[f].astype(str)
    return ref, df


@pytest.fixture(scope="module", params=GAUSSIAN)
def case(request):
    ref, df = load_reference(request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of the references should warn
        fit = lmer(ref["formula"], df, reml=ref["reml"])
    return ref, fit


def close(actual, expected, rtol, atol=0.0):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float),
                               rtol=rtol, atol=atol)


def test_criterion(case):
    ref, fit = case
    expected = ref["reml_criterion"] if ref["reml"] else ref["deviance"]
    close(fit.deviance, expected, 1e-6)
    close(fit.loglik, ref["loglik"], 1e-6)
    close(fit.aic, ref["aic"], 1e-6)
    close(fit.bic, ref["bic"], 1e-6)
    if ref["reml"]:
        close(fit.reml_criterion, ref["reml_criterion"], 1e-6)
    else:
        assert fit.reml_criterion is None


def test_fixed_effects(case):
    ref, fit = case
    assert list(fit.fixef.index) == list(ref["fixef"])
    close(fit.fixef, list(ref["fixef"].values()), 1e-5, 1e-6)
    close(fit.se, list(ref["se"].values()), 1e-4)
    close(fit.vcov.to_numpy(), ref["vcov_fixef"], 1e-4, 1e-10)


def test_variance_components(case):
    ref, fit = case
    close(fit.sigma, ref["sigma"], 1e-4)
    vc = fit.varcorr()
    rv = pd.DataFrame(ref["varcorr"])
    assert list(vc["group"]) == list(rv["group"])
    for col in ("var1", "var2"):
        # R's NA is NaN in every empty cell (never None), whatever the column's dtype
        assert not any(v is None for v in vc[col])
        assert vc[col].isna().tolist() == rv[col].isna().tolist()
        assert vc[col].dropna().tolist() == rv[col].dropna().tolist()
    close(vc["sdcor"], rv["sdcor"], 1e-4)
    close(vc["vcov"], rv["vcov"], 2e-4)
    close(fit.theta, np.atleast_1d(ref["theta"]), 1e-4, 1e-6)


def test_counts(case):
    ref, fit = case
    assert fit.nobs == ref["nobs"]
    assert fit.ngroups == ref["ngroups"]
    assert fit.df_resid == ref["df_resid"]
    assert fit.singular == ref["singular"]
    assert fit.converged


def test_conditional_modes(case):
    ref, fit = case
    re_ = fit.ranef(condvar=True)
    rr = pd.DataFrame(ref["ranef"])
    assert list(re_["group"]) == list(rr["group"])
    assert list(re_["term"]) == list(rr["term"])
    assert list(re_["level"]) == list(rr["level"])
    scale = np.abs(rr["value"]).max()
    # relative 1e-3, with a floor for modes that are nearly zero
    close(re_["value"], rr["value"], 1e-3, 1e-4 * scale)
    close(re_["condsd"], rr["condsd"], 1e-3)


def test_fitted_values(case):
    ref, fit = case
    close(fit.fitted().to_numpy()[:20], ref["fitted_head"], 1e-6)
    resid = fit.residuals().to_numpy()
    assert np.allclose(resid + fit.fitted().to_numpy(), fit.model.y)


def test_wald_intervals(case):
    ref, fit = case
    ci = fit.confint(method="wald")
    for name, (lo, hi) in ref["wald_ci"].items():
        close(ci.loc[name].to_numpy(), [lo, hi], 1e-4)
    # lme4 gives NA for the variance parameters
    assert ci.loc["sigma"].isna().all()
    assert list(ci.columns) == ["2.5 %", "97.5 %"]


def test_summary_text(case):
    ref, fit = case
    s = fit.summary()
    text = str(s)
    assert ("REML criterion at convergence" in text) == ref["reml"]
    assert "Random effects:" in text and "Fixed effects:" in text
    assert f"Number of obs: {ref['nobs']}" in text
    for g in ref["ngroups"]:
        assert g in text
    html = s._repr_html_()
    assert html.startswith("<div") and "<table" in html
    assert fit._repr_html_() == html
