"""Crashes turned into clear messages, and a sweep of bad input over every public entry point
(issue 11; the cases are ../shared/cases b3, b4, b9, b11, b12 and the list in the issue).

Each bad input must give a ValueError (or a warning) whose message names the argument or the
column and what is wrong -- never a numpy/scipy/pandas error from deep inside -- and the
user's DataFrame must be unmodified afterwards.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

import mixedmodels as mm
from mixedmodels.bootstrap import simulate


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ---- the cases ------------------------------------------------------------------------------


@pytest.mark.parametrize("family, y, match", [
    ("binomial", 0, "every observation is 0"),
    ("binomial", 1, "every observation is 1"),
    ("poisson", 0, "every observation is 0 \\(all-zero counts"),
])
def test_constant_response_is_refused_before_fitting(family, y, match):
    # b3_constant.py: numpy.linalg.LinAlgError: Singular matrix (lme4: "Response is constant")
    df = pd.DataFrame({"x": np.random.default_rng(0).normal(size=60), "g": np.repeat(np.arange(6), 10), "y": y})
    with pytest.raises(ValueError, match=rf"the response 'y' is constant: {match}"):
        mm.glmer("y ~ x + (1 | g)", df, family=family, nagq=1)


@pytest.mark.parametrize("family, lhs, columns", [
    ("binomial", "cbind(s, n - s)", {"s": 1, "n": 5}),
    ("binomial", "s/n", {"s": 1, "n": 5}),
    ("poisson", "s", {"s": 3}),
])
def test_constant_inside_the_range_is_refused_without_a_false_reason(family, lhs, columns):
    # A proportion of 0.2 everywhere has a finite fit (nothing runs off to infinity); it is
    # refused as lme4 refuses it, for having no variation.
    df = pd.DataFrame({"x": np.random.default_rng(0).normal(size=60), "g": np.repeat(np.arange(6), 10),
                       **columns})
    with pytest.raises(ValueError, match="is constant: every value is .*no variation") as info:
        mm.glmer(f"{lhs} ~ x + (1 | g)", df, family=family, nagq=1)
    assert "infinity" not in str(info.value)


def test_all_zero_weights_are_refused():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=60), "g": np.repeat(np.arange(6), 10), "y": rng.binomial(1, 0.5, 60)})
    with pytest.raises(ValueError, match="every row has zero weight"):
        quiet(mm.glmer, "y ~ x + (1 | g)", df, weights=np.zeros(60), nagq=1)


def test_complete_separation_reaches_the_diagnosis():
    # b4_separation.py: LinAlgError with the default nagq
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"x": rng.normal(size=300), "g": np.repeat(np.arange(30), 10)})
    df["y"] = (df.x > 0).astype(int)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = mm.glmer("y ~ x + (1 | g)", df)
    msgs = [str(w.message) for w in caught]
    assert any("complete separation" in m and "x" in m for m in msgs), msgs
    assert not fit.converged


def test_exact_fit_is_a_singular_fit_with_residual_sd_zero():
    # b9_exact_fit.py: LinAlgError; lme4 fits it as singular with sigma ~ 5e-16
    df = pd.DataFrame({"x": np.tile(np.arange(5.0), 6), "g": np.repeat(np.arange(6), 5)})
    df["y"] = 2 + 3 * df.x
    with pytest.warns(UserWarning, match="fitted exactly: the residual standard deviation is ~0"):
        fit = mm.lmer("y ~ x + (1 | g)", df)
    np.testing.assert_allclose(fit.fixef, [2.0, 3.0], rtol=1e-10)
    assert fit.sigma < 1e-5 * df.y.std()
    assert fit.singular and fit.theta[0] == 0.0


def test_glmer_start_of_wrong_length():
    # b11_glmer_start.py: IndexError from deep inside
    df = pd.DataFrame({"x": np.random.default_rng(0).normal(size=60), "g": np.repeat(np.arange(6), 10)})
    df["y"] = (df.x > 0.3).astype(int) ^ (df.g % 2)
    with pytest.raises(ValueError, match=r"`start` must have 3 values, in this order: \(Intercept\), x, g.\(Intercept\); got 1"):
        mm.glmer("y ~ x + (1 | g)", df, start=np.array([0.0]))
    with pytest.raises(ValueError, match="`start` must be finite"):
        mm.glmer("y ~ x + (1 | g)", df, start=[0.0, np.nan, 1.0])
    # the right length is used
    fit = quiet(mm.glmer, "y ~ x + (1 | g)", df, start=[0.0, 0.0, 1.0], nagq=1)
    assert len(fit.fixef) == 2


def test_glmer_runs_lmers_structural_checks():
    # b12_glmer_no_nre_check.py: 80 random effects for 40 observations were fitted
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"x": rng.normal(size=40), "z": rng.normal(size=40), "w": rng.normal(size=40),
                       "g": np.repeat(np.arange(20), 2), "y": rng.binomial(1, .5, 40)})
    with pytest.raises(ValueError, match=r"has 80 random effects \(4 per level x 20 levels\) for only 40 observations"):
        mm.glmer("y ~ x + (x + z + w | g)", df)
    with pytest.raises(ValueError, match="80 random effects"):
        mm.lmer("x ~ z + (x + z + w | g)", df)
    # binomial counts: the trials are the observations (40 rows of 50 trials carry 2,000)
    agg = df.assign(n=50, s=rng.binomial(50, 0.5, 40))
    with pytest.raises(ValueError, match="80 random effects"):
        mm.glmer("s/n ~ x + (x + z + w | g)", agg.assign(n=1, s=agg.y))
    quiet(mm.glmer, "s/n ~ x + (x | g)", agg.assign(g=np.repeat(np.arange(40), 1)), nagq=1)
    # an observation-level random effect stays allowed in a GLMM (lme4's allow.n = TRUE)
    cbpp = pd.read_csv(__import__("pathlib").Path(__file__).parent / "fixtures" / "cbpp.csv")
    cbpp["obs"] = np.arange(len(cbpp))
    fit = quiet(mm.glmer, "cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs)", cbpp, nagq=1)
    assert fit.ngroups["obs"] == len(cbpp)


def test_nagq_as_a_whole_float():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"x": rng.normal(size=200), "g": np.repeat(np.arange(20), 10)})
    df["y"] = rng.binomial(1, expit(0.5 * df.x + rng.normal(0, 1, 20)[df.g]))
    a, b = quiet(mm.glmer, "y ~ x + (1 | g)", df, nagq=5.0), quiet(mm.glmer, "y ~ x + (1 | g)", df, nagq=5)
    assert a.nagq == 5 and a.loglik == b.loglik
    with pytest.raises(ValueError, match="`nagq` must be a whole number"):
        mm.glmer("y ~ x + (1 | g)", df, nagq=2.5)


def test_inf_in_a_random_slope_column_is_named():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=60), "g": np.repeat(np.arange(6), 10), "y": rng.normal(size=60)})
    df.loc[4, "x"] = np.inf
    with pytest.raises(ValueError, match=r"column\(s\) 'x' have 1 infinite value"):
        mm.lmer("y ~ 1 + (x | g)", df)
    with pytest.raises(ValueError, match=r"random-effects term \(0 \+ x \| g\) column\(s\) 'x'"):
        mm.glmer("I(y > 0) ~ 1 + (0 + x | g)", df.assign(y=(df.y > 0).astype(int)))


def weighted_data():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=60), "g": np.repeat(np.arange(6), 10)})
    df["y"] = df.x + rng.normal(size=60) + np.arange(6)[df.g]
    df["w"] = rng.uniform(1, 3, 60)
    df["yb"] = (df.y > df.y.median()).astype(int)
    return df


def test_nan_weights_drop_the_row_with_the_usual_warning():
    df = weighted_data()
    df.loc[[3, 8], "w"] = np.nan
    before = df.copy()
    with pytest.warns(UserWarning, match=r"dropped 2 of 60 rows with missing values in `weights`"):
        fit = mm.lmer("y ~ x + (1 | g)", df, weights="w")
    ref = mm.lmer("y ~ x + (1 | g)", df.dropna(), weights="w")
    np.testing.assert_allclose(fit.fixef, ref.fixef, rtol=1e-7)
    with pytest.warns(UserWarning, match=r"dropped 2 of 60 rows"):
        g = mm.glmer("yb ~ x + (1 | g)", df, weights=np.where(df.w.isna(), np.nan, 1.0), nagq=1)
    assert g.nobs == 58
    pd.testing.assert_frame_equal(df, before)


def test_weights_series_is_aligned_by_index():
    df = weighted_data()
    shuffled = df.sample(frac=1.0, random_state=3)
    ref = mm.lmer("y ~ x + (1 | g)", df, weights="w")
    by_index = mm.lmer("y ~ x + (1 | g)", shuffled, weights=df["w"])  # df's order, matched by label
    np.testing.assert_allclose(by_index.fixef, ref.fixef, rtol=1e-7)  # the rows in another order
    with pytest.raises(ValueError, match=r"`weights` is a Series matched to data by index, and it has no value"):
        mm.lmer("y ~ x + (1 | g)", df, weights=df["w"].iloc[:50])
    offs = quiet(mm.glmer, "yb ~ x + (1 | g)", shuffled, offset=0.1 * df["x"], nagq=1)
    ref_o = quiet(mm.glmer, "yb ~ x + (1 | g)", df, offset=0.1 * df["x"].to_numpy(), nagq=1)
    np.testing.assert_allclose(offs.fixef, ref_o.fixef, rtol=1e-6)


# ---- the sweep: every entry point, a table of bad inputs --------------------------------------


def base():
    rng = np.random.default_rng(7)
    df = pd.DataFrame({"x": rng.normal(size=80), "f": np.tile(["a", "b"], 40), "g": np.repeat(np.arange(8), 10)})
    df["y"] = df.x + rng.normal(size=80) + rng.normal(0, 1, 8)[df.g]
    df["yb"] = (df.y > 0).astype(int)
    return df


def _nan_x(d):
    d = d.copy()
    d.loc[:, "x"] = np.nan
    return d


def _inf_x(d):
    d = d.copy()
    d.loc[2, "x"] = np.inf
    return d


def _str_x(d):
    return d.assign(x=d.x.map(lambda v: f"{v:.2f} cm"))


BAD_FITS = [
    # (name, data transform, formula change, message fragment)
    ("all NaN covariate", _nan_x, None, "no complete rows left"),
    ("inf covariate", _inf_x, None, "'x' have 1 infinite"),
    ("empty frame", lambda d: d.iloc[:0], None, "data has no rows \\(columns: "),
    ("frame without columns", lambda d: pd.DataFrame(), None, "data has no rows \\(columns: none"),
    ("one group", lambda d: d.assign(g=0), None, "grouping factor 'g' has 1 level"),
    ("one row per group", lambda d: d.assign(g=np.arange(len(d))), None, "grouping factor 'g' has 80 levels"),
    ("text covariate", _str_x, None, None),  # either refused by name or fitted as a factor
    ("missing column", None, "{y} ~ xx + (1 | g)", "'xx' \\(used in the fixed effects\\)"),
    ("missing group column", None, "{y} ~ x + (1 | gg)", "'gg' \\(used in the grouping factor"),
    ("not a frame", lambda d: d.to_dict(), None, "DataFrame"),
]


@pytest.mark.parametrize("fitter", ["lmer", "glmer"])
@pytest.mark.parametrize("name, transform, formula, match", BAD_FITS, ids=[b[0] for b in BAD_FITS])
def test_bad_input_to_the_fitters(fitter, name, transform, formula, match):
    df = base()
    data = transform(df) if transform else df
    before = data.copy() if isinstance(data, pd.DataFrame) else None
    y = "y" if fitter == "lmer" else "yb"
    f = (formula or "{y} ~ x + (1 | g)").format(y=y)
    fit_fn = mm.lmer if fitter == "lmer" else (lambda fo, d: mm.glmer(fo, d, nagq=1))
    if fitter == "lmer" and name == "one row per group":
        match = "number of levels must be smaller"
    if fitter == "glmer" and name == "one row per group":
        match = None  # an observation-level effect: lme4's glmer allows nlev == n (allow.n = TRUE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_fn(f, data)
    except ValueError as exc:
        if match is not None:
            assert __import__("re").search(match, str(exc)), str(exc)
    except Exception as exc:  # anything else is a leak from deep inside
        pytest.fail(f"{name}: {type(exc).__name__}: {exc}")
    else:
        assert match is None, f"{name}: no error"
    if before is not None:
        pd.testing.assert_frame_equal(data, before)


@pytest.fixture(scope="module")
def fits():
    df = base()
    return df, quiet(mm.lmer, "y ~ x + f + (1 | g)", df), quiet(mm.glmer, "yb ~ x + f + (1 | g)", df, nagq=1)


BAD_NEWDATA = [
    ("missing covariate column", lambda d: d.drop(columns="x"), "newdata is missing column\\(s\\) 'x'"),
    ("missing group column", lambda d: d.drop(columns="g"), "newdata is missing column\\(s\\) 'g'"),
    ("new factor level", lambda d: d.assign(f="c"), "factor 'f' has new level\\(s\\) 'c'"),
    ("new group", lambda d: d.assign(g=99), "grouping factor 'g' has new level\\(s\\) '99'"),
    ("NaN group", lambda d: d.assign(g=np.nan), "grouping factor 'g' has missing values"),
    ("text covariate", _str_x, "newdata"),
    ("not a frame", lambda d: d.to_dict(), "newdata must be a pandas DataFrame"),
]


@pytest.mark.parametrize("which", ["lmm", "glmm"])
@pytest.mark.parametrize("name, transform, match", BAD_NEWDATA, ids=[b[0] for b in BAD_NEWDATA])
def test_bad_newdata_to_predict(fits, which, name, transform, match):
    df, lmm_fit, glmm_fit = fits
    fit = lmm_fit if which == "lmm" else glmm_fit
    nd = transform(df.head(5).copy())
    before = nd.copy() if isinstance(nd, pd.DataFrame) else None
    with pytest.raises(ValueError, match=match):
        fit.predict(nd)
    if before is not None:
        pd.testing.assert_frame_equal(nd, before)


def test_predict_nan_and_inf_covariates_give_nan_or_inf_not_errors(fits):
    df, lmm_fit, glmm_fit = fits
    nd = df.head(3).copy()
    nd.loc[nd.index[0], "x"] = np.nan
    for fit in (lmm_fit, glmm_fit):
        p = fit.predict(nd)
        assert np.isnan(p.iloc[0]) and np.all(np.isfinite(p.iloc[1:]))


@pytest.mark.parametrize("which", ["lmm", "glmm"])
@pytest.mark.parametrize("kwargs, match", [
    ({"method": "bayes"}, "method"),
    ({"level": 1.5}, "level"),
    ({"level": "95%"}, "level"),
])
def test_bad_arguments_to_confint(fits, which, kwargs, match):
    _, lmm_fit, glmm_fit = fits
    with pytest.raises(ValueError, match=match):
        (lmm_fit if which == "lmm" else glmm_fit).confint(**kwargs)


@pytest.mark.parametrize("which", ["lmm", "glmm"])
@pytest.mark.parametrize("kwargs, match", [({"nsim": 0}, "nsim"), ({"nsim": 2.5}, "nsim"), ({"nsim": "ten"}, "nsim")])
def test_bad_arguments_to_simulate(fits, which, kwargs, match):
    _, lmm_fit, glmm_fit = fits
    with pytest.raises(ValueError, match=match):
        simulate(lmm_fit if which == "lmm" else glmm_fit, **kwargs)


@pytest.mark.parametrize("which", ["lmm", "glmm"])
def test_bad_newresponse_to_refit(fits, which):
    df, lmm_fit, glmm_fit = fits
    fit = lmm_fit if which == "lmm" else glmm_fit
    for bad, match in [(np.ones(3), "newresponse"), (np.full(len(df), np.nan), "newresponse"), ("y", "newresponse")]:
        with pytest.raises(ValueError, match=match):
            quiet(mm.refit, fit, bad)


def test_gaussian_family_in_glmer_points_to_lmer():
    with pytest.raises(ValueError, match=r"fit a gaussian \(normal\) model with lmer\(\)"):
        mm.glmer("y ~ x + (1 | g)", base(), family="gaussian")
