"""Offsets (glmer and lmer, formula and argument, fitting and prediction, Laplace and AGQ) and
lmer's precision weights, against lme4 1.1-31.

References: tests/fixtures/features/pois_offset.json and lmer_weights.json (copies of the shared
lme4 references, made by make_lme4_reference_wave2.R:
    glmer(y ~ x + offset(log(t)) + (1 | site), pois_offset, poisson)
    lmer(y ~ x + (1 | g), lmer_weights, weights = w)),
and features_reference.json (tests/fixtures/features/make_features_reference.R:
    lmer(Reaction ~ Days + offset(2 * Days) + (1 | Subject), sleepstudy), predictions on new data,
    the Poisson offset model with nAGQ = 10 at a tight PIRLS tolerance).
"""

import json
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, optimize, special, stats

import mixedmodels as mm
import mixedmodels.glmm as G
from mixedmodels.laplace import LaplaceObjective

FIX = Path(__file__).parent / "fixtures"
FEAT = FIX / "features"
REF = json.loads((FEAT / "features_reference.json").read_text())
POIS = json.loads((FEAT / "pois_offset.json").read_text())
WREF = json.loads((FEAT / "lmer_weights.json").read_text())


@lru_cache(maxsize=None)
def pois_data():
    return pd.read_csv(FEAT / "pois_offset.csv", dtype={"site": str})


@lru_cache(maxsize=None)
def pois_fit(nagq=1, how="formula"):
    d = pois_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mm.QuadratureWarning)
        if how == "formula":
            return mm.glmer("y ~ x + offset(log(t)) + (1 | site)", d, family="poisson", nagq=nagq)
        return mm.glmer("y ~ x + (1 | site)", d, family="poisson", nagq=nagq, offset=how)


def _close(a, b, rtol):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=rtol)


def test_poisson_offset_laplace_matches_lme4():
    f = pois_fit()
    _close(f.fixef, list(POIS["fixef"].values()), 1e-4)
    _close(f.se, list(POIS["se"].values()), 1e-3)
    _close(f.varcorr()["sdcor"], [POIS["theta"]], 1e-3)
    assert abs(f.loglik - POIS["loglik"]) < 1e-4
    _close(f.fitted().to_numpy()[:20], POIS["fitted_head"], 1e-4)
    assert "offset" not in f.fixef.index


def test_offset_argument_equals_formula_offset():
    d = pois_data()
    f, g = pois_fit(), pois_fit(how=tuple(np.log(d["t"])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mm.QuadratureWarning)
        h = mm.glmer("y ~ x + (1 | site)", d.assign(lt=np.log(d["t"])), family="poisson", nagq=1, offset="lt")
    for other in (g, h):
        _close(other.fixef, f.fixef, 1e-7)
        assert abs(other.loglik - f.loglik) < 1e-8


def test_offset_prediction_on_new_data_matches_lme4():
    f = pois_fit()
    nd = pd.DataFrame({"x": [0.0, 1.0], "t": [1.0, 10.0], "site": ["1", "2"]})
    _close(f.predict(nd, type="response"), REF["pois_offset_predict"], 1e-4)
    d = pois_data()
    g = pois_fit(how=tuple(np.log(d["t"])))
    with pytest.raises(ValueError, match="predict\\(newdata, offset=...\\)"):
        g.predict(nd)
    _close(g.predict(nd, type="response", offset=np.log(nd["t"])), REF["pois_offset_predict"], 1e-4)
    # without random effects the offset is still there
    pop = f.predict(nd, type="link", include_random=False).to_numpy()
    _close(pop, f.fixef.iloc[0] + f.fixef.iloc[1] * nd["x"] + np.log(nd["t"]), 1e-12)


def _exact_loglik(beta, sd, d):
    """Brute-force marginal log-likelihood: one adaptive 1-D integral per site (scipy quad)."""
    eta0 = beta[0] + beta[1] * d["x"].to_numpy() + np.log(d["t"].to_numpy())
    y = d["y"].to_numpy()
    total = 0.0
    for s in np.unique(d["site"]):
        k = (d["site"] == s).to_numpy()

        def integrand(b, k=k):
            eta = eta0[k] + b
            return np.exp(np.sum(y[k] * eta - np.exp(eta) - special.gammaln(y[k] + 1)) + stats.norm.logpdf(b, 0, sd))

        total += np.log(integrate.quad(integrand, -12 * sd, 12 * sd, epsabs=0, epsrel=1e-12, limit=200)[0])
    return total


def test_poisson_offset_agq_estimates_match_lme4_and_loglik_is_exact():
    f = pois_fit(nagq=10)
    ref = REF["pois_offset_nagq10"]
    _close(f.fixef, list(ref["fixef"].values()), 1e-4)
    _close(f.theta, [ref["theta"]], 1e-3)
    exact = _exact_loglik(f.fixef.to_numpy(), f.theta[0], pois_data())
    assert abs(f.loglik - exact) < 1e-6


def test_laplace_objective_uses_the_offset():
    """The general Laplace path and the scalar kernel (nagq=1) agree with an offset."""
    d = pois_data()
    frame = G.glmer_frame("y ~ x + offset(log(t)) + (1 | site)", d, "poisson")
    x = np.array([-0.8, 0.4, 0.6])
    ll_l, g_l = LaplaceObjective(frame).evaluate(x)
    ll_s, g_s = G.make_objective(frame, 1).evaluate(x)
    assert abs(ll_l - ll_s) < 1e-8
    np.testing.assert_allclose(g_l, g_s, rtol=1e-6, atol=1e-8)
    frame0 = G.glmer_frame("y ~ x + (1 | site)", d, "poisson")
    assert abs(LaplaceObjective(frame0).evaluate(x)[0] - ll_l) > 1.0


def test_offset_errors_are_clear():
    d = pois_data()
    with pytest.raises(ValueError, match="offset\\(log\\(t0\\)\\)"):
        mm.glmer("y ~ x + offset(log(t0)) + (1 | site)", d, family="poisson", nagq=1)
    with pytest.raises(ValueError, match="infinite.*log of 0"):
        mm.glmer("y ~ x + offset(log(t)) + (1 | site)", d.assign(t=d["t"] - d["t"].min()),
                 family="poisson", nagq=1)
    with pytest.raises(ValueError, match="`offset` has 3 values"):
        mm.glmer("y ~ x + (1 | site)", d, family="poisson", nagq=1, offset=[1, 2, 3])
    with pytest.raises(ValueError, match="offset cannot be subtracted"):
        mm.glmer("y ~ x - offset(log(t)) + (1 | site)", d, family="poisson", nagq=1)
    d2 = d.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mm.QuadratureWarning)
        mm.glmer("y ~ x + offset(log(t)) + (1 | site)", d2, family="poisson", nagq=1)
    pd.testing.assert_frame_equal(d2, d)


