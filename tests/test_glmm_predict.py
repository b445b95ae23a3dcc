"""GlmerResult.predict: conditional, new levels, and the population-averaged mean."""

import warnings
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats
from scipy.special import expit

import mixedmodels as mm


@lru_cache(maxsize=None)
def fit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mm.QuadratureWarning)
        return mm.glmer("clicks/expos ~ display + (1 | id)", mm.load_ctr(), weights="expos", nagq=10)


def test_fitted_link_and_response():
    f = fit()
    eta = f.predict()
    np.testing.assert_allclose(f.predict(type="response"), expit(eta))
    d = mm.load_ctr()
    b = f.ranef().set_index("level")["value"]
    manual = f.fixef["(Intercept)"] + f.fixef["display"] * d["display"] + b.loc[d["id"].astype(str)].to_numpy()
    np.testing.assert_allclose(eta, manual, atol=1e-12)


def test_newdata_known_and_new_levels():
    f = fit()
    d = mm.load_ctr()
    first = int(d["id"].iloc[0])
    nd = pd.DataFrame({"display": [0, 1, 0], "id": [first, first, -1]})
    with pytest.raises(ValueError, match=r"grouping factor 'id' has new level\(s\) '-1'"):
        f.predict(nd)  # lme4's default allow.new.levels = FALSE
    eta = f.predict(nd, allow_new_levels=True)
    b0 = f.ranef().set_index("level")["value"].loc[str(first)]
    assert eta[0] == pytest.approx(f.fixef.iloc[0] + b0)
    assert eta[1] == pytest.approx(f.fixef.sum() + b0)
    assert eta[2] == pytest.approx(f.fixef.iloc[0])  # a new user: random effect 0
    np.testing.assert_allclose(f.predict(nd, include_random=False), f.fixef.iloc[0] + f.fixef.iloc[1] * nd["display"])


def test_population_average_integrates_over_the_user_effect():
    f = fit()
    nd = pd.DataFrame({"display": [0, 1], "id": ["new", "new"]})
    pa = f.predict(nd, type="response", population_average=True)
    sd = f.theta[0]
    for k, x in enumerate([0, 1]):
        eta = f.fixef.iloc[0] + f.fixef.iloc[1] * x
        ref = integrate.quad(lambda u: expit(eta + sd * u) * stats.norm.pdf(u), -12, 12,
                             epsabs=1e-13)[0]
        assert pa[k] == pytest.approx(ref, rel=1e-7)
    # The median user's rate expit(x'beta) is far below the mean rate of a random user.
    at_zero = f.predict(nd, type="response", include_random=False)
    assert np.all(pa > 10 * at_zero)


def test_population_average_matches_simulation():
    # Mean click rate of new users drawn from the fitted model (seeded Monte Carlo).
    f = fit()
    rng = np.random.default_rng(11)
    b = rng.normal(0, f.theta[0], 400_000)
    mc = expit(f.fixef.iloc[0] + b).mean()
    pa = f.predict(pd.DataFrame({"display": [0], "id": ["x"]}), type="response",
                   population_average=True)[0]
    assert pa == pytest.approx(mc, abs=3e-3)


def test_bad_predict_arguments():
    f = fit()
    with pytest.raises(ValueError, match="`type`"):
        f.predict(type="probability")
    with pytest.raises(ValueError, match="population_average"):
        f.predict(population_average=True)
