"""The fitted-model API beyond the lme4 numbers: predictions, the objective, metadata, summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixedmodels.lmm as lmm
from test_lmm_reference import load_reference


@pytest.fixture(scope="module")
def sleep_fit():
    ref, df = load_reference("sleepstudy_slopes")
    return ref, df, lmm.lmer(ref["formula"], df)


def test_predict_known_and_new_levels(sleep_fit):
    _, df, fit = sleep_fit
    new = pd.DataFrame({"Days": [0, 3, 3], "Subject": ["308", "308", "new subject"]}, index=[10, 11, 12])
    with pytest.raises(ValueError, match=r"grouping factor 'Subject' has new level\(s\) 'new subject'"):
        fit.predict(new)  # lme4's default allow.new.levels = FALSE
    pred = fit.predict(new, allow_new_levels=True)
    assert list(pred.index) == [10, 11, 12]
    re_ = fit.ranef().set_index(["term", "level"])["value"]
    b0, b1 = re_[("(Intercept)", "308")], re_[("Days", "308")]
    beta = fit.fixef
    np.testing.assert_allclose(pred[10], beta["(Intercept)"] + b0)
    np.testing.assert_allclose(pred[11], beta["(Intercept)"] + b0 + 3 * (beta["Days"] + b1))
    # a level not seen in the fit gets the population prediction
    np.testing.assert_allclose(pred[12], beta["(Intercept)"] + 3 * beta["Days"])
    pop = fit.predict(new[["Days"]], include_random=False)
    np.testing.assert_allclose(pop.to_numpy(), beta["(Intercept)"] + new["Days"] * beta["Days"])
    # predicting the fitted data reproduces fitted()
    np.testing.assert_allclose(fit.predict(df).to_numpy(), fit.fitted().to_numpy())


def test_deviance_function_is_the_objective(sleep_fit):
    ref, df, fit = sleep_fit
    f = lmm.deviance_function(ref["formula"], df, reml=True)
    np.testing.assert_allclose(f(fit.theta), ref["reml_criterion"], rtol=1e-9)
    assert f(fit.theta) <= f(fit.theta * 1.01)
    comps = f.components(fit.theta)
    np.testing.assert_allclose(comps.reml, f(fit.theta))
    np.testing.assert_allclose(fit.sigma**2, comps.pwrss / (fit.nobs - 2))
    assert list(f.lower) == [0.0, -np.inf, 0.0]


def test_optimizer_metadata(sleep_fit):
    _, _, fit = sleep_fit
    opt = fit.optsum
    assert opt.evaluations == len(opt.history) > 5
    # One grouping factor: the method-of-moments start, close to the optimum.
    np.testing.assert_allclose(opt.initial, lmm._moment_start(fit.problem))
    np.testing.assert_allclose(opt.initial, fit.theta, rtol=0.1, atol=0.02)
    np.testing.assert_allclose(opt.final, fit.theta)
    assert opt.final_objective <= opt.initial_objective
    assert opt.converged and "converged" in opt.convergence_message
    assert "evaluations" in str(opt)


def test_convergence_check_flags_a_non_optimum(sleep_fit):
    from mixedmodels.results import check_convergence

    _, _, fit = sleep_fit
    ok, msg, _ = check_convergence(fit.problem, fit.theta * 1.3, fit.problem.lower)
    assert not ok and "may not have converged" in msg


def test_summary_object(sleep_fit):
    _, _, fit = sleep_fit
    s = fit.summary()
    assert list(s.fixed_effects.columns) == ["Estimate", "Std. Error", "t value"]
    np.testing.assert_allclose(s.fixed_effects["t value"], fit.fixef / fit.se)
    np.testing.assert_allclose(s.random_effects["Std.Dev."].iloc[-1], fit.sigma)
    assert s.random_effects["Corr"].iloc[1] != ()
    np.testing.assert_allclose(s.residuals["Median"], np.median(fit.residuals() / fit.sigma))
    text = str(s)
    assert "Correlation of Fixed Effects:" in text and "Scaled residuals:" in text


def test_ml_summary_has_information_criteria():
    ref, df = load_reference("dyestuff_ml")
    fit = lmm.lmer(ref["formula"], df, reml=False)
    text = str(fit.summary())
    assert "maximum likelihood" in text
    for key in ("AIC", "BIC", "logLik", "deviance", "df.resid"):
        assert key in text
    assert f"{ref['aic']:.1f}" in text


def test_interactions_and_categorical_fixed_effects():
    ref, df = load_reference("sleepstudy_slopes")
    df = df.assign(phase=np.where(df["Days"] < 5, "early", "late"))
    fit = lmm.lmer("Reaction ~ Days * phase + (1 | Subject)", df)
    assert list(fit.fixef.index) == ["(Intercept)", "Days", "phaselate", "Days:phaselate"]
    no_int = lmm.lmer("Reaction ~ 0 + phase + (1 | Subject)", df)
    assert list(no_int.fixef.index) == ["phaseearly", "phaselate"]


@pytest.mark.parametrize("name", ["sleepstudy_slopes", "penicillin_crossed"])
def test_both_optimizers_reach_lme4s_optimum(name):
    # COBYQA is used for large problems; check it on references where lme4's answer is known.
    from mixedmodels.formula import build_model

    ref, df = load_reference(name)
    for method in ("L-BFGS-B", "COBYQA"):
        problem = lmm.LMMProblem(build_model(ref["formula"], df), reml=True, sparse_threshold=0)
        opt = lmm.optimize_theta(problem, method=method)
        np.testing.assert_allclose(opt.final_objective, ref["reml_criterion"], rtol=1e-8)
        np.testing.assert_allclose(opt.final, ref["theta"], rtol=1e-4)
        assert opt.converged


def test_lme4_start_reaches_the_same_optimum(sleep_fit):
    """From lme4's start (1s on the diagonal) the optimizer lands where the moment start
    took it."""
    ref, df, fit = sleep_fit
    other = lmm.lmer(ref["formula"], df, reml=ref["reml"], start=[1.0, 0.0, 1.0])
    np.testing.assert_allclose(other.optsum.initial, [1.0, 0.0, 1.0])
    np.testing.assert_allclose(other.theta, fit.theta, rtol=1e-7, atol=1e-8)
    assert other.optsum.evaluations > fit.optsum.evaluations


def test_moment_start_falls_back_without_within_group_information():
    """A random slope on a covariate that is constant within each group: no group's Z_g'Z_g
    is invertible, so there is no moment estimate and the fit starts where lme4 does."""
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(30), 4)
    df = pd.DataFrame({"g": g.astype(str), "x": rng.normal(size=30)[g]})
    df["y"] = 1 + df.x + rng.normal(size=30)[g] + rng.normal(size=len(g))
    problem = lmm.deviance_function("y ~ x + (x | g)", df)
    assert lmm._moment_start(problem) is None
    opt = lmm.optimize_theta(problem)
    np.testing.assert_allclose(opt.initial, [1.0, 0.0, 1.0])


def test_dropped_rows_warning_points_at_the_callers_line():
    rng = np.random.default_rng(0)
    d = pd.DataFrame({"y": rng.normal(size=50), "x": rng.normal(size=50),
                      "g": np.repeat(np.arange(10), 5).astype(str)})
    d.loc[3, "x"] = np.nan
    with pytest.warns(UserWarning, match="dropped 1 of 50 rows") as record:
        lmm.lmer("y ~ x + (1 | g)", d)
    assert any(w.filename == __file__ for w in record)