# ---- lmer ----------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def sleep():
    return pd.read_csv(FIX / "sleepstudy.csv", dtype={"Subject": str})


def test_lmer_offset_matches_lme4():
    ref = REF["lmer_offset"]
    ss = sleep()
    for f in (mm.lmer("Reaction ~ Days + offset(2 * Days) + (1 | Subject)", ss),
              mm.lmer("Reaction ~ Days + (1 | Subject)", ss, offset=2 * ss["Days"].to_numpy())):
        _close(f.fixef, list(ref["fixef"].values()), 1e-6)
        _close([f.sigma], [ref["sigma"]], 1e-5)
        assert abs(f.reml_criterion - ref["reml"]) < 1e-6
        _close(f.fitted().to_numpy()[:5], ref["fitted_head"], 1e-6)
    nd = pd.DataFrame({"Days": [0, 5], "Subject": ["308", "999"]})
    f = mm.lmer("Reaction ~ Days + offset(2 * Days) + (1 | Subject)", ss)
    _close(f.predict(nd, allow_new_levels=True), ref["predict_new"], 1e-6)  # R: allow.new.levels = TRUE
    _close(f.residuals() + f.fitted(), ss["Reaction"], 1e-12)


@lru_cache(maxsize=None)
def wfit():
    d = pd.read_csv(FEAT / "lmer_weights.csv", dtype={"g": str})
    return d, mm.lmer("y ~ x + (1 | g)", d, weights="w")


def test_lmer_weights_match_lme4():
    d, f = wfit()
    _close(f.fixef, list(WREF["fixef"].values()), 1e-6)
    _close(f.se, list(WREF["se"].values()), 1e-5)
    _close(f.theta, [WREF["theta"]], 1e-5)
    _close([f.sigma], [WREF["sigma"]], 1e-6)
    _close(f.varcorr()["sdcor"], [v["sdcor"] for v in WREF["varcorr"]], 1e-5)
    assert abs(f.loglik - WREF["loglik"]) < 1e-6
    assert abs(f.reml_criterion - WREF["reml_criterion"]) < 1e-6
    _close(f.fitted().to_numpy()[:20], WREF["fitted_head"], 1e-6)
    _close(f.ranef()["condsd"], WREF["ranef"]["condsd"], 1e-4)
    g = mm.lmer("y ~ x + (1 | g)", d, weights=d["w"].to_numpy())
    _close(g.fixef, f.fixef, 1e-12)
    with pytest.raises(ValueError, match="`weights` must be positive"):
        mm.lmer("y ~ x + (1 | g)", d.assign(w=d["w"] - d["w"].max()), weights="w")
    with pytest.raises(ValueError, match="not a column"):
        mm.lmer("y ~ x + (1 | g)", d, weights="ww")


