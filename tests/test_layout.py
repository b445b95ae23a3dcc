"""One covariance layout and one result API for the LMM and the GLMM (issue 9).

Per term type (scalar, vector, ``||`` numeric and factor, nested, crossed): ``lmer`` and
``glmer`` agree with lme4 1.1-31 on the number, names and order of the covariance parameters,
and ``confint()`` of every kind labels every row right. lme4 references: tests/fixtures/lme4/
(R scripts: make_lme4_reference.R for the first wave, make_lme4_reference_wave2.R beside the
JSON for doublebar_glmm and binom_slopes).
"""

import dataclasses
import json
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm
from mixedmodels.covariance import CovarianceLayout, make_unique
from mixedmodels.summary import percent_labels

FIX = Path(__file__).parent / "fixtures"


def ref(case):
    return json.loads((FIX / "lme4" / f"{case}.json").read_text())


def data(csv, factors=()):
    return pd.read_csv(FIX / csv, dtype={f: str for f in factors})


@lru_cache(maxsize=None)
def sleep():
    return data("sleepstudy.csv", ["Subject"])


@lru_cache(maxsize=None)
def doublebar():
    return data("doublebar.csv", ["f", "unit"])


# (data, LMM formula, binary response for the GLMM, lme4's parameter names in lme4's order)
# The names of the first five come from lme4's profile_ci in the reference files (sigma
# dropped); the factor || names are lme4's for (1 | unit) + (0 + f | unit).
STRUCTURES = {
    "scalar": (lambda: data("dyestuff.csv", ["Batch"]), "Yield ~ 1 + (1 | Batch)",
               "Yield > 1527", "dyestuff_reml"),
    "vector": (sleep, "Reaction ~ Days + (Days | Subject)", "Reaction > 290", "sleepstudy_slopes"),
    "doublebar_numeric": (sleep, "Reaction ~ Days + (Days || Subject)", "Reaction > 290",
                          "sleepstudy_uncorrelated"),
    "nested": (lambda: data("pastes.csv", ["batch", "cask"]), "strength ~ 1 + (1 | batch/cask)",
               "strength > 60", "pastes_nested"),
    "crossed": (lambda: data("penicillin.csv", ["plate", "sample"]),
                "diameter ~ 1 + (1 | plate) + (1 | sample)", "diameter > 23", "penicillin_crossed"),
    "doublebar_factor": (doublebar, "y ~ f + (f || unit)", "yb", None),
}

DOUBLEBAR_FACTOR_NAMES = [
    "sd_(Intercept)|unit", "sd_fl1|unit", "cor_fl2.fl1|unit", "cor_fl3.fl1|unit",
    "cor_fl4.fl1|unit", "sd_fl2|unit", "cor_fl3.fl2|unit", "cor_fl4.fl2|unit", "sd_fl3|unit",
    "cor_fl4.fl3|unit", "sd_fl4|unit"]


def lme4_names(kind):
    case = STRUCTURES[kind][3]
    if case is None:
        return DOUBLEBAR_FACTOR_NAMES
    return [nm for nm in ref(case)["profile_ci"] if nm.startswith(("sd_", "cor_"))]


@lru_cache(maxsize=None)
def fits(kind):
    make, formula, binary, _ = STRUCTURES[kind]
    d = make().copy()
    d["yb"] = (d.eval(binary)).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lmm = mm.lmer(formula, d)
        glmm = mm.glmer("yb ~" + formula.split("~", 1)[1], d, nagq=1)
    return lmm, glmm


@pytest.mark.parametrize("kind", list(STRUCTURES))
def test_parameter_names_match_lme4(kind):
    lmm, glmm = fits(kind)
    names = lme4_names(kind)
    assert lmm.parameter_names() == names + ["sigma"]
    assert glmm.parameter_names() == names
    assert len(lmm.theta) == len(glmm.theta) == len(names)
    # varcorr: one row per sd and per correlation (and Residual for the LMM)
    assert len(glmm.varcorr()) == len(names)
    assert len(lmm.varcorr()) == len(names) + 1


@pytest.mark.parametrize("kind", list(STRUCTURES))
@pytest.mark.parametrize("method", ["wald", "Wald", "WALD"])
def test_wald_confint_labels(kind, method):
    for fit in fits(kind):
        ci = fit.confint(method=method)
        names = fit.parameter_names()
        assert list(ci.index) == names + list(fit.fixef.index)
        assert list(ci.columns) == ["2.5 %", "97.5 %"]
        assert ci.loc[names].isna().all().all()           # lme4: NA for the variance parameters
        fe = ci.loc[list(fit.fixef.index)]
        assert np.all(fe.iloc[:, 0] < fit.fixef) and np.all(fit.fixef < fe.iloc[:, 1])


