"""refit(), update(), simulate() and the parametric bootstrap (lme4's refit, update,
simulate.merMod and bootMer). Simulations are checked against the model's moments; refits
against fresh fits."""

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm
from mixedmodels.bootstrap import bootstrap, bootstrap_confint, simulate
from mixedmodels.refit import refit, update

FIX = Path(__file__).parent / "fixtures"


@lru_cache(maxsize=None)
def data():
    ss = pd.read_csv(FIX / "sleepstudy.csv", dtype={"Subject": str})
    cb = pd.read_csv(FIX / "cbpp.csv", dtype={"herd": str, "period": str})
    return ss, cb


@lru_cache(maxsize=None)
def fits():
    ss, cb = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = mm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cb, nagq=1)
    return (mm.lmer("Reaction ~ Days + (1 | Subject)", ss),
            mm.lmer("Reaction ~ Days + (Days | Subject)", ss), g)


def test_refit_equals_a_fresh_fit():
    ss, _ = data()
    fm1, fm2, _ = fits()
    y = simulate(fm2, 1, seed=3).iloc[:, 0].to_numpy()
    r = refit(fm2, y)
    fresh = mm.lmer("Reaction ~ Days + (Days | Subject)", ss.assign(Reaction=y))
    np.testing.assert_allclose(r.fixef, fresh.fixef, rtol=1e-6)
    np.testing.assert_allclose(r.deviance, fresh.deviance, atol=1e-6)
    np.testing.assert_allclose(refit(fm2, fm2.model.y).fixef, fm2.fixef, rtol=1e-7)
    with pytest.raises(ValueError, match="one value per observation"):
        refit(fm1, y[:10])


def test_refit_glmm_same_response_same_fit():
    _, _, g = fits()
    r = refit(g, g.frame.y)
    np.testing.assert_allclose(r.fixef, g.fixef, rtol=1e-5)
    np.testing.assert_allclose(r.loglik, g.loglik, atol=1e-7)
    with pytest.raises(ValueError, match="proportion"):
        refit(g, g.frame.y * 3)


def test_update_formula_and_arguments():
    ss, _ = data()
    fm1, _, _ = fits()
    ml = update(fm1, reml=False)
    assert not ml.reml
    np.testing.assert_allclose(ml.deviance, mm.lmer("Reaction ~ Days + (1 | Subject)", ss, reml=False).deviance)
    f0 = update(fm1, ". ~ . - Days")
    assert list(f0.fixef.index) == ["(Intercept)"]
    f2 = update(fm1, "log(Reaction) ~ .")
    assert f2.formula.startswith("log(Reaction) ~ Days")
    with pytest.raises(ValueError, match="no argument"):
        update(fm1, bogus=1)


def test_simulate_is_seeded_and_has_the_models_moments():
    fm1, _, g = fits()
    a, b = simulate(fm1, 5, seed=11), simulate(fm1, 5, seed=11)
    pd.testing.assert_frame_equal(a, b)
    assert a.shape == (180, 5) and list(a.columns[:2]) == ["sim_1", "sim_2"]
    assert not np.allclose(a.iloc[:, 0], a.iloc[:, 1])
    # Var(y) = sd_Subject^2 + sigma^2; Cov(y_ij, y_ij') (same subject) = sd_Subject^2.
    s = simulate(fm1, 4000, seed=1).to_numpy()
    vc = fm1.varcorr()
    tau2, s2 = vc["vcov"].iloc[0], vc["vcov"].iloc[1]
    resid = s - fm1.predict(include_random=False).to_numpy()[:, None]
    assert abs(np.mean(resid ** 2) / (tau2 + s2) - 1) < 0.03
    assert abs(np.mean(resid[0::10] * resid[1::10]) / tau2 - 1) < 0.08
    # use_u=True: the mean is the fitted value (BLUPs held), the variance sigma^2 only
    su = simulate(fm1, 4000, seed=2, use_u=True).to_numpy()
    assert np.max(np.abs(su.mean(axis=1) - fm1.fitted().to_numpy())) < 5 * fm1.sigma / np.sqrt(4000) * 1.5
    # binomial: proportions out of the same trials, mean m * mu at the modes
    sg = simulate(g, 3000, seed=5, use_u=True).to_numpy()
    m = g.frame.m
    assert np.allclose(sg * m[:, None], np.round(sg * m[:, None]))
    mu = g.predict(type="response").to_numpy()
    se = np.sqrt(mu * (1 - mu) / m / 3000)
    assert np.max(np.abs(sg.mean(axis=1) - mu) / se) < 4.5
    with pytest.raises(ValueError, match="nsim"):
        simulate(fm1, 0)


def test_bootstrap_is_reproducible_and_brackets_the_estimates():
    fm1, _, _ = fits()
    r1 = bootstrap(fm1, nsim=40, seed=7, progress=False)
    r2 = bootstrap(fm1, nsim=40, seed=7, progress=False)
    pd.testing.assert_frame_equal(r1, r2)
    assert list(r1.columns) == ["sd_(Intercept)|Subject", "sigma", "(Intercept)", "Days"]
    ci = bootstrap_confint(fm1, nsim=200, seed=1, progress=False)
    assert list(ci.columns) == ["2.5 %", "97.5 %"]
    est = pd.concat([pd.Series({"sd_(Intercept)|Subject": fm1.varcorr()["sdcor"].iloc[0],
                                "sigma": fm1.sigma}), fm1.fixef])
    assert np.all((ci.iloc[:, 0] < est) & (est < ci.iloc[:, 1]))
    # the fixed effects' percentile intervals are close to Wald's here (many rows, 18 groups)
    wald = fm1.confint(method="wald").loc[["(Intercept)", "Days"]]
    width = (wald.iloc[:, 1] - wald.iloc[:, 0]).to_numpy()
    assert np.all(np.abs(ci.loc[["(Intercept)", "Days"]].to_numpy() - wald.to_numpy()) < 0.2 * width[:, None])


def test_bootstrap_progress_bar_on_request(capsys):
    fm1, _, _ = fits()
    bootstrap(fm1, nsim=3, seed=1, progress=True)
    assert "bootstrap" in capsys.readouterr().err
    bootstrap(fm1, nsim=3, seed=1, progress=False)
    assert capsys.readouterr().err == ""