def _dense_ml_profile(d):
    """Brute-force ML deviance of y ~ N(X beta, s^2 Z Z' + sigma^2 W^-1), dense n x n, with any
    beta component fixed; the rest of beta by GLS, s and sigma by Nelder-Mead."""
    y = d["y"].to_numpy()
    X = np.column_stack([np.ones(len(d)), d["x"].to_numpy()])
    Z = pd.get_dummies(d["g"]).to_numpy(dtype=float)
    winv = 1.0 / d["w"].to_numpy()
    n = len(y)

    def dev(logs, logsig, fixed=None):
        V = np.exp(2 * logs) * Z @ Z.T + np.exp(2 * logsig) * np.diag(winv)
        Vi = np.linalg.inv(V)
        if fixed is None:
            beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
        else:
            j, v = fixed
            o = 1 - j
            r0 = y - X[:, j] * v
            bo = (X[:, o] @ Vi @ r0) / (X[:, o] @ Vi @ X[:, o])
            beta = np.empty(2)
            beta[j], beta[o] = v, bo
        r = y - X @ beta
        return n * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + r @ Vi @ r

    def prof(kind, v):
        if kind == "sd":
            return optimize.minimize_scalar(lambda ls: dev(np.log(v), ls), bounds=(-5, 3), method="bounded",
                                            options={"xatol": 1e-10}).fun
        if kind == "sigma":
            return optimize.minimize_scalar(lambda ls: dev(ls, np.log(v)), bounds=(-8, 3), method="bounded",
                                            options={"xatol": 1e-10}).fun
        return optimize.minimize(lambda p: dev(p[0], p[1], (kind, v)), [np.log(0.5), 0.0], method="Nelder-Mead",
                                 options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000}).fun

    best = optimize.minimize(lambda p: dev(*p), [np.log(0.5), 0.0], method="Nelder-Mead",
                             options={"xatol": 1e-10, "fatol": 1e-12})
    return prof, best.fun, np.exp(best.x)


def test_lmer_weights_profile_intervals_contain_the_estimate_and_match_a_dense_profile():
    d, f = wfit()
    ci = f.confint(method="profile")
    est = {"sd_(Intercept)|g": f.varcorr()["sdcor"].iloc[0], "sigma": f.sigma,
           "(Intercept)": f.fixef.iloc[0], "x": f.fixef.iloc[1]}
    for nm, v in est.items():      # lme4 1.1-31 gives [1.119, 1.131] around 1.118 for the intercept
        assert ci.loc[nm].iloc[0] < v < ci.loc[nm].iloc[1], nm
    prof, dmin, _ = _dense_ml_profile(d)
    crit = stats.chi2.ppf(0.95, 1)
    for nm, kind in (("sd_(Intercept)|g", "sd"), ("sigma", "sigma"), ("(Intercept)", 0), ("x", 1)):
        for end in ci.loc[nm]:
            # the dense profile deviance at our interval ends is the chi-square cutoff
            assert abs(prof(kind, end) - dmin - crit) < 2e-3, (nm, end)


@pytest.mark.parametrize("how", ["column", "array"])
def test_weights_and_offset_with_repeated_index_labels(how):
    """A frame whose index labels repeat (e.g. after pd.concat): per-row arguments are read
    by position, so the fit equals the one on the same rows with a fresh index, with rows
    dropped for missing values too."""
    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(12), 6)
    df = pd.DataFrame({"y": rng.normal(size=72) + rng.normal(size=12)[g], "g": g.astype(str),
                       "w": rng.uniform(1, 2, 72), "o": rng.normal(0, 0.3, 72)},
                      index=np.repeat(np.arange(36), 2))
    df.iloc[5, 0] = np.nan  # label 2 repeats: the dropped row is found by position
    fresh = df.reset_index(drop=True)
    kw = ({"weights": "w", "offset": "o"} if how == "column"
          else {"weights": df["w"].to_numpy(), "offset": df["o"].to_numpy()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = mm.lmer("y ~ 1 + (1 | g)", df, **kw)
        b = mm.lmer("y ~ 1 + (1 | g)", fresh, **kw)
        yb = (df["y"] > 0).astype(float).where(df["y"].notna())
        c = mm.glmer("y ~ 1 + (1 | g)", df.assign(y=yb), family="binomial", **kw)
        d = mm.glmer("y ~ 1 + (1 | g)", fresh.assign(y=yb.to_numpy()), family="binomial", **kw)
    assert a.nobs == b.nobs == 71
    assert a.loglik == pytest.approx(b.loglik, abs=1e-10)
    np.testing.assert_allclose(a.fixef, b.fixef, rtol=1e-10)
    assert c.loglik == pytest.approx(d.loglik, abs=1e-8)