# One parameter each (the last in lme4's order), to keep the test fast; the GLMM profiles
# of every parameter are checked against lme4 below (binom_slopes) and in test_glmm_lme4.
PROFILED = {"scalar": -1, "vector": -2, "doublebar_numeric": -1, "crossed": -1, "nested": -1}


@pytest.mark.parametrize("kind", list(PROFILED))
def test_profile_confint_labels(kind):
    for fit in fits(kind):
        names = fit.parameter_names()
        nm = names[len(fit.layout.names) + PROFILED[kind]]
        ci = fit.confint(method="Profile", parm=[nm])
        assert list(ci.index) == [nm]
        assert list(ci.columns) == ["2.5 %", "97.5 %"]
        lo, hi = ci.loc[nm]
        est = fit.layout.sdcor(fit.theta, fit._scale() or 1.0)[names.index(nm)]
        assert lo <= est <= hi
        assert (-1 <= lo and hi <= 1) if nm.startswith("cor_") else lo >= 0


@pytest.mark.parametrize("kind", list(STRUCTURES))
def test_boot_confint_labels(kind):
    # A tiny bootstrap (3 replicates): the labels and the shape are what is checked here; the
    # intervals themselves are checked in test_bootstrap.
    for fit in fits(kind):
        ci = fit.confint(method="BOOT", level=0.9, nsim=3, seed=1, progress=False)
        names = fit.parameter_names() + list(fit.fixef.index)
        assert list(ci.index) == names
        assert list(ci.columns) == ["5 %", "95 %"]
        fe = ci.loc[list(fit.fixef.index)]
        assert np.all(fe.iloc[:, 0] <= fe.iloc[:, 1])
        sds = [nm for nm in names if nm.startswith("sd_") or nm == "sigma"]
        assert np.all(ci.loc[sds].fillna(0).to_numpy() >= 0)


@pytest.mark.parametrize("kind", list(STRUCTURES))
def test_varcorr_empty_cells_are_nan(kind):
    # R's as.data.frame(VarCorr) has NA in every empty cell; here NaN, never None
    for fit in fits(kind):
        vc = fit.varcorr()
        assert not any(v is None for v in vc.to_numpy().ravel())
        assert vc["var2"].isna().sum() == sum(nm.startswith("sd_") for nm in fit.layout.names) + \
            (fit._scale() is not None)
        assert vc["vcov"].dtype == float and vc["sdcor"].dtype == float


def test_confint_bad_arguments():
    lmm, glmm = fits("scalar")
    for fit in (lmm, glmm):
        with pytest.raises(ValueError, match="method"):
            fit.confint(method="bayes")
        with pytest.raises(ValueError, match="parm"):
            fit.confint(method="wald", parm=["sd_x|nothing"])
        with pytest.raises(ValueError, match="level"):
            fit.confint(level=1.5)


def test_percent_labels_like_r():
    # R: format(100 * c(a, 1 - a), digits = 3) then " %"
    assert percent_labels(0.95) == ["2.5 %", "97.5 %"]
    assert percent_labels(0.975) == ["1.25 %", "98.75 %"]
    assert percent_labels(0.9) == ["5 %", "95 %"]
    assert percent_labels(0.99) == ["0.5 %", "99.5 %"]


def test_make_unique_like_r():
    assert make_unique(["g", "g", "h", "g"]) == ["g", "g.1", "h", "g.2"]


def test_layout_transforms_round_trip():
    lmm, _ = fits("doublebar_factor")
    lay = lmm.layout
    rng = np.random.default_rng(1)
    for _ in range(5):
        Ts = [np.tril(rng.normal(size=(k, k))) for k in lay.ks]
        theta = lay.normalize(lay.theta_from_factors(Ts))
        assert np.all(theta[lay.diagonal] >= 0)
        for S, T in zip(lay.covariances(theta), Ts):
            np.testing.assert_allclose(S, T @ T.T, atol=1e-12)   # normalizing keeps S
        sdcor = lay.sdcor(theta, sigma=2.0)
        np.testing.assert_allclose(lay.theta_from_sdcor(sdcor, sigma=2.0), theta, atol=1e-10)
    with pytest.raises(ValueError, match="theta must have 11"):
        lay.factors(np.zeros(3))


def test_varcorr_groups_made_unique_in_both_fitters():
    for fit in fits("doublebar_numeric"):
        assert fit.varcorr().group.tolist()[:2] == ["Subject", "Subject.1"]
        assert "Subject.1" in str(fit.summary())


def test_same_api_on_both_classes():
    lmm, glmm = fits("vector")
    assert isinstance(lmm, mm.LinearMixedModel) and isinstance(glmm, mm.GeneralizedLinearMixedModel)
    assert mm.GlmerResult is mm.GeneralizedLinearMixedModel
    for fit in (lmm, glmm):
        re = fit.ranef(condvar=True)
        assert list(re.columns) == ["group", "term", "level", "value", "condsd"]
        co = fit.coef()["Subject"]
        assert co.index.name == "Subject" and list(co.columns) == ["(Intercept)", "Days"]
        b = re[re.term == "Days"].set_index("level")["value"]
        np.testing.assert_allclose(co["Days"], fit.fixef["Days"] + b.loc[co.index].to_numpy())
        assert fit.fitted().index.equals(fit.model.rows)
        assert "<table" in fit._repr_html_()
        for t in ("response", "pearson", "working", "deviance"):
            r = fit.residuals(type=t)
            assert isinstance(r, pd.Series) and r.index.equals(fit.model.rows)
    # LMM: lme4's default is response residuals; GLMM: deviance residuals
    np.testing.assert_allclose(lmm.residuals(), lmm.model.y - lmm.fitted())
    y, mu = glmm.frame.y, glmm.fitted().to_numpy()
    dev = np.where(y == 1, -2 * np.log(mu), -2 * np.log1p(-mu))
    np.testing.assert_allclose(glmm.residuals(), np.sign(y - mu) * np.sqrt(dev), rtol=1e-10)
    np.testing.assert_allclose(glmm.residuals("pearson"), (y - mu) / np.sqrt(mu * (1 - mu)))
    np.testing.assert_allclose(glmm.residuals("working"), (y - mu) / (mu * (1 - mu)))


# ---- the lme4 references for || with a factor and for a correlated (x | g) GLMM ----------------


def test_doublebar_glmm_matches_lme4():
    r = ref("doublebar_glmm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # lme4's fit is singular too (intercept SD ~ 0)
        fit = mm.glmer(r["formula"], doublebar(), nagq=1)
    assert fit.parameter_names() == DOUBLEBAR_FACTOR_NAMES
    assert fit.loglik == pytest.approx(r["loglik"], abs=1e-4)
    np.testing.assert_allclose(fit.fixef, list(r["fixef"].values()), rtol=1e-4)
    np.testing.assert_allclose(fit.se, list(r["se"].values()), rtol=1e-3)
    vc, rv = fit.varcorr(), pd.DataFrame(r["varcorr"])
    assert vc.group.tolist() == rv.group.tolist()
    assert vc.var1.tolist() == rv.var1.tolist()
    np.testing.assert_allclose(vc.sdcor, rv.sdcor, rtol=1e-3, atol=1e-3)
    ci = fit.confint(method="wald")
    for name, (lo, hi) in r["wald_ci"].items():
        assert ci.loc[name].tolist() == pytest.approx([lo, hi], abs=2e-3), name


@lru_cache(maxsize=None)
def binom_slopes():
    r = ref("binom_slopes")
    return r, mm.glmer(r["formula"], data("binom_slopes.csv", ["g"]), nagq=1)


def test_binom_slopes_matches_lme4():
    r, fit = binom_slopes()
    assert fit.loglik == pytest.approx(r["loglik"], abs=1e-4)
    np.testing.assert_allclose(fit.fixef, list(r["fixef"].values()), rtol=1e-4)
    np.testing.assert_allclose(fit.se, list(r["se"].values()), rtol=1e-3)
    np.testing.assert_allclose(fit.varcorr().sdcor, pd.DataFrame(r["varcorr"]).sdcor, rtol=1e-3)


def test_binom_slopes_profile_intervals_match_lme4():
    r, fit = binom_slopes()
    ci = fit.confint()   # profile, sd/cor scale, correlation included
    assert list(ci.index) == list(r["profile_ci"])
    for name, (lo, hi) in r["profile_ci"].items():
        assert ci.loc[name].tolist() == pytest.approx([lo, hi], abs=1e-2), name


def test_glmm_correlated_slope_confint_on_sd_cor_scale():
    # ../shared/cases/b6_glmer_confint.py; lme4: sd_x|g [0.783, 1.406], cor [0.817, 1.000]
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(60), 20)
    x = rng.normal(size=1200)
    b0 = rng.normal(0, 1, 60)
    b1 = 0.6 * b0 + rng.normal(0, .6, 60)
    y = rng.binomial(1, 1 / (1 + np.exp(-(-0.5 + 0.5 * x + b0[g] + b1[g] * x))))
    fit = mm.glmer("y ~ x + (x | g)", pd.DataFrame(dict(y=y, x=x, g=g)), nagq=1)
    ci = fit.confint(parm=["sd_x|g", "cor_x.(Intercept)|g"])
    assert list(ci.index) == ["sd_x|g", "cor_x.(Intercept)|g"]
    assert ci.loc["sd_x|g"].tolist() == pytest.approx([0.783, 1.406], abs=1e-2)
    assert ci.loc["cor_x.(Intercept)|g"].tolist() == pytest.approx([0.817, 1.000], abs=1e-2)


def test_profile_object_can_be_plotted_and_read():
    import matplotlib

    matplotlib.use("Agg")
    lmm = mm.lmer("Reaction ~ Days + (Days | Subject)", sleep())
    prof = lmm.profile(parm=["sd_Days|Subject", "Days"], npoints=2)
    t = prof.table
    assert set(t.parameter) == {"sd_Days|Subject", "Days"}
    for nm, sub in t.groupby("parameter"):
        sub = sub.sort_values("value")
        assert np.all(np.diff(sub.zeta) > -1e-4)      # zeta increases (up to optimizer noise)
        assert sub.zeta.abs().min() == 0.0                           # the estimate is a point
    ci = prof.confint()
    np.testing.assert_allclose(ci.to_numpy(), lmm.confint(parm=["sd_Days|Subject", "Days"]).to_numpy(),
                               rtol=1e-6)
    # at another level: interpolated from the points, inside the 95% interval
    ci80 = prof.confint(0.8)
    assert list(ci80.columns) == ["10 %", "90 %"]
    assert np.all(ci80.iloc[:, 0] > ci.iloc[:, 0]) and np.all(ci80.iloc[:, 1] < ci.iloc[:, 1])
    fig = prof.plot()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["sd_Days|Subject", "Days"]
    for ax in axes:
        zeta = ax.lines[0].get_ydata()
        # the points near the interval (the search's far brackets left out), both ends drawn
        assert np.max(np.abs(zeta)) <= 1.3 * 1.96 and zeta.min() < -1.9 and zeta.max() > 1.9
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_layout_is_built_once_from_terms():
    lmm, glmm = fits("nested")
    assert isinstance(lmm.layout, CovarianceLayout)
    assert lmm.layout.names == glmm.layout.names
    np.testing.assert_array_equal(lmm.layout.lower, [0.0, 0.0])


def test_optsum_reads_the_same_on_both():
    from mixedmodels.glmm import GlmerOptSummary
    from mixedmodels.results import OptSummary

    lmm, glmm = fits("scalar")
    assert GlmerOptSummary is OptSummary and glmm.opt is glmm.optsum
    for fit in (lmm, glmm):
        o = fit.optsum
        assert type(o) is OptSummary
        # lme4's names, and the two records' older names for the same things
        assert o.feval == o.evaluations == o.nevals > 0
        assert o.message == o.return_message
        assert o.fval == o.final_objective and np.isfinite(o.fval)
        assert o.par is o.final and o.conv == (0 if o.converged else 1)
        assert isinstance(o.converged, bool) and "convergence" in str(o)
    assert glmm.optsum.fval == pytest.approx(-2 * glmm.loglik)
    assert glmm.optsum.loglik == pytest.approx(glmm.loglik)
    assert lmm.optsum.fval == pytest.approx(lmm.deviance)
    assert lmm.optsum.loglik == pytest.approx(lmm.loglik)
    assert lmm.optsum.finitial >= lmm.optsum.fval and len(lmm.optsum.lower) == len(lmm.theta)
    with pytest.raises(TypeError, match="fevals"):
        OptSummary("x", fevals=3)
    moved = dataclasses.replace(lmm.optsum, final=lmm.theta * 2)    # a copy with changes
    assert moved.feval == lmm.optsum.feval and np.all(moved.final == 2 * lmm.theta)
